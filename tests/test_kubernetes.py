"""The Kubernetes target: every rendered manifest checked offline against the Kubernetes schemas.

kubernetes-validate (PyPI) carries the upstream OpenAPI schemas; they are used strictly (unknown fields
fail). The LeaderWorkerSet is a CRD, so its own fields are checked against tests/fixtures/
leaderworkerset-v1.schema.json and its pod templates, strictly, as core PodTemplates. No cluster here:
what a scheduler or kubelet would do is not exercised.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import deploy
from deploy import cli, container, facts, monitoring, targets
from deploy.errors import SpecError
from deploy.spec import loads
from deploy.targets import kubernetes
from support import EXAMPLES, ROOT, admission, api_key, check_golden, load_yaml_all

STACKS = [ROOT / "deploy/stacks/default.yaml", ROOT / "tests/stacks/k8s/glm-air-multinode.yaml",
          ROOT / "tests/stacks/k8s/router-tls.yaml"]
# What the README has the user create (the hub Secret is optional): the keys, the router's certificate.
OUTSIDE = {("Secret", kubernetes.SECRET), ("Secret", kubernetes.ROUTER_TLS_SECRET)}
LWS_SCHEMA = json.loads((ROOT / "tests/fixtures/leaderworkerset-v1.schema.json").read_text())
MONITORING_SCHEMA = json.loads((ROOT / "tests/fixtures/monitoring-coreos-v1.schema.json").read_text())


def deployment(text: str):
    from deploy.resolve import resolve

    stack, c = loads(text)
    d = resolve(stack, c)
    c.raise_if_errors("spec")
    return d


def validate(obj: dict) -> None:
    # The schemas leave names free; the API server does not: a Service's name (ours are all the same) is a DNS-1035 label.
    assert kubernetes.NAME_RE.fullmatch(obj["metadata"]["name"].removesuffix("-models")), obj["metadata"]["name"]
    if obj["apiVersion"] == kubernetes.MONITORING_API:
        jsonschema.Draft7Validator(MONITORING_SCHEMA).validate(obj)
    elif obj["kind"] == "LeaderWorkerSet":
        jsonschema.Draft7Validator(LWS_SCHEMA).validate(obj)
        for role in ("leaderTemplate", "workerTemplate"):
            template = obj["spec"]["leaderWorkerTemplate"][role]
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template}, kubernetes.KUBERNETES_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, kubernetes.KUBERNETES_VERSION, strict=True)


_RENDERS: dict[tuple[Path, tuple[str, ...]], dict[str, list[dict]]] = {}


def rendered(stack: Path, tmp_path: Path, *extra: str) -> dict[str, list[dict]]:
    """The manifests of STACK by file (jobs/NAME-batch.yaml for its batch jobs), rendered by the CLI.

    A committed stack (under the checkout, unchanged during the run) is rendered once per run and each caller
    gets its own copy of the objects (the admission tests break theirs); a spec the test wrote is rendered
    every time."""
    if stack.is_relative_to(ROOT) and (stack, extra) in _RENDERS:
        return copy.deepcopy(_RENDERS[stack, extra])
    out = tmp_path / stack.stem
    assert cli.main(["render", str(stack), "--target", "kubernetes", "-o", str(out), *extra]) == 0
    files = {str(p.relative_to(out)): [o for o in load_yaml_all(p.read_text()) if o]
             for p in sorted(out.rglob("*.yaml")) if p.name != "kustomization.yaml"}
    if stack.is_relative_to(ROOT):
        _RENDERS[stack, extra] = copy.deepcopy(files)
    return files


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.stem)
def test_manifests_pass_the_kubernetes_schemas_and_match_the_golden(stack, tmp_path, update_goldens):
    files = rendered(stack, tmp_path)
    for objects in files.values():
        for obj in objects:
            validate(obj)
    assert admission.problems([o for objects in files.values() for o in objects], OUTSIDE) == []
    text = "".join(f"# ---- {name}\n" + targets.dump_yaml(objects) for name, objects in files.items())
    check_golden(ROOT / "tests/golden/k8s" / f"{stack.stem}.yaml", text, update_goldens)


def test_the_server_runs_the_compose_argv_with_gpus_probes_and_the_key_from_a_secret(tmp_path):
    d, _ = deploy.load(str(ROOT / "deploy/stacks/default.yaml"))
    air = d.service("glm-4.5-air")
    [pvc, deployment_obj, svc] = rendered(ROOT / "deploy/stacks/default.yaml", tmp_path)["glm-4.5-air.yaml"]
    pod = deployment_obj["spec"]["template"]["spec"]
    [server] = pod["containers"]
    assert server["command"] + server["args"] == [*container.key_checked(container.ENTRYPOINT),
                                                  *container.server_argv(air, d.vllm_version)]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 4 and deployment_obj["spec"]["strategy"]["type"] == "Recreate"
    assert server["startupProbe"]["failureThreshold"] * server["startupProbe"]["periodSeconds"] >= air.health_start_period
    assert server["livenessProbe"]["exec"]["command"] == ["python3", container.LIVENESS]
    key = next(e for e in server["env"] if e["name"] == "VLLM_API_KEY")
    assert key == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": kubernetes.SECRET, "key": "VLLM_API_KEY"}}}
    [fetch] = pod["initContainers"]
    assert fetch["args"] == container.fetch_command(air) and pvc["metadata"]["name"] == "glm-4-5-air-models"
    assert pod["securityContext"]["runAsUser"] == 1000 and svc["spec"]["ports"][0]["port"] == 8000


def test_the_media_folder_is_a_claim_mounted_read_only_where_file_urls_may_read(tmp_path):
    """compose's media_dir (a host folder) is, on Kubernetes, a claim of its own at allowed_local_media_path."""
    objects = rendered(ROOT / "deploy/stacks/default.yaml", tmp_path)["glm-4.1v.yaml"]
    [claim] = [o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"].endswith("-media")]
    [dep] = [o for o in objects if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "media"]
    assert mount == {"name": "media", "mountPath": "/media", "readOnly": True}
    assert {"name": "media", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"], "readOnly": True}} \
        in pod["volumes"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--allowed-local-media-path") + 1] == "/media"


