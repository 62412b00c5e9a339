"""`python -m deploy doctor SPEC`: does this host have what the stack needs, before an hour is lost?

One line per check, each failure with its fix; every check runs, then exit 0 (all ok) or 1.
Checks: Docker engine, Compose v2 version, NVIDIA container runtime, GPU ids (nvidia-smi),
driver vs the server image's CUDA major, free disk at Docker's data root vs the weights,
host ports, the API-key env file, shared memory, compose.yaml up to date with the spec.
This module probes the host (commands, sockets, the hubs' file listings); render stays pure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import envfile, pins, sharing
from .resolve import Deployment, Service, floating
from .targets import compose
from .versions import VllmVersion

CPU_DEMO = "docker compose --profile cpu up -d --wait smollm2-cpu"


@dataclass
class Line:
    ok: bool
    what: str
    text: str
    fix: str = ""
    warn: bool = False  # ok, but worth a look: not counted as a problem

    def __str__(self) -> str:
        state = "warn" if self.warn else "ok  " if self.ok else "FAIL"
        return f"{state}  {self.what:12} {self.text}" + (f" Fix: {self.fix}" if self.fix else "")


def _run(cmd: list[str], timeout: float = 20) -> tuple[int, str, str]:
    if not shutil.which(cmd[0]):
        return 127, "", f"{cmd[0]}: not found"
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(cmd)} did not answer in {timeout:.0f}s"
    return r.returncode, r.stdout, r.stderr


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.lstrip("v").split("-")[0].split(".")[:3] if x.isdigit())


# ------------------------------------------------------------------ the checks


def check_docker() -> tuple[list[Line], dict]:
    code, out, err = _run(["docker", "info", "--format", "{{json .}}"])
    if code == 127:
        return [Line(False, "docker", "the docker CLI is not installed.",
                     "install Docker Engine (docs.docker.com/engine/install), then start it.")], {}
    try:
        info = json.loads(out) if code == 0 else {}
    except ValueError:
        info = {}
    if not info.get("ServerVersion"):
        why = (err.strip().splitlines() or ["no answer"])[-1][:200]
        return [Line(False, "docker", f"the engine is not reachable ({why}).",
                     "start it (systemctl start docker) and make sure this user may use it (group docker).")], {}
    return [Line(True, "docker", f"engine {info['ServerVersion']}, data root {info.get('DockerRootDir', '?')}")], info


def check_compose() -> list[Line]:
    code, out, err = _run(["docker", "compose", "version", "--short"])
    if code:
        return [Line(False, "compose", "Compose v2 (`docker compose`) is missing.",
                     f"install the docker-compose-plugin package (Compose {pins.COMPOSE_MIN} or newer).")]
    have = out.strip()
    if _ver(have) < _ver(pins.COMPOSE_MIN):
        return [Line(False, "compose", f"Compose {have} is older than {pins.COMPOSE_MIN}, the first that reads "
                     "the file's `env_file: {path, required}`.", f"upgrade docker-compose-plugin to {pins.COMPOSE_MIN}+.")]
    return [Line(True, "compose", f"Compose {have}")]


def _image_cuda_major(image: str, version: VllmVersion) -> int | None:
    """The CUDA major of an upstream vLLM image (or the project's variant of it); None if unknown."""
    if pins.CU129_SUFFIX in image:
        return 12
    upstream = pins.VLLM_GPU_IMAGE.format(version=version)
    if image not in (upstream, f"vllm-compose/vllm:{version}"):
        return None
    major = None
    for since, cuda in sorted(pins.IMAGE_CUDA_MAJOR.items(), key=lambda kv: VllmVersion.parse(kv[0])):
        if version >= VllmVersion.parse(since):
            major = cuda
    return major


def check_gpus(d: Deployment, services: list[Service], info: dict) -> list[Line]:
    gpu = [s for s in services if s.device == "gpu"]
    if not gpu:
        return []
    names = ", ".join(f"{s.name} ({s.gpu_count} GPU)" for s in gpu)
    lines = []
    runtimes = set(info.get("Runtimes") or {})
    if "nvidia" in runtimes or shutil.which("nvidia-container-runtime-hook") or shutil.which("nvidia-ctk"):
        lines.append(Line(True, "nvidia-ctk", "NVIDIA Container Toolkit present"))
    else:
        lines.append(Line(False, "nvidia-ctk", f"no NVIDIA container runtime, so Docker cannot hand GPUs to {names}.",
                          "install nvidia-container-toolkit, run `nvidia-ctk runtime configure --runtime=docker`, "
                          "restart Docker."))
    code, out, err = _run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                           "--format=csv,noheader,nounits"])
    if code:
        lines.append(Line(False, "gpus", f"nvidia-smi {'not found' if code == 127 else 'failed'}: no usable NVIDIA "
                          f"driver here, and {names} need GPUs.", "install the NVIDIA driver "
                          f"(>= {pins.DRIVER_MIN[13]} for the default image), or on a machine without a GPU run the "
                          f"CPU demo: {CPU_DEMO}"))
        return lines
    rows = [[x.strip() for x in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    have = {int(r[0]): r for r in rows}
    driver = rows[0][3] if rows else "?"
    lines.append(Line(True, "gpus", f"{len(rows)} GPU(s): " + "; ".join(f"{r[0]} {r[1]} {int(r[2]) // 1024} GiB" for r in rows)))
    for s in gpu:
        missing = [g for g in (s.gpu_ids or ()) if g not in have]
        if missing:
            lines.append(Line(False, "gpus", f"{s.name} asks for GPU id(s) {missing}; this host has {sorted(have)}.",
                              f"set gpus: in the spec to ids from {sorted(have)} (or a count)."))
        elif s.gpu_count > len(have):
            lines.append(Line(False, "gpus", f"{s.name} needs {s.gpu_count} GPUs; this host has {len(have)}.",
                              "lower tensor_parallel_size (a smaller or FP8 preset), or use a larger host."))
        major = _image_cuda_major(s.image, d.vllm_version)
        need = pins.DRIVER_MIN.get(major) if major else None
        if need and _ver(driver)[:1] < (need,):
            fix = (f"upgrade the driver to >= {need}, or use the CUDA 12.9 build: set images.vllm: "
                   f"{pins.VLLM_GPU_IMAGE.format(version=d.vllm_version)}{pins.CU129_SUFFIX} in the spec"
                   if major == 13 else f"upgrade the driver to >= {need}")
            lines.append(Line(False, "driver", f"driver {driver} is older than {need}, which {s.image} "
                              f"(CUDA {major}) needs for {s.name}.", fix + "."))
        elif need:
            lines.append(Line(True, "driver", f"driver {driver} runs {s.image} (CUDA {major}, needs >= {need})"))
    return lines


def _hub_size(s: Service) -> int | None:
    """Bytes of the model's files as its hub lists them; None when the hub cannot be asked."""
    src = s.source
    try:
        if src.kind == "hf":
            base = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
            url = f"{base}/api/models/{src.ref}/tree/{s.revision or 'main'}?recursive=true"
            with urllib.request.urlopen(url, timeout=5) as r:
                return sum(int(f.get("size") or 0) for f in json.load(r) if f.get("type") == "file")
        if src.kind == "modelscope":
            base = os.environ.get("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn").rstrip("/")
            url = f"{base}/api/v1/models/{src.ref}/repo/files?Revision={s.revision or 'master'}&Recursive=true"
            with urllib.request.urlopen(url, timeout=5) as r:
                files = json.load(r)["Data"]["Files"]
            return sum(int(f.get("Size") or 0) for f in files if f.get("Type") != "tree")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def check_disk(services: list[Service], info: dict) -> list[Line]:
    need, parts = 0, []
    for s in services:
        size = _hub_size(s)
        if size:
            parts.append(f"{s.name} {size / 1e9:.0f} GB (hub listing)")
        elif s.download_gb:
            size = int(s.download_gb * 1e9)
            parts.append(f"{s.name} ~{s.download_gb:g} GB (preset{'; hub not reachable' if s.source.is_hub else ''})")
        elif s.source.kind == "local" and Path(s.model).is_dir():
            size = sum(f.stat().st_size for f in Path(s.model).rglob("*") if f.is_file())
            parts.append(f"{s.name} {size / 1e9:.1f} GB (local copy)")
        else:
            parts.append(f"{s.name} size unknown")
        need += size or 0
    root = Path(info.get("DockerRootDir") or "/var/lib/docker")
    probe = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    detail = f"{free / 1e9:.0f} GB free at {root}; the weights take {need / 1e9:.1f} GB ({', '.join(parts)})"
    if need > free:
        return [Line(False, "disk", detail + ".", f"free {(need - free) / 1e9:.0f} GB there, or move Docker's "
                     "data-root (/etc/docker/daemon.json) to a larger disk. Weights already in the models "
                     "volume count as used.")]
    return [Line(True, "disk", detail)]


def check_ports(d: Deployment, services: list[Service]) -> list[Line]:
    lines = []
    # Behind a router the servers publish nothing; the router's port is the one to check.
    published = [(s.name, s.port) for s in services if s.port is not None]
    if d.router:
        published.append(("the router", d.router.port))
    for name, port in published:
        family = socket.AF_INET6 if ":" in d.bind_address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As servers do: connections in TIME_WAIT from earlier clients do not make a port "taken".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((d.bind_address, port))
                lines.append(Line(True, "port", f"{d.bind_address}:{port} free for {name}"))
            except OSError as e:
                lines.append(Line(False, "port", f"{d.bind_address}:{port} for {name} is taken ({e.strerror}).",
                                  "stop what listens there (or this stack: docker compose down), or set port: in the spec."))
    return lines


def check_env_file(d: Deployment, services: list[Service], folder: Path, spec_path: str) -> list[Line]:
    files = d.env_files()
    if not files:
        return [Line(True, "secrets", "no service or router asks for an API key")]
    render_cmd = f"python -m deploy render {spec_path} -o {folder / 'compose.yaml'} (creates it)"
    for name, names, _ in files:
        env = folder / name
        if not env.is_file():
            return [Line(False, "secrets", f"{env} is missing; compose refuses to start without it.", render_cmd + ".")]
        mode = stat.S_IMODE(env.stat().st_mode)
        if mode & 0o077:
            return [Line(False, "secrets", f"{env} has mode {mode:o}: others can read its keys.", f"chmod 600 {env}.")]
        try:
            _, entries = envfile.load(env)
        except envfile.EnvFileError as e:
            return [Line(False, "secrets", str(e))]
        if problems := envfile.check_keys(env, entries, names):  # an empty key: vLLM would serve anyone
            return [Line(False, "secrets", "; ".join(problems))]
        held = envfile.values(entries)
        for n in names:
            if n not in held:
                return [Line(False, "secrets", f"{env} holds no value for {n}.",
                             f"add `{n}=sk-<random>` to it (or remove it, then {render_cmd}).")]
    return [Line(True, "secrets", f"{', '.join(str(folder / f) for f, _, _ in files)} present, mode 600")]


def check_shm(services: list[Service]) -> list[Line]:
    tp = [s for s in services if s.device == "gpu" and s.gpu_count > 1]
    if not tp:
        return []
    try:
        total = shutil.disk_usage("/dev/shm").total
    except OSError:
        total = 0
    text = f"/dev/shm {total / 2**30:.0f} GiB (shared with the containers: ipc: host)"
    if total < 2**30:
        return [Line(False, "shm", text + f"; tensor parallel workers of {tp[0].name} exchange tensors there.",
                     "mount -o remount,size=16G /dev/shm (and in /etc/fstab).")]
    return [Line(True, "shm", text)]


def check_compose_file(d: Deployment, folder: Path, spec_path: str) -> list[Line]:
    path = folder / "compose.yaml"
    if not path.is_file():
        return [Line(False, "compose.yaml", f"{path} is missing.", f"python -m deploy render {spec_path} -o {path}.")]

    def body(text: str) -> str:
        # Comments and build contexts aside: the file may sit in another checkout than this package.
        return "\n".join(line for line in text.splitlines() if not line.startswith("#")
                         and not line.strip().startswith("context:"))

    if body(path.read_text(encoding="utf-8")) != body(compose.compose_yaml(d)):
        return [Line(False, "compose.yaml", f"{path} differs from what {spec_path} renders (edited, or the spec changed).",
                     f"python -m deploy render {spec_path} -o {path}.")]
    return [Line(True, "compose.yaml", f"{path} matches the spec")]


def check_gpu_memory(d: Deployment) -> list[Line]:
    """The memory plan (deploy/sharing.py) again with each GPU's real memory from nvidia-smi: what every service
    needs there against gpu_memory_utilization × what the GPU has, and memory already held by other processes
    (vLLM wants its fraction free at start-up). Without nvidia-smi, check_gpus has said so already."""
    if not any(s.device == "gpu" for s in d.services):
        return []
    code, out, _ = _run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,memory.used",
                         "--format=csv,noheader,nounits"])
    if code:
        return []
    total: dict[int, float] = {}
    used: dict[int, float] = {}
    for row in out.strip().splitlines():
        cells = [x.strip() for x in row.split(",")]
        try:
            total[int(cells[0])] = int(cells[2]) * 2**20 / 1e9  # MiB → GB (10^9 bytes, the plan's unit)
            used[int(cells[0])] = int(cells[4]) * 2**20 / 1e9 if len(cells) > 4 else 0.0
        except (ValueError, IndexError):
            return [Line(False, "gpu memory", f"cannot read nvidia-smi's memory column in {row[:80]!r}.",
                         "check that `nvidia-smi --query-gpu=index,memory.total --format=csv` works.")]
    p = sharing.plan(d, total)
    lines = [Line(False, "gpu memory", message.split(" Fix: ")[0] + f" ({path})", message.partition(" Fix: ")[2])
             for path, message in p.problems]
    for g in sorted(set(total) & {gp.gpu for gp in p.gpus}):
        if used[g] > 1:
            lines.append(Line(True, "gpu memory", f"GPU {g} already has {used[g]:.1f} GB in use (this stack, or "
                              "another process); vLLM needs its fraction free when it starts.", warn=True))
    if not p.problems:
        shown = "; ".join(f"GPU {gp.gpu} {gp.memory_gb:.1f} GB: " + ", ".join(
            f"{n.service} {'?' if n.need_gb is None else f'{n.need_gb:.1f}'}/{n.gets_gb:.1f} GB" for n in gp.needs)
            for gp in p.gpus)
        lines.append(Line(True, "gpu memory", f"needed/given per GPU (nvidia-smi's sizes): {shown or 'no GPU ids named'}"))
    return lines


