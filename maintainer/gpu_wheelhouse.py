#!/usr/bin/env python3
"""Build the smallest wheelhouse that runs vLLM 0.26.0 on the GPU machine, for staging in pieces.

    python maintainer/gpu_wheelhouse.py [--out .device/wheels] [--max-mb 20]

The GPU machine (tool `device`) has Python 3.12, torch 2.11.0+cu130 and many packages but no
network and no vLLM. This walks vLLM's requirements (and theirs) from the wheels' own
METADATA, skips what the machine already has (maintainer/gpu_present.txt, from the device's package
list), skips optional kernel packages over --max-mb that plain serving of Llama / GLM-4.5 /
GLM-4.1V does not import, and downloads the rest for cp312 manylinux x86-64. Then
`maintainer/gpu_stage.py` cuts the folder into ≤ 60 MiB parts for consecutive device calls.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]
# Kernel packages vLLM 0.26 did not import to serve Llama, GLM-4.5 (MoE, TP 1 and 2) and GLM-4.1V on H200.
OPTIONAL = {"tilelang", "humming-kernels", "quack-kernels", "tokenspeed-mla", "nvidia-cutlass-dsl", "cuda-tile",
            "pynvvideocodec", "torchcodec", "nvidia-cudnn-frontend", "fastsafetensors", "pywin32"}
# Learned on the device (2026-11-22): the sampler imports flashinfer at start-up; xgrammar 0.2.8 needs a newer
# apache-tvm-ffi than vLLM's pin (0.1.10: "load_lib_module() got an unexpected keyword argument");
# mistral_common → pydantic_extra_types needs pycountry; gguf converts SmolLM2 there.
EXTRA_ROOTS = ["apache-tvm-ffi>=0.1.15", "pycountry", "gguf==0.19.0"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(wheel: Path, extras: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    out = []
    for req in msg.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        marker = marker.strip()
        if "extra ==" in marker and not any(f'extra == "{e}"' in marker for e in extras):
            continue
        if "platform_machine" in marker and "x86_64" not in marker:
            continue
        if 'python_version < "3' in marker or "sys_platform == \"win32\"" in marker or 'sys_platform == "darwin"' in marker:
            continue
        out.append(spec.strip())
    return out


def download(spec: str, out: Path) -> Path | None:
    before = set(out.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", "-d", str(out), spec]
    for p in PLATFORMS + ["any"]:
        cmd[cmd.index("-d"):cmd.index("-d")] = ["--platform", p]
    r = subprocess.run(cmd, capture_output=True, text=True)
    new = set(out.glob("*.whl")) - before
    if r.returncode or not new:
        existing = [w for w in out.glob("*.whl") if norm(w.name.split("-")[0]) == norm(re.split(r"[\[<>=!~ ;]", spec)[0])]
        if existing:
            return existing[0]
        print(f"  cannot download {spec}: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return new.pop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".device/wheels")
    p.add_argument("--max-mb", type=float, default=20)
    p.add_argument("--root", default="vllm==0.26.0")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    present = {norm(line.split()[0]) for line in (ROOT / "maintainer/gpu_present.txt").read_text().split("\n")
               if line.strip() and not line.startswith("#")}
    seen: set[str] = set()
    queue = [*EXTRA_ROOTS, a.root]
    while queue:
        spec = queue.pop(0)
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[([^\]]*)\])?", spec)
        name, extras = norm(m.group(1)), set(filter(None, (m.group(3) or "").split(",")))
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen or (name in present and not extras) or name in OPTIONAL:
            continue
        # One version per package (pip refuses two): the first requirement seen wins.
        if not extras and any(norm(w.name.split("-")[0]) == name for w in a.out.glob("*.whl")):
            seen.add(key)
            continue
        seen.add(key)
        wheel = download(re.sub(r"\[[^\]]*\]", "", spec), a.out) if name not in present else None
        if name in present:  # an extra of a present package: only its extra requirements matter
            continue
        if wheel is None:
            continue
        mb = wheel.stat().st_size / 2**20
        if mb > a.max_mb and name != norm(a.root.split("=")[0]):
            print(f"  skip {wheel.name} ({mb:.0f} MiB > {a.max_mb})", file=sys.stderr)
            wheel.unlink()
            continue
        queue += requirements(wheel, extras)
    total = sum(w.stat().st_size for w in a.out.glob("*.whl")) / 2**20
    print(f"{len(list(a.out.glob('*.whl')))} wheels, {total:.0f} MiB in {a.out}")


if __name__ == "__main__":
    main()