def test_more_gpus_than_a_node_has_becomes_a_leader_worker_set(tmp_path):
    files = rendered(ROOT / "tests/stacks/k8s/glm-air-multinode.yaml", tmp_path, "--gpus-per-node", "8")
    [lws] = [o for o in files["glm-4.5-air.yaml"] if o["kind"] == "LeaderWorkerSet"]
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    for c in (leader, worker):
        assert c["command"] == list(container.key_checked(["vllm", "serve"]))  # the entry point that honours --headless
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["args"][c["args"].index("--nnodes") + 1] == "2"
        assert c["args"][c["args"].index("--master-addr") + 1] == "$(LWS_LEADER_ADDRESS)"
    assert leader["args"][-2:] == ["--node-rank", "0"] and "startupProbe" in leader
    assert worker["args"][-3:] == ["--node-rank", "$(LWS_WORKER_INDEX)", "--headless"] and "startupProbe" not in worker
    [svc] = [o for o in files["glm-4.5-air.yaml"] if o["kind"] == "Service"]
    assert svc["spec"]["selector"]["role"] == "leader"
    # One copy of the weights for the group: the leader fetches, the workers wait for its marker.
    [pvc] = [o for o in files["glm-4.5-air.yaml"] if o["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert [c["name"] for c in group["leaderTemplate"]["spec"]["initContainers"]] == ["fetch"]
    [wait] = group["workerTemplate"]["spec"]["initContainers"]
    assert wait["name"] == "wait-for-weights" and ".fetch-complete.json" in wait["command"][-1]
    # With nodes as large as the job, the same spec is a plain Deployment.
    assert {o["kind"] for o in rendered(ROOT / "tests/stacks/k8s/glm-air-multinode.yaml", tmp_path / "big",
                                        "--gpus-per-node", "16")["glm-4.5-air.yaml"]} >= {"Deployment"}


@pytest.mark.parametrize("text,gpn,message", [
    ("services:\n  a:\n    model: ./weights\n    served_model_name: a\n", 8, "a local directory"),
    # (max_model_len: at TP 3 a GPU keeps 3 of Air's 8 KV heads, and the model's 131072 tokens would not fit.)
    ("services:\n  a:\n    preset: glm-4.5-air\n    tensor_parallel_size: 3\n    max_model_len: 8192\n", 2,
     "cannot be split evenly over 2 nodes"),
    ("vllm_version: 0.20.0\nservices:\n  a:\n    preset: glm-4.5-air\n", 2, "multi-node serving is rendered for vLLM 0.32.0"),
    ("services:\n  a:\n    preset: glm-4.5-air\n    tensor_parallel_size: 8\n    pipeline_parallel_size: 2\n"
     "    batch: true\n", 8, "pass --drop batch"),
])
def test_what_kubernetes_cannot_take_is_refused_with_the_fix(text, gpn, message, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    assert cli.main(["render", str(spec), "--target", "kubernetes", "-o", str(tmp_path / "out"),
                     "--gpus-per-node", str(gpn)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_router_monitoring_and_jobs_render_unless_dropped(tmp_path, capsys):
    """What compose renders beyond the servers renders here too; `--drop FEATURE` leaves one out on request,
    and the headers say so."""
    spec = tmp_path / "s.yaml"
    spec.write_text("monitoring: true\nrouter:\n  keys: {VLLM_API_KEY: '*', ROUTER_KEY_A: [a]}\n"
                    "services:\n  a:\n    preset: smollm2-135m-cpu\n    served_model_name: a\n    batch: true\n")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main(["render", str(spec), "--target", "kubernetes", "-o", str(out)]) == 0
    assert {p.name for p in out.rglob("*.yaml")} >= {"router.yaml", "monitoring.yaml", "a-batch.yaml"}
    # The one Secret holds the variables of every env file a pod reads: the servers' key, the router's (no Grafana
    # renders here, so not its password).
    assert ("kubectl create secret generic vllm-compose-keys --from-env-file=secrets.env "
            "--from-env-file=router-keys.env\n") in capsys.readouterr().err
    assert cli.main(["render", str(spec), "--target", "kubernetes", "--drop", "router", "--drop", "monitoring",
                     "--drop", "batch", "-o", str(tmp_path / "bare")]) == 0
    assert "# Left out on request (--drop batch --drop monitoring --drop router)" in (tmp_path / "bare/a.yaml").read_text()
    assert {p.name for p in (tmp_path / "bare").rglob("*.yaml")} == {"shared.yaml", "a.yaml", "kustomization.yaml"}


def test_monitoring_is_pod_monitors_and_the_compose_rules_as_a_prometheus_rule(tmp_path):
    """The servers scraped as job vllm with the `service` label the rules use, the router as job router over
    HTTPS, the same rule groups as compose's alerts.yml; a plain prometheus.yml for clusters without the
    operator; Prometheus admitted to the servers' port by the router's NetworkPolicy."""
    files = rendered(ROOT / "tests/stacks/k8s/router-tls.yaml", tmp_path)
    servers, routed, rules, plain, board = files["monitoring.yaml"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1" and "vllm-compose.json" in board["data"]
    assert servers["kind"] == routed["kind"] == "PodMonitor" and rules["kind"] == "PrometheusRule"
    assert servers["spec"]["selector"]["matchExpressions"][0]["values"] == ["glm-4-1v-a", "glm-4-1v-b", "glm-4-5-air"]
    [endpoint] = servers["spec"]["podMetricsEndpoints"]
    assert {"targetLabel": "job", "replacement": "vllm"} in endpoint["relabelings"] and endpoint["port"] == "http"
    assert routed["spec"]["podMetricsEndpoints"][0]["scheme"] == "https"
    assert rules["spec"]["groups"] == yaml.safe_load(monitoring.alerts_yaml())["groups"]
    jobs = yaml.safe_load(plain["data"]["prometheus.yml"])["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["vllm", "router"] and jobs[0]["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert jobs[0]["relabel_configs"][0] == {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                                             "regex": "glm-4-1v-a|glm-4-1v-b|glm-4-5-air", "action": "keep"}
    assert jobs[1]["scheme"] == "https" and yaml.safe_load(plain["data"]["alerts.yml"]) == {"groups": rules["spec"]["groups"]}
    policy = files["router.yaml"][-1]
    assert {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}} \
        in policy["spec"]["ingress"][0]["from"]


def test_the_router_runs_its_compose_config_with_keys_from_the_secret_and_alone_reaches_the_servers(tmp_path):
    """The router on Kubernetes: the same HAProxy config (servers at their Services, resolved at start), the
    keys from the Secret (the router checks them at start), the user's certificate from a TLS Secret, and a
    NetworkPolicy admitting only router pods to the servers' port; the servers' Services stay for the router."""
    files = rendered(ROOT / "tests/stacks/k8s/router-tls.yaml", tmp_path)
    config, dep, svc, policy = files["router.yaml"]
    cfg = config["data"]["haproxy.cfg"]
    assert "resolvers docker" not in cfg and "resolvers cluster\n  parse-resolv-conf\n" in cfg
    assert ('  server glm-4.1v-a "glm-4-1v-a.${POD_NAMESPACE}.svc.cluster.local:8000"\n'
            '  server glm-4.1v-b "glm-4-1v-b.${POD_NAMESPACE}.svc.cluster.local:8000"') in cfg and "balance roundrobin" in cfg
    assert "kubectl get pods" in cfg and "docker compose" not in cfg
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python3", container.ROUTER_START] and c["envFrom"] == [{"secretRef": {"name": kubernetes.SECRET}}]
    assert c["env"] == [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    assert c["args"][:2] == ["--key=VLLM_API_KEY", "--key=ROUTER_KEY_VISION"] and "--own-cert" in c["args"]
    [tls] = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == kubernetes.ROUTER_TLS_SECRET
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert svc["spec"]["ports"] == [{"name": "http", "port": facts.ROUTER_PORT, "targetPort": "http"}]
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["glm-4-1v-a", "glm-4-1v-b", "glm-4-5-air"]
    [ingress] = policy["spec"]["ingress"]
    assert ingress["from"][0] == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "router"}}}
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}] and len(ingress["from"]) == 2  # + Prometheus
    assert set(files["shared.yaml"][0]["data"]) == {"liveness.py", "batch.py", "router_start.py", "server_start.py"}


def test_a_batch_job_is_a_job_running_the_servers_container_with_its_folders_on_a_claim(tmp_path):
    """compose's NAME-batch on Kubernetes: the server's image, argv (after batch.py's own) and environment, its
    GPUs; batch.py from the scripts ConfigMap; input/ and output/ on a claim of their own; a failed pod runs again
    (the job resumes by custom_id); apart in jobs/, so applying the folder does not start it beside the server."""
    files = rendered(ROOT / "deploy/stacks/default.yaml", tmp_path)
    claim, files_pod, job = files["jobs/glm-4.5-air-batch.yaml"]
    [server] = [o for o in files["glm-4.5-air.yaml"] if o["kind"] == "Deployment"]
    pod, served = job["spec"]["template"]["spec"], server["spec"]["template"]["spec"]["containers"][0]
    [c] = pod["containers"]
    assert job["kind"] == "Job" and pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    assert c["image"] == served["image"] and c["command"] == ["python3", container.BATCH]
    after = c["args"][c["args"].index("--") + 1:]
    assert after[:3] == container.ENTRYPOINT and after[3:] == [
        "127.0.0.1" if a == "0.0.0.0" else a for a in served["args"]]
    assert c["resources"] == served["resources"] and [e for e in c["env"] if "valueFrom" in e] == []  # no key
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[container.BATCH]["subPath"] == "batch.py" and mounts[container.BATCH_DIRS[0]]["readOnly"]
    assert mounts[container.BATCH_DIRS[1]] == {"name": "batch", "mountPath": container.BATCH_DIRS[1], "subPath": "output"}
    assert {"name": "batch", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in pod["volumes"]
    assert [i["name"] for i in pod["initContainers"]] == ["batch-folders", "fetch"]
    # A pod to copy requests in and answers out (kubectl cp), on the same claim.
    assert files_pod["kind"] == "Pod" and files_pod["spec"]["volumes"] == [
        {"name": "batch", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
    [scripts] = files["shared.yaml"]
    assert set(scripts["data"]) == {"liveness.py", "batch.py", "server_start.py"}


def test_the_kustomization_lists_every_server_file_and_no_job(tmp_path):
    out = tmp_path / "k8s"
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "--target", "kubernetes", "-o", str(out)]) == 0
    k = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization" and sorted(k["resources"]) == sorted(p.name for p in out.glob("*.yaml")
                                                                           if p.name != "kustomization.yaml")
    assert (out / "jobs").is_dir() and not any(r.startswith("jobs/") for r in k["resources"])


def test_no_key_and_no_host_variable_reaches_a_manifest(tmp_path):
    """Keys stay in the Secret; a `$(...)` in the spec reaches the container as written, never expanded."""
    spec = tmp_path / "s.yaml"
    spec.write_text("services:\n  a:\n    preset: smollm2-135m-cpu\n    extra_args: ['--x=$(HOME)']\n")
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "compose.yaml")]) == 0  # makes secrets.env
    key = api_key(tmp_path)
    files = rendered(spec, tmp_path)
    text = json.dumps(files)
    assert key not in text and "--x=$$(HOME)" in text


