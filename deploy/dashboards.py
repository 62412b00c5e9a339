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

from .facts import GRAFANA_DATA, PROMETHEUS_DIR

DATASOURCE_UID = "vllm-prometheus"
DASHBOARD_UID = "vllm-compose"
DASHBOARD_DIR = f"{GRAFANA_DATA}/dashboards"
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


# With servers taking turns on GPUs: the controller's own metrics (deploy/runtime/swap.py), per service.
TURN_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...], bool], ...] = (
    ("Turns: awake, swaps per minute", "none", (
        ("awake {{service}}", "vllm_compose_awake"),
        ("swaps/min {{service}}", f"sum by (service) (rate(vllm_compose_swaps_total[{RATE}])) * 60")), True),
    ("Turns: wake seconds and time held (mean)", "s", (
        ("wake {{service}}", f"sum by (service) (rate(vllm_compose_wake_seconds_sum[{RATE}])) / "
                             f"sum by (service) (rate(vllm_compose_wake_seconds_count[{RATE}]))"),
        ("held {{service}}", f"sum by (service) (rate(vllm_compose_held_seconds_sum[{RATE}])) / "
                             f"sum by (service) (rate(vllm_compose_held_seconds_count[{RATE}]))"),
        ("holding now {{service}}", "vllm_compose_requests_waiting")), True),
)


def panels(routed: bool, turns: bool = False) -> list[tuple[str, str, tuple[tuple[str, str], ...], bool]]:
    return [p for p in PANELS if routed or not p[3]] + (list(TURN_PANELS) if turns else [])


def metric_names(exporter: str = "vllm", routed: bool = True) -> set[str]:
    """Every metric name the panels query: vLLM's, or ("router") HAProxy's."""
    pattern = r"\b(haproxy_[a-z_]+)\b" if exporter == "router" else r"\b(vllm:[a-z_]+|http_requests_total)\b"
    return {n for _, _, targets, _ in panels(routed) for _, expr in targets for n in re.findall(pattern, expr)}


def dashboard(routed: bool, turns: bool = False) -> str:
    out = []
    for i, (title, unit, targets, _) in enumerate(panels(routed, turns)):
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


# ---------------------------------------------------------------- Prometheus console page

CONSOLE = "vllm.html"  # served by Prometheus at /consoles/vllm.html
CONSOLE_DIR = f"{PROMETHEUS_DIR}/consoles"
CONSOLE_WINDOW = "1m"  # the page's rate() window, in place of Grafana's $__rate_interval
# The page's columns: (heading, dashboard panel title, legend of that panel's query, printf format). The
# queries are the dashboard's own, without the server picker: one fact, two pictures.
CONSOLE_COLUMNS = (
    ("running", "Requests running / waiting", "running {{service}}", "%.0f"),
    ("waiting", "Requests running / waiting", "waiting {{service}}", "%.0f"),
    ("KV cache used", "KV cache used", "{{service}}", "%.3f"),
    ("generated tok/s", "Tokens per second", "generated {{service}}", "%.2f"),
    ("prompt tok/s", "Tokens per second", "prompt {{service}}", "%.2f"),
    ("TTFT p50 s", "Time to first token (p50, p90)", "p50 {{service}}", "%.3f"),
)
# Requests finished since start: a counter, so the page and the API agree between two reads.
FINISHED = "sum by (service) (vllm:request_success_total)"


def console_query(title: str, legend: str) -> str:
    expr = next(e for t, _, targets, _ in PANELS if t == title for lg, e in targets if lg == legend)
    return expr.replace(f"{{{SERVICE}}}", "").replace(f",{SERVICE}", "").replace(RATE, CONSOLE_WINDOW)


# With servers taking turns: a second table, one row per member, from the controller's metrics.
TURN_COLUMNS = (
    ("awake", "max by (service) (vllm_compose_awake)", "%.0f"),
    ("swaps", "sum by (service) (vllm_compose_swaps_total)", "%.0f"),
    ("wake s (mean)", "sum by (service) (vllm_compose_wake_seconds_sum) / sum by (service) (vllm_compose_wake_seconds_count)", "%.2f"),
    ("held", "sum by (service) (vllm_compose_requests_held_total)", "%.0f"),
    ("held s (mean)", "sum by (service) (vllm_compose_held_seconds_sum) / sum by (service) (vllm_compose_held_seconds_count)", "%.2f"),
    ("holding now", "sum by (service) (vllm_compose_requests_waiting)", "%.0f"),
)


def console_html(turns: bool = False) -> str:
    """A Prometheus console template (Go html/template): one row per server, each cell a live query, marked with
    data-* attributes so a test can read it back. TURNS: a second table for servers taking turns on GPUs."""
    def cell(heading: str, expr: str, fmt: str) -> str:
        # the query by service, kept to this row's server: `and on (service)` a one-series vector labelled so
        return (f'<td data-column="{heading}">{{{{ with printf "{_escape(expr)} and on (service) '
                f'label_replace(vector(1), \\"service\\", \\"%s\\", \\"\\", \\"\\")" .Labels.service | query }}}}'
                f'{{{{ . | first | value | printf "{fmt}" }}}}{{{{ else }}}}–{{{{ end }}}}</td>')

    columns = [(h, console_query(t, lg), fmt) for h, t, lg, fmt in CONSOLE_COLUMNS] + [("finished", FINISHED, "%.0f")]
    head = "".join(f"<th>{h}</th>" for h, _, _ in columns)
    cells = "".join(cell(h, e, f) for h, e, f in columns)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>vLLM servers</title>\n"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:.3em .8em;text-align:right}th{background:#eee}"
            "td:first-child{text-align:left}</style></head><body>\n"
            "<h1>vLLM servers</h1>\n<p>Live from this Prometheus (refresh to update); rates over "
            f"{CONSOLE_WINDOW}, the same queries as the Grafana dashboard.</p>\n"
            f"<table id=\"servers\">\n<tr><th>server</th>{head}</tr>\n"
            '{{ range query "sum by (service) (up{job=\\"vllm\\"})" | sortByLabel "service" }}\n'
            f'<tr data-service="{{{{ .Labels.service }}}}"><td>{{{{ .Labels.service }}}}</td>{cells}</tr>\n'
            "{{ end }}\n</table>\n" + (_turns_table(cell) if turns else "") + "</body></html>\n")


def _turns_table(cell) -> str:
    head = "".join(f"<th>{h}</th>" for h, _, _ in TURN_COLUMNS)
    cells = "".join(cell(h, e, f) for h, e, f in TURN_COLUMNS)
    return ("<h2>Taking turns on GPUs</h2>\n<p>From the turn-taking controller: which model is awake, how often and how "
            "fast they swap, how many requests waited for a wake and how long.</p>\n"
            f"<table id=\"turns\">\n<tr><th>server</th>{head}</tr>\n"
            '{{ range query "max by (service) (vllm_compose_awake)" | sortByLabel "service" }}\n'
            f'<tr data-service="{{{{ .Labels.service }}}}"><td>{{{{ .Labels.service }}}}</td>{cells}</tr>\n'
            "{{ end }}\n</table>\n")


def _escape(expr: str) -> str:
    """PromQL inside a Go template string: quotes escaped, and % doubled for printf."""
    return expr.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
