"""Issue 35, item 4: the Kubernetes target's options, names and output folder, each refused before anything is
written (no traceback, no hang, nothing half-written). Each test here fails on main at 4d2dd9b."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy import cli, load
from deploy.targets import kubernetes


def k8s(tmp_path, capsys, spec: str, *extra: str, out=None):
    (tmp_path / "spec.yaml").write_text(spec)
    out = out or tmp_path / "k8s"
    code = cli.main(["render", str(tmp_path / "spec.yaml"), "--target", "kubernetes", "-o", str(out), *extra])
    return code, capsys.readouterr().err


ONE = "services:\n  {name}:\n    preset: smollm2-135m-cpu\n"


@pytest.mark.parametrize("value", ["0", "-8", "٣", "1_0", "9" * 40, "2.5", ""])
def test_gpus_per_node_must_be_a_positive_whole_number(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        k8s(tmp_path, capsys, ONE.format(name="a"), "--gpus-per-node", value)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--gpus-per-node" in err and "Traceback" not in err
    assert not (tmp_path / "k8s").exists()


@pytest.mark.parametrize("name", ["shared", "kustomization", "monitoring", "router", "vllm-compose-keys",
                                  "vllm-compose-scripts", "router-only"])
def test_a_service_named_like_the_targets_own_file_or_object_is_refused(tmp_path, capsys, name):
    spec = "router: {}\nmonitoring: {}\n" + ONE.format(name=name)
    code, err = k8s(tmp_path, capsys, spec)
    assert code == 1 and f"services.{name}" in err and "Fix: rename" in err
    assert not (tmp_path / "k8s").exists()


def test_every_own_name_is_checked():
    d = load_spec("services:\n  ok-name:\n    preset: smollm2-135m-cpu\n")
    assert kubernetes.check_names(d) == []


def load_spec(text: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as t:
        (Path(t) / "s.yaml").write_text(text)
        return load(Path(t) / "s.yaml")[0]


def test_a_fifo_in_the_output_folder_neither_hangs_nor_writes(tmp_path, capsys):
    out = tmp_path / "k8s"
    out.mkdir()
    os.mkfifo(out / "a.yaml")
    code, err = k8s(tmp_path, capsys, ONE.format(name="a"))
    assert code == 1 and "is a FIFO" in err and sorted(p.name for p in out.iterdir()) == ["a.yaml"]


@pytest.mark.parametrize("blocker", ["file-as-output", "file-as-jobs", "link", "folder"])
def test_what_stands_where_the_output_goes_is_refused_before_any_write(tmp_path, capsys, blocker):
    spec = ("services:\n  a:\n    preset: smollm2-135m-cpu\n    batch: {}\n")
    out = tmp_path / "k8s"
    if blocker == "file-as-output":
        out.write_text("mine\n")
    else:
        out.mkdir()
        {"file-as-jobs": lambda: (out / "jobs").write_text("mine\n"),
         "link": lambda: (out / "shared.yaml").symlink_to(tmp_path / "elsewhere.yaml"),
         "folder": lambda: (out / "kustomization.yaml").mkdir()}[blocker]()
    before = {str(p) for p in tmp_path.rglob("*")} | {str(tmp_path / "spec.yaml")}
    code, err = k8s(tmp_path, capsys, spec, out=out)
    assert code == 1 and "Fix:" in err and "Traceback" not in err and "nothing was written" in err
    assert {str(p) for p in tmp_path.rglob("*")} == before
    assert not (tmp_path / "elsewhere.yaml").exists()


@pytest.mark.parametrize("spelling", [["--api-server-count", "2"], ["--api_server_count=2"], ["--api-server-count=2"]])
def test_headless_workers_get_no_api_server_count(tmp_path, spelling):
    """vLLM refuses --api-server-count with --headless: the leader keeps it, the workers never get it."""
    d = load_spec("services:\n  big:\n    preset: glm-4.5-air\n    tensor_parallel_size: 8\n"
                  "    pipeline_parallel_size: 2\n    extra_args: " + repr(spelling) + "\n")
    files = kubernetes.manifests(d, gpus_per_node=8)
    lws = next(o for o in files["big.yaml"] if o["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    worker = lws["workerTemplate"]["spec"]["containers"][0]["args"]
    leader = lws["leaderTemplate"]["spec"]["containers"][0]["args"]
    assert "--headless" in worker and not any("server" in a and "count" in a for a in worker)
    assert any(a.startswith(spelling[0]) for a in leader)


OWN = sorted({*(f.removesuffix(".yaml") for f in kubernetes.OWN_FILES), *kubernetes.OWN_OBJECTS})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(OWN), st.sampled_from(OWN).map(lambda n: n.rsplit("-", 1)[0]),
                          st.from_regex(r"[a-z][a-z0-9-]{0,12}(-models|-media|-batch|-batch-files)?", fullmatch=True)),
                min_size=1, max_size=3, unique=True))
def test_no_service_name_makes_two_files_or_objects_one(names):
    """Whatever the services are called, the target either refuses the names (with a fix) or renders files and
    objects that are all distinct: nothing one writes can overwrite another."""
    from deploy.errors import SpecError

    spec = "router: {}\nmonitoring: {}\nservices:\n" + "".join(
        f"  {n}:\n    preset: smollm2-135m-cpu\n    served_model_name: m{i}\n    batch: {{}}\n"
        for i, n in enumerate(names))
    try:
        d = load_spec(spec)
    except SpecError as e:  # the compose target's own names (router, prometheus, NAME-fetch, ...) are refused there
        assert all("Fix" in p.message for p in e.problems if not p.warning)
        return
    if kubernetes.check_names(d):
        return
    try:
        files = kubernetes.manifests(d)
    except kubernetes.TargetError:
        return
    names_out = [*files, "kustomization.yaml"]
    assert len({n.lower() for n in names_out}) == len(names_out), names_out
    objects = [(o["kind"], o["metadata"]["name"]) for objs in files.values() for o in objs]
    assert len(set(objects)) == len(objects), sorted(o for o in objects if objects.count(o) > 1)