def test_a_folder_with_foreign_files_is_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "glm-4.5-air.yaml").write_text("mine\n")
    assert cli.main(["render", str(ROOT / "deploy/stacks/default.yaml"), "--target", "kubernetes", "-o", str(out)]) == 1
    assert (out / "glm-4.5-air.yaml").read_text() == "mine\n" and "not written by this tool" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["glm-4.5-air.yaml"]


GOOD = [yaml.safe_load(p.read_text()) for p in STACKS]


@settings(max_examples=EXAMPLES(150), deadline=None)
@given(st.sampled_from(GOOD), st.sampled_from(["tensor_parallel_size", "pipeline_parallel_size", "gpus", "model",
                                               "served_model_name", "extra_args", "env", "max_model_len", "device"]),
       st.none() | st.booleans() | st.integers(-2, 40) | st.text(max_size=12) | st.lists(st.text(max_size=8), max_size=3)
       | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2),
       st.sampled_from([1, 2, 4, 8]))
def test_mutated_stacks_give_valid_manifests_or_a_clean_error(base, key, value, gpus_per_node):
    """The hostile-spec property for this target: a SpecError / TargetError naming the fix, or manifests
    that pass the schemas."""
    doc = json.loads(json.dumps(base))
    next(iter(doc["services"].values()))[key] = value
    try:
        d = deployment(yaml.safe_dump(doc))
        files = kubernetes.manifests(d, gpus_per_node)
    except SpecError as e:
        assert e.problems and all(p.message for p in e.problems)
        return
    except kubernetes.TargetError as e:
        assert "Fix:" in str(e)
        return
    for objects in files.values():
        for obj in objects:
            validate(obj)