def check_host_ram(d: Deployment, meminfo: Path = Path("/proc/meminfo")) -> list[Line]:
    """Level-1 sleep keeps a sleeping server's weights in pinned host RAM, and every server's processes hold some of
    their own: for each group taking turns, the most it holds at once (sharing.host_ram) against this host's
    memory."""
    groups = sharing.host_ram(d)
    if not groups:
        return []
    try:
        info = {k: int(v.split()[0]) * 1024 / 1e9 for k, _, v in
                (line.partition(":") for line in meminfo.read_text().splitlines()) if v.strip()}
        have, free = info["MemTotal"], info.get("MemAvailable", info["MemTotal"])
    except (OSError, ValueError, KeyError, IndexError):
        return [Line(False, "host ram", f"cannot read {meminfo}.", "run doctor on the Linux host of the stack.")]
    lines = []
    for g, need in groups:
        who = ", ".join(g.members)
        if need is None:
            lines.append(Line(True, "host ram", f"{g.name} ({who}): a member's weights' size is not known, so the host "
                              "RAM their level-1 sleep needs cannot be checked.", warn=True))
        elif need > have:
            fix = ("set sleep_level: 2 on the group's services (weights dropped, reloaded from disk on wake: "
                   "slower), or add RAM." if g.sleep_level == 1 else "add RAM, or run fewer models on this host.")
            lines.append(Line(False, "host ram", f"{g.name} ({who}) needs up to {need:g} GB of host RAM "
                              f"(sleeping weights at level {g.sleep_level}, and the servers' own); this host has "
                              f"{have:.0f} GB.", fix))
        elif need > free:
            lines.append(Line(True, "host ram", f"{g.name} ({who}) needs up to {need:g} GB of host RAM "
                              f"(level {g.sleep_level}); "
                              f"{free:.0f} GB of {have:.0f} GB are free now.", warn=True))
        else:
            lines.append(Line(True, "host ram", f"{g.name} ({who}): up to {need:g} GB of host RAM "
                              f"(level {g.sleep_level}); {have:.0f} GB here, {free:.0f} GB free"))
    return lines


