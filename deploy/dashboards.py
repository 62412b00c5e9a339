"""Grafana for the monitoring profile: the Prometheus data source and a dashboard, provisioned from files.

The panels answer an operator's first questions — is it serving, how full is the KV cache, is the queue
growing, how long to the first token, how fast, what errors — per server (`service` label, as the alert rules),
and through the router per model. Every query's metric names are checked against a live vLLM and the router
(tests/test_stack_scripted.py), and every query must return data from a live Prometheus scraping them: a
renamed metric (`vllm:gpu_cache_usage_perc` is gone) would leave a panel empty, so the test fails instead.
"""

from __future__ import annotations

import json
import re

import yaml

DATASOURCE_UID = "vllm-prometheus"
DASHBOARD_UID = "vllm-compose"
DASHBOARD_DIR = "/var/lib/grafana/dashboards"
PROVISIONING = "/etc/grafana/provisioning"
RATE = "$__rate_interval"  # Grafana's window for rate(); the live test puts 1m in its place
SERVICE = 'service=~"$service"'  # the dashboard's server picker

# (title, unit, [(legend, PromQL)], router panel?)
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...], bool], ...] = (
    ("Servers up", "none", (("{{service}}", f"up{{job=\"vllm\",{SERVICE}}}"),), False),
    ("Requests running / waiting", "none", (
        ("running {{service}}", f"sum by (service) (vllm:num_requests_running{{{SERVICE}}})"),
        ("waiting {{service}}", f"sum by (service) (vllm:num_requests_waiting{{{SERVICE}}})")), False),
    ("KV cache used", "percentunit", (("{{service}}", f"max by (service) (vllm:kv_cache_usage_perc{{{SERVICE}}})"),), False),
    ("Time to first token (p50, p90)", "s", (
        ("p50 {{service}}", f"histogram_quantile(0.5, sum by (service, le) (rate(vllm:time_to_first_token_seconds_bucket{{{SERVICE}}}[{RATE}])))"),
        ("p90 {{service}}", f"histogram_quantile(0.9, sum by (service, le) (rate(vllm:time_to_first_token_seconds_bucket{{{SERVICE}}}[{RATE}])))")),
     False),
    ("Time per output token (p50)", "s", (
        ("{{service}}", f"histogram_quantile(0.5, sum by (service, le) (rate(vllm:inter_token_latency_seconds_bucket{{{SERVICE}}}[{RATE}])))"),),
     False),
    ("Queue time and inference time (p90)", "s", (
        ("queue {{service}}", f"histogram_quantile(0.9, sum by (service, le) (rate(vllm:request_queue_time_seconds_bucket{{{SERVICE}}}[{RATE}])))"),
        ("inference {{service}}", f"histogram_quantile(0.9, sum by (service, le) (rate(vllm:request_inference_time_seconds_bucket{{{SERVICE}}}[{RATE}])))")),
     False),
    ("Tokens per second", "short", (
        ("generated {{service}}", f"sum by (service) (rate(vllm:generation_tokens_total{{{SERVICE}}}[{RATE}]))"),
        ("prompt {{service}}", f"sum by (service) (rate(vllm:prompt_tokens_total{{{SERVICE}}}[{RATE}]))")), False),
    ("HTTP answers by status", "reqps", (
        ("{{status}} {{service}}", f"sum by (service, status) (rate(http_requests_total{{job=\"vllm\",{SERVICE}}}[{RATE}]))"),),
     False),
    ("Router: answers per model and status", "reqps", (
        ("{{proxy}} {{code}}", f"sum by (proxy, code) (rate(haproxy_backend_http_responses_total{{job=\"router\"}}[{RATE}]))"),),
     True),
    ("Router: servers up per model", "none", (
        ("{{proxy}}", "haproxy_backend_active_servers{job=\"router\"}"),), True),
)


def panels(routed: bool) -> list[tuple[str, str, tuple[tuple[str, str], ...], bool]]:
    return [p for p in PANELS if routed or not p[3]]


def metric_names(exporter: str = "vllm", routed: bool = True) -> set[str]:
    """Every metric name the panels query: vLLM's, or ("router") HAProxy's."""
    pattern = r"\b(haproxy_[a-z_]+)\b" if exporter == "router" else r"\b(vllm:[a-z_]+|http_requests_total)\b"
    return {n for _, _, targets, _ in panels(routed) for _, expr in targets for n in re.findall(pattern, expr)}


def dashboard(routed: bool) -> str:
    out = []
    for i, (title, unit, targets, _) in enumerate(panels(routed)):
        out.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
            "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": DATASOURCE_UID}}
                        for j, (legend, expr) in enumerate(targets)],
        })
    service = {"name": "service", "label": "server", "type": "query", "includeAll": True, "multi": True,
               "allValue": ".*", "current": {"text": "All", "value": "$__all"},
               "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
               "query": {"query": "label_values(vllm:num_requests_running, service)", "refId": "service"},
               "refresh": 2}
    return json.dumps({"uid": DASHBOARD_UID, "title": "vLLM (vllm-compose)", "schemaVersion": 39, "version": 1,
                       "editable": False, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
                       "templating": {"list": [service]}, "panels": out}, indent=1) + "\n"


def datasource_yaml(url: str) -> str:
    return yaml.safe_dump({"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy", "url": url,
        "isDefault": True, "editable": False}]}, sort_keys=False)


def provider_yaml() -> str:
    return yaml.safe_dump({"apiVersion": 1, "providers": [{
        "name": "vllm-compose", "type": "file", "disableDeletion": True, "allowUiUpdates": False,
        "options": {"path": DASHBOARD_DIR}}]}, sort_keys=False)
