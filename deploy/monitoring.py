"""The monitoring profile: Prometheus's scrape configuration and alert rules for a deployment.

Every vLLM server's `/metrics` (open in vLLM: no key needed) is scraped by its compose service name, with
the service as a label. The rules use metric names exported by the pinned vLLM; tests/test_stack_scripted.py
checks each name against a running server's /metrics (names drift between releases:
`vllm:gpu_cache_usage_perc` became `vllm:kv_cache_usage_perc`) and `promtool check rules` checks the syntax.
"""

from __future__ import annotations

import re

import yaml

from . import swap_service
from .facts import PROMETHEUS_DIR, ROUTER, ROUTER_PORT, SERVER_PORT, SWAP, SWAP_PORT
from .resolve import Deployment

SCRAPE_INTERVAL = "5s"
ROUTER_CA = f"{PROMETHEUS_DIR}/router-ca.crt"

# (name, expression, for, summary). Thresholds: a KV cache above 90 % for 5 min means preemptions soon;
# a waiting queue that only grows for 10 min means the server is under-provisioned.
ALERTS: tuple[tuple[str, str, str, str], ...] = (
    ("VllmServerDown", 'up{job="vllm"} == 0', "2m",
     "{{ $labels.service }} does not answer /metrics (down, restarting, or its profile was not started)"),
    ("VllmRouterDown", 'up{job="router"} == 0', "2m",
     "the router does not answer /metrics: no model is reachable through it"),
    # The router's own exporter (HAProxy): one backend (`proxy` label) per served name.
    ("VllmRouterNoServer", 'haproxy_backend_active_servers{job="router"} == 0', "2m",
     "model {{ $labels.proxy }}: no server behind the router is up; its requests get 503"),
    ("VllmRouterErrorRate",
     'sum by (proxy) (rate(haproxy_backend_http_responses_total{job="router",code="5xx"}[5m]))'
     ' / sum by (proxy) (rate(haproxy_backend_http_responses_total{job="router"}[5m])) > 0.05', "5m",
     "model {{ $labels.proxy }}: more than 5 % of answers through the router are 5xx"),
    ("VllmKvCacheAlmostFull", "vllm:kv_cache_usage_perc > 0.9", "5m",
     "{{ $labels.service }}: KV cache {{ $value | humanizePercentage }} full"),
    ("VllmQueueGrowing", "vllm:num_requests_waiting > 0 and delta(vllm:num_requests_waiting[10m]) > 0", "10m",
     "{{ $labels.service }}: {{ $value }} more requests waiting than 10 minutes ago"),
    ("VllmErrorRate",
     'sum by (service) (rate(http_requests_total{job="vllm",status="5xx"}[5m]))'
     ' / sum by (service) (rate(http_requests_total{job="vllm"}[5m])) > 0.05', "5m",
     "{{ $labels.service }}: more than 5 % of requests answered 5xx"),
    ("VllmSlowFirstToken",
     "histogram_quantile(0.9, sum by (service, le) (rate(vllm:time_to_first_token_seconds_bucket[5m]))) > 10",
     "10m", "{{ $labels.service }}: 90th percentile time to first token above 10 s"),
)


def metric_names(exporter: str = "vllm") -> set[str]:
    """Every metric name the rules use (without the label selectors): vLLM's, or ("router") HAProxy's."""
    pattern = r"\b(haproxy_[a-z_]+)\b" if exporter == "router" else r"\b(vllm:[a-z_]+|http_requests_total)\b"
    return {name for _, expr, _, _ in ALERTS for name in re.findall(pattern, expr)}


def prometheus_yaml(d: Deployment) -> str:
    doc = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [f"{PROMETHEUS_DIR}/alerts.yml"],
        "scrape_configs": [{
            "job_name": "vllm",
            "static_configs": [{"targets": [f"{s.name}:{SERVER_PORT}"], "labels": {"service": s.name}}
                               for s in d.services],
        }],
    }
    if d.router:
        # HAProxy's exporter on the router's port: per model (backend) requests by status class, times, in flight.
        job = {"job_name": "router", "metrics_path": "/metrics", "static_configs": [{"targets": [f"{ROUTER}:{ROUTER_PORT}"]}]}
        if d.router.tls:
            job["scheme"] = "https"
            # The self-signed certificate names the service; the user's names the public host, so inside the
            # compose network only encryption is asked of it.
            job["tls_config"] = ({"insecure_skip_verify": True} if d.router.tls.cert
                                 else {"ca_file": ROUTER_CA, "server_name": ROUTER})
        doc["scrape_configs"].append(job)
    if swap_service.groups(d):  # the turn-taking controller: swaps, wake seconds, requests held (deploy/runtime/swap.py)
        doc["scrape_configs"].append({"job_name": "swap", "static_configs": [
            {"targets": [f"{SWAP}:{SWAP_PORT}"]}]})
    return yaml.safe_dump(doc, sort_keys=False)


def rule_groups() -> list[dict]:
    """The alert rules as Prometheus rule groups (compose's alerts.yml; Kubernetes' PrometheusRule)."""
    rules = [{"alert": name, "expr": expr, "for": duration, "labels": {"severity": "warning"},
              "annotations": {"summary": summary}} for name, expr, duration, summary in ALERTS]
    return [{"name": "vllm", "rules": rules}]


def alerts_yaml() -> str:
    return yaml.safe_dump({"groups": rule_groups()}, sort_keys=False, width=1000)


def kubernetes_prometheus_yaml(servers: list[str], routed: bool, tls: bool) -> str:
    """prometheus.yml for a cluster without the Prometheus Operator: the pods found through the Kubernetes API
    (role pod, this namespace), kept by their app.kubernetes.io/name label — SERVERS as job vllm (with the
    `service` label the rules use), the router as job router — and the same rules."""
    def job(name: str, names: list[str], scheme: str = "http") -> dict:
        out = {
            "job_name": name, "scheme": scheme,
            "kubernetes_sd_configs": [{"role": "pod"}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "regex": "|".join(names),
                 "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": "service"},
            ],
        }
        if scheme == "https":
            out["tls_config"] = {"insecure_skip_verify": True}  # the router's certificate names its public host
        return out
    jobs = [job("vllm", servers)] + ([job("router", [ROUTER], "https" if tls else "http")] if routed else [])
    doc = {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
           "rule_files": [f"{PROMETHEUS_DIR}/alerts.yml"], "scrape_configs": jobs}
    return yaml.safe_dump(doc, sort_keys=False)