IMAGE_VARIABLES = ("VLLM_COMPOSE_BASE_IMAGE", "VLLM_COMPOSE_VLLM_IMAGE")  # compose variables naming base images


def check_images(d: Deployment, folder: Path) -> list[Line]:
    """Every image the stack pulls or builds on, from the spec and from the environment (or the folder's .env,
    which compose reads): a moving tag is a warning, with the fix."""
    refs = {f"images.{role}": ref for role, ref in d.images}
    dotenv = folder / ".env"
    try:
        env = {**(envfile.read(dotenv) if dotenv.is_file() else {}), **os.environ}
    except envfile.EnvFileError as e:
        return [Line(False, "images", str(e))]
    refs |= {var: env[var] for var in IMAGE_VARIABLES if env.get(var)}
    lines = [Line(True, "images", f"{where} = {ref} {why}.", "pin a version or a digest (REPOSITORY@sha256:…).", warn=True)
             for where, ref in refs.items() if (why := floating(ref))]
    return lines or [Line(True, "images", f"{len(refs)} image reference(s), each pinned to a version or digest")]


def main(d: Deployment, names: list[str] | None, folder: Path, spec_path: str) -> int:
    if names:
        unknown = [n for n in names if n not in {s.name for s in d.services}]
        if unknown:
            print(f"doctor: no service {', '.join(unknown)}; the spec has {', '.join(s.name for s in d.services)}.")
            return 1
        services = [d.service(n) for n in names]
    else:
        services = [s for s in d.services if not s.profiles]
    print(f"doctor: {spec_path}, vLLM {d.vllm_version}, services: {', '.join(s.name for s in services) or 'none'}")
    lines, info = check_docker()
    if info:
        lines += check_compose()
    lines += check_gpus(d, services, info)
    lines += check_disk(services, info)
    lines += check_ports(d, services)
    lines += check_env_file(d, services, folder, spec_path)
    lines += check_shm(services)
    lines += check_compose_file(d, folder, spec_path)
    lines += check_images(d, folder)
    lines += check_gpu_memory(d) + check_host_ram(d)
    for line in lines:
        print(line)
    bad = sum(not line.ok for line in lines)
    print(f"doctor: {bad} problem(s)" + ("; fix them, then run doctor again." if bad else "; ready for `docker compose up`."))
    return 1 if bad else 0
