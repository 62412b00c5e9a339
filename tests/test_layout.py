"""The tree's rules, read from the code itself: what runs in containers never imports the generator, and the
runtime scripts (single files mounted into containers) import only the standard library."""

from __future__ import annotations

import ast
import sys

import pytest

from deploy import runtime
from support import ROOT

RUNTIME = ROOT / "deploy/runtime"
# What each part may import beyond the standard library: the router image's python3-cryptography; the fetch
# program's hub clients and, for a PyPI GGUF, the CPU image's torch and transformers.
THIRD_PARTY = {"router_start.py": {"cryptography"}, "fetch.py": {"huggingface_hub", "modelscope"},
               "gguf.py": {"torch", "transformers"}}


def imports(path) -> list[tuple[str, int]]:
    """(module, relative level) of every import in PATH, at any depth (imports inside functions count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


@pytest.mark.parametrize("path", sorted(RUNTIME.glob("*.py")), ids=lambda p: p.name)
def test_runtime_code_never_imports_the_generator(path):
    for module, level in imports(path):
        assert level <= 1, f"{path.name}: `from {'.' * level}{module} import` reaches the generator"
        if level == 0:
            assert module.split(".")[0] != "deploy" or module.startswith("deploy.runtime"), \
                f"{path.name} imports {module}: runtime code never imports the generator"
        top = module.split(".")[0]
        assert level == 1 or top == "__future__" or top in sys.stdlib_module_names or top in THIRD_PARTY.get(path.name, ()), \
            f"{path.name} imports {module}, which its container may not have (allowed beyond the standard library: " \
            f"{sorted(THIRD_PARTY.get(path.name, ())) or 'nothing'})"


@pytest.mark.parametrize("name", runtime.SCRIPTS)
def test_runtime_scripts_are_single_files(name):
    """A script arrives in its container alone (a compose config, a ConfigMap): no import of its neighbours."""
    assert [m for m, level in imports(RUNTIME / name) if level] == [], f"{name} imports a module beside it"


def test_every_runtime_file_is_a_script_or_part_of_the_fetch_program():
    assert {p.name for p in RUNTIME.glob("*.py")} - {"__init__.py"} == {*runtime.SCRIPTS, "fetch.py", "source.py", "gguf.py"}


def test_generator_modules_stay_out_of_the_runtime_tree():
    """The other direction holds by construction: what the generator and the containers share (the model-source
    forms, the key rule) is defined in runtime/ and imported from there."""
    from deploy import resolve, write
    from deploy.runtime import router_start, source

    assert resolve.Source is source.Source and write.KEY_PREFIX is router_start.KEY_PREFIX


MAINTAINER = ROOT / "maintainer"


def test_maintainer_scripts_import_and_none_imports_another_in_a_cycle():
    """Each maintainer script imports (so a moved generator API breaks a test here, not a GPU run), and the scripts
    that share code do so through a module none of them is (gpu_verify, gpu_bench): no cycle."""
    import subprocess

    names = sorted(p.stem for p in MAINTAINER.glob("*.py"))
    graph = {n: {m.split(".")[0] for m, level in imports(MAINTAINER / f"{n}.py") if m.split(".")[0] in names}
             for n in names}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph[start])

    assert [n for n in names if reaches(n, n, {n})] == []
    code = "import sys; sys.path.insert(0, sys.argv[1]); [__import__(n) for n in sys.argv[2:]]"
    r = subprocess.run([sys.executable, "-c", code, str(MAINTAINER), *names], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