def _first(objects, kind):
    return next(o for o in objects if o["kind"] == kind)


def _server(objects):
    return _first(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


BREAKS = {
    "spec.selector does not match": lambda o: _first(o, "Deployment")["spec"]["selector"]["matchLabels"].update(x="y"),
    "matches no pod": lambda o: _first(o, "Service")["spec"]["selector"].update(app="none"),
    "which is not in the output": lambda o: o.remove(_first(o, "PersistentVolumeClaim")),
    "reads ConfigMap": lambda o: o.remove(_first(o, "ConfigMap")),
    "which lacks it": lambda o: _first(o, "ConfigMap")["data"].pop("liveness.py"),
    "reads Secret": lambda o: next(e for e in _server(o)["env"] if "valueFrom" in e)["valueFrom"]["secretKeyRef"].update(name="typo"),
    "DNS-1123": lambda o: _first(o, "PersistentVolumeClaim")["metadata"].update(name="Bad_Name"),
    "is not a label value": lambda o: _first(o, "Service")["metadata"]["labels"].update(x="v" * 64),
    "port names or numbers repeat": lambda o: _server(o)["ports"].append({"name": "http", "containerPort": 8001}),
    "which the container does not expose": lambda o: _server(o)["readinessProbe"]["httpGet"].update(port="web"),
    "above its limit": lambda o: _server(o)["resources"].update(requests={"nvidia.com/gpu": 8}),
    "which is no volume of the pod": lambda o: _server(o)["volumeMounts"].append({"name": "gone", "mountPath": "/x"}),
}


@pytest.mark.parametrize("message", BREAKS)
def test_each_admission_check_fails_on_a_manifest_broken_for_it(message, tmp_path):
    """Each offline check (tests/support/admission.py) seen failing: one rendered stack, broken one way."""
    files = rendered(ROOT / "deploy/stacks/default.yaml", tmp_path)
    objects = files["shared.yaml"] + files["glm-4.5-air.yaml"]
    assert admission.problems(objects, OUTSIDE) == []
    BREAKS[message](objects)
    found = admission.problems(objects, OUTSIDE)
    assert any(message in p for p in found), found


def test_the_router_reaches_a_multi_node_model_through_its_leaders_service(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("router: {keys: {VLLM_API_KEY: '*'}}\nservices:\n  air:\n    preset: glm-4.5-air\n"
                    "    tensor_parallel_size: 8\n    pipeline_parallel_size: 2\n")
    files = rendered(spec, tmp_path, "--gpus-per-node", "8")
    [svc] = [o for o in files["air.yaml"] if o["kind"] == "Service"]
    assert svc["spec"]["selector"]["role"] == "leader"
    assert f'  server air "{svc["metadata"]["name"]}.${{POD_NAMESPACE}}.svc.cluster.local:8000"' in \
        files["router.yaml"][0]["data"]["haproxy.cfg"]
    assert admission.problems([o for objects in files.values() for o in objects], OUTSIDE) == []
