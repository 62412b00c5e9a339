"""What a Kubernetes API server's admission (and the first kubectl apply) would refuse that the OpenAPI schemas do
not catch, checked offline over a set of rendered manifests: selectors that match nothing, references to objects
that do not exist, names over their limits, clashing ports, probes on ports the container does not expose,
requests above limits. No cluster can run here (docs: environment.md); this stands in for the parts that matter."""

from __future__ import annotations

import re
from typing import Any

DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
QUANTITY = re.compile(r"^([0-9.]+)([A-Za-z]*)$")
UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod template metadata, pod spec) of every pod an object makes."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Pod":
        return [("Pod", obj["metadata"], spec)]
    if kind in ("Deployment", "Job"):
        return [(kind, spec["template"].get("metadata", {}), spec["template"]["spec"])]
    if kind == "LeaderWorkerSet":
        group = spec["leaderWorkerTemplate"]
        return [(f"LeaderWorkerSet.{role}", group[role].get("metadata", {}), group[role]["spec"])
                for role in ("leaderTemplate", "workerTemplate") if role in group]
    return []


def _quantity(q) -> float:
    m = QUANTITY.match(str(q))
    return float(m.group(1)) * UNITS[m.group(2)] if m and m.group(2) in UNITS else float("nan")


def problems(objects: list[dict[str, Any]], outside: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every problem in OBJECTS (one apply's worth). OUTSIDE: (kind, name) of objects the user creates (the
    Secrets the README names)."""
    out = []
    have = {(o["kind"], o["metadata"]["name"]) for o in objects} | set(outside)
    pod_labels = [meta.get("labels", {}) for o in objects for _, meta, _ in pod_specs(o)]
    for o in objects:
        name, kind = o["metadata"]["name"], o["kind"]
        where = f"{kind}/{name}"
        if len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
            out.append(f"{where}: name is not a DNS-1123 subdomain of at most 253 characters")
        if kind == "Service" and not DNS1035_LABEL.fullmatch(name):
            out.append(f"{where}: a Service's name must be a DNS-1035 label (63 characters, a letter first)")
        for key, value in o["metadata"].get("labels", {}).items():
            if not LABEL_VALUE.fullmatch(str(value)):
                out.append(f"{where}: label {key}={value!r} is not a label value (63 characters at most)")
        if kind == "Deployment":
            wanted = o["spec"]["selector"]["matchLabels"].items()
            if not wanted <= o["spec"]["template"]["metadata"].get("labels", {}).items():
                out.append(f"{where}: spec.selector does not match its pod template's labels")
        if kind == "Service":
            sel = o["spec"].get("selector", {}).items()
            if not any(sel <= labels.items() for labels in pod_labels):
                out.append(f"{where}: spec.selector matches no pod in the output")
        for part, _meta, spec in pod_specs(o):
            at = f"{where} ({part})"
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for v in volumes.values():
                if "persistentVolumeClaim" in v and ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) not in have:
                    out.append(f"{at}: volume {v['name']} claims {v['persistentVolumeClaim']['claimName']}, which is not in the output")
                if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in have:
                    out.append(f"{at}: volume {v['name']} reads ConfigMap {v['configMap']['name']}, which is not in the output")
                if "secret" in v and ("Secret", v["secret"]["secretName"]) not in have:
                    out.append(f"{at}: volume {v['name']} reads Secret {v['secret']['secretName']}, which is neither in "
                               "the output nor one the README has you create")
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                cat = f"{at} container {c['name']}"
                for m in c.get("volumeMounts", []):
                    if m["name"] not in volumes:
                        out.append(f"{cat}: mounts {m['name']}, which is no volume of the pod")
                    elif "configMap" in volumes[m["name"]] and "subPath" in m:
                        cm = next((x for x in objects if x["kind"] == "ConfigMap"
                                   and x["metadata"]["name"] == volumes[m["name"]]["configMap"]["name"]), None)
                        if cm is not None and m["subPath"] not in cm.get("data", {}):
                            out.append(f"{cat}: mounts {m['subPath']} from ConfigMap {cm['metadata']['name']}, which lacks it")
                for ref in [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})] \
                        + [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]:
                    if ("Secret", ref["name"]) not in have and not ref.get("optional"):
                        out.append(f"{cat}: reads Secret {ref['name']}, which is neither in the output nor one the README has you create")
                ports = c.get("ports", [])
                names = [p.get("name") for p in ports if p.get("name")]
                numbers = [p["containerPort"] for p in ports]
                if len(set(names)) < len(names) or len(set(numbers)) < len(numbers):
                    out.append(f"{cat}: port names or numbers repeat")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None and port not in names and port not in numbers:
                        out.append(f"{cat}: {probe} asks port {port!r}, which the container does not expose")
                res = c.get("resources", {})
                for key, request in res.get("requests", {}).items():
                    limit = res.get("limits", {}).get(key)
                    if limit is not None and _quantity(request) > _quantity(limit):
                        out.append(f"{cat}: requests {key} {request} above its limit {limit}")
    return out
