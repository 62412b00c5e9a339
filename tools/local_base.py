#!/usr/bin/env python3
"""Make the Python base image without a registry, for hosts that cannot pull python:3.11-slim-bookworm.

    python3 tools/local_base.py [--tag vllm-compose/base:bookworm] [--mirror http://deb.debian.org/debian]
    export VLLM_COMPOSE_BASE_IMAGE=vllm-compose/base:bookworm     # then `docker compose up` builds on it

Debian bookworm with python3, venv and pip, made with debootstrap from a Debian mirror (a
registry mirror is not needed) and loaded with `docker import` (~1 min). Needs root and
`debootstrap` (apt-get install debootstrap). A second run with the tag present does nothing.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def apt_mirror() -> str:
    """The host's own Debian mirror (the one apt already reaches), else deb.debian.org."""
    for f in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.sources")]:
        try:
            for line in Path(f).read_text().splitlines():
                if line.startswith("URIs:") or line.startswith("deb "):
                    uri = line.split()[1]
                    if "debian" in uri and "security" not in uri:
                        return uri
        except OSError:
            pass
    return "http://deb.debian.org/debian"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="vllm-compose/base:bookworm")
    p.add_argument("--mirror", default=None, help="Debian mirror (default: the host's apt mirror)")
    a = p.parse_args()
    if subprocess.run(["docker", "image", "inspect", a.tag], capture_output=True).returncode == 0:
        print(f"{a.tag} is present; export VLLM_COMPOSE_BASE_IMAGE={a.tag}")
        return 0
    if not shutil.which("debootstrap"):
        print("debootstrap is missing. Fix: apt-get install -y debootstrap (as root).", file=sys.stderr)
        return 1
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rootfs-") as rootfs:
        r = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
                            "bookworm", rootfs, a.mirror or apt_mirror()], stdout=subprocess.DEVNULL)
        if r.returncode:
            print("debootstrap failed (see above). Fix: run as root with a reachable Debian mirror (--mirror).", file=sys.stderr)
            return 1
        shutil.rmtree(f"{rootfs}/var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", a.tag], stdin=tar.stdout, stdout=subprocess.DEVNULL, check=True)
        tar.wait()
    print(f"made {a.tag} in {time.time() - t0:.0f}s; export VLLM_COMPOSE_BASE_IMAGE={a.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
