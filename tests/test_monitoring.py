"""Monitoring (deploy/monitoring.py, deploy/dashboards.py): Prometheus's scrape config, Grafana's dashboard."""

from __future__ import annotations

import json

import pytest
import yaml

from deploy import cli, envfile, pins
from deploy.targets import compose
from support import deployment


def test_monitoring_scrapes_every_server_by_service_name():
    d = deployment("monitoring: {port: 9191}\nservices:\n  air:\n    preset: glm-4.5-air\n"
                   "  v:\n    preset: glm-4.1v-9b-thinking\n    port: 8001\n    gpus: [4]\n")
    doc = compose.compose(d)
    prom = doc["services"]["prometheus"]
    assert prom["ports"] == ["127.0.0.1:9191:9090"] and prom["profiles"] == ["monitoring"] and "build" in prom
    scrape = yaml.safe_load(doc["configs"]["prometheus"]["content"])["scrape_configs"][0]["static_configs"]
    assert [(t["targets"], t["labels"]["service"]) for t in scrape] == [(["air:8000"], "air"), (["v:8000"], "v")]
    assert "$$labels" in doc["configs"]["prometheus-alerts"]["content"]  # compose must not interpolate it


def test_monitoring_brings_grafana_with_its_dashboard_and_a_generated_password(tmp_path):
    """Grafana (pinned upstream image) in the monitoring profile: Prometheus as its data source, the dashboard
    provisioned read-only, the admin password generated into the env file (never into compose.yaml), no
    anonymous access; its port checked like the others."""
    from deploy import dashboards

    spec = tmp_path / "s.yaml"
    spec.write_text("monitoring: {port: 9191, grafana_port: 3300}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n")
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0
    doc = yaml.safe_load((tmp_path / "compose.yaml").read_text())
    g = doc["services"]["grafana"]
    password = envfile.read(tmp_path / "grafana.env")["GF_SECURITY_ADMIN_PASSWORD"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in envfile.read(tmp_path / "secrets.env")  # the servers' file
    assert g["env_file"] == [{"path": "grafana.env", "required": True}]
    assert g["image"] == pins.GRAFANA_IMAGE and g["ports"] == ["127.0.0.1:3300:3000"] and g["profiles"] == ["monitoring"]
    assert g["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and password not in (tmp_path / "compose.yaml").read_text()
    assert "http://prometheus:9090" in doc["configs"]["grafana-datasource"]["content"]
    board = json.loads(doc["configs"]["grafana-dashboard"]["content"].replace("$$", "$"))
    assert [p["title"] for p in board["panels"]] == [p[0] for p in dashboards.panels(routed=False)]
    spec.write_text("monitoring: {grafana_port: 8002}\nservices:\n  a:\n    preset: smollm2-135m-cpu\n    port: 8002\n")
    assert cli.main(["check", str(spec)]) == 1


@pytest.mark.parametrize("routed", [False, True])
def test_every_dashboard_field_is_one_of_grafanas_dashboard_model(routed):
    """The dashboard read into grafana-foundation-sdk's Dashboard model (Grafana's own schema, as code) and written
    back loses nothing: a misspelt or unknown field anywhere (a panel's `titel`, a unit's key) would be dropped."""
    sdk = pytest.importorskip("grafana_foundation_sdk.models.dashboard",
                              reason="grafana-foundation-sdk needs Python 3.11 (pip install -e '.[test]' on 3.11+)")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    from deploy import dashboards

    ours = json.loads(dashboards.dashboard(routed=routed))
    back = json.loads(json.dumps(sdk.Dashboard.from_json(ours), cls=JSONEncoder))

    def lost(a, b, path="dashboard"):
        if isinstance(a, dict):
            return [p for k, v in a.items() for p in ([f"{path}.{k}"] if k not in b else lost(v, b[k], f"{path}.{k}"))]
        if isinstance(a, list):
            return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in lost(x, y, f"{path}[{i}]")]
        return [] if a == b else [f"{path} ({a!r} became {b!r})"]

    assert lost(ours, back) == []
    assert len(back["panels"]) == len(dashboards.panels(routed))
    typo = json.loads(dashboards.dashboard(routed=routed))
    typo["panels"][0]["titel"] = "x"  # the check itself: an unknown field is found
    assert lost(typo, json.loads(json.dumps(sdk.Dashboard.from_json(typo), cls=JSONEncoder))) == ["dashboard.panels[0].titel"]
