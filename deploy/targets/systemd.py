"""The systemd target: the stack's containers as units, for hosts where Docker is not allowed.

Each container description (deploy/container.py) becomes a unit running the same argv with the host's Python (where
vLLM and this package are installed: --python), in a mount namespace of its own that puts the same files at the same
paths: the model and compile-cache folders under --state-dir are bound at /models and /cache/vllm, the runtime scripts
and generated files (under --prefix, where this folder is installed) at theirs. So the argv, the environment and the
paths are the container's; only --host/--port become the published address, since a host has no port mapping.

- NAME-fetch.service: the download, once (Type=oneshot, RemainAfterExit); the server Requires= and is After= it.
- NAME.service: the server (Restart=always, TimeoutStopSec the drain + margin, GPUs as CUDA_VISIBLE_DEVICES,
  EnvironmentFile= for the env files it reads, mode 0600, beside the units).
- NAME-health.service + .timer: the healthcheck (deploy/runtime/liveness.py) on its schedule; a hung engine is
  killed by it and the server restarts. On a host the check sees every process, so it is told the server's cgroup
  and kills only the engines in it.

What it cannot express — the router, monitoring, batch jobs, several services on one port — it refuses with the fix
(`--drop FEATURE` leaves a feature out on request, and every file's header says so).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from .. import container, runtime
from ..container import Container
from ..resolve import Deployment
from ..write import shown
from . import Rendered, Request, TargetError, drop_flags, header

NAME = "systemd"
HELP = "systemd units for a host without Docker (one folder: units, env files, scripts)"
DROPPABLE = ("batch", "monitoring", "router")
OUTPUT = "folder"
PYTHON = "/usr/bin/python3"
STATE_DIR = "/var/lib/vllm-compose"
PREFIX = "/etc/vllm-compose"


def options(group) -> None:
    group.add_argument("--python", default=PYTHON, metavar="PATH",
                       help=f"systemd: the Python with vLLM and this package installed (default: {PYTHON})")
    group.add_argument("--state-dir", default=STATE_DIR, metavar="DIR",
                       help=f"systemd: where the weights and the compile cache live (default: {STATE_DIR})")
    group.add_argument("--prefix", default=PREFIX, metavar="DIR",
                       help=f"systemd: where this output folder is installed (default: {PREFIX})")


def _quote(arg: str) -> str:
    """One argument of ExecStart=: double-quoted, with systemd's specifiers (%) and variables ($) kept literal."""
    if any(ord(ch) < 32 for ch in arg):
        raise TargetError(f"the argument {shown(arg)[:60]!r} holds a control character, which a unit file cannot carry. "
                          "Fix: remove it from the spec.")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def _env_line(name: str, value: str) -> str:
    return f"Environment={_quote(f'{name}={value}')}"


def _absolute(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts:
        raise TargetError(f"--{what} {shown(path)[:60]!r} must be an absolute path. Fix: such as "
                          f"{STATE_DIR if what == 'state-dir' else PREFIX}.")
    return str(p)


def _host_argv(c: Container, d: Deployment, python: str) -> list[str]:
    """The container's argv with the host's Python, and a server bound where compose would publish it."""
    # Every `python3` of the entrypoint (a keyed server's start script execs a second one) is the host's Python.
    argv = [python if a == "python3" else a for a in c.entrypoint] + list(c.args)
    if c.role == "server":
        host, port = argv.index("--host"), argv.index("--port")
        argv[host + 1], argv[port + 1] = d.bind_address, str(c.published)
    return argv


def _unit(d: Deployment, c: Container, o: dict[str, str]) -> str:
    state, prefix = o["state_dir"], o["prefix"]
    lines = ["[Unit]", f"Description=vllm-compose {c.role} {c.service}"]
    for name, condition in c.after:
        lines += [f"{'Wants' if condition == 'started-if-enabled' else 'Requires'}={name}.service", f"After={name}.service"]
    lines += ["", "[Service]"]
    if c.role == "fetch":
        lines += ["Type=oneshot", "RemainAfterExit=yes"]
    else:
        lines += ["Type=exec"]
    lines += [f"User={_uid(c)}", "Group=0"]
    volumes = {"models": f"{state}/models", "compile_cache": f"{state}/cache"}
    for m in c.mounts:
        if m.kind == "volume":
            source = volumes[m.source]
        elif m.kind == "script":
            source = f"{prefix}/scripts/{m.source}"
        else:
            source = m.source if m.source.startswith("/") else f"{state}/{PurePosixPath(m.source)}"
        lines.append(f"{'BindReadOnlyPaths' if m.read_only else 'BindPaths'}={_quote(f'{source}:{m.target}')}")
    for f in c.files:
        lines.append(f"BindReadOnlyPaths={_quote(f'{prefix}/files/{f.name}:{f.target}')}")
    for f, required in c.env_files:
        lines.append(f"EnvironmentFile={'' if required else '-'}{prefix}/{f}")
    env = dict(c.env)
    if c.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, c.gpu_ids if c.gpu_ids is not None else range(c.gpus)))
    if c.role == "server":
        env["VLLM_COMPOSE_PORT"] = str(c.published)  # where liveness.py finds it
    lines += [_env_line(k, v) for k, v in env.items()]
    lines.append("ExecStart=" + " ".join(_quote(a) for a in _host_argv(c, d, o["python"])))
    if c.restarts:
        lines += ["Restart=always", "RestartSec=5"]
    if c.stop_grace is not None:
        lines.append(f"TimeoutStopSec={c.stop_grace}")
    if c.probe is not None:
        lines.append(f"TimeoutStartSec={c.probe.start_period}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _health(c: Container, o: dict[str, str]) -> tuple[str, str]:
    """The healthcheck as a oneshot service and a timer on the probe's schedule."""
    assert c.probe is not None
    p = c.probe
    prefix = o["prefix"]
    argv = [o["python"] if p.command[0] == "python3" else p.command[0], *p.command[1:]]
    binds = [f"BindReadOnlyPaths={_quote(f'{prefix}/scripts/{m.source}:{m.target}')}" for m in c.mounts if m.kind == "script"]
    service = "\n".join([
        "[Unit]", f"Description=vllm-compose healthcheck of {c.service}", f"Requisite={c.name}.service",
        f"After={c.name}.service", "", "[Service]", "Type=oneshot", f"User={_uid(c)}", "Group=0", *binds,
        *[f"EnvironmentFile={prefix}/{f}" for f, required in c.env_files if required],
        _env_line("VLLM_COMPOSE_PORT", str(c.published)),
        _env_line("VLLM_COMPOSE_ENGINE_CGROUP", f"/system.slice/{c.name}.service"),
        # Its strikes outlive each run (a private /tmp would not).
        "StateDirectory=vllm-compose-health", _env_line("VLLM_COMPOSE_LIVENESS_STATE", f"/var/lib/vllm-compose-health/{c.name}.json"),
        "ExecStart=" + " ".join(_quote(a) for a in argv), f"TimeoutStartSec={p.timeout}", ""])
    timer = "\n".join([
        "[Unit]", f"Description=vllm-compose healthcheck of {c.service}, every {p.interval} s", "", "[Timer]",
        f"OnActiveSec={p.start_period}", f"OnUnitActiveSec={p.interval}", "AccuracySec=1s", "", "[Install]",
        f"WantedBy={c.name}.service", ""])
    return service, timer


def _uid(c: Container) -> str:
    """Every unit runs as the servers' uid (the fetch fills the folders the server reads)."""
    return (c.user or container.SERVER_USER).partition(":")[0]


def render(d: Deployment, request: Request) -> Rendered:
    o = {"python": request.options.get("python", PYTHON), "state_dir": request.options.get("state_dir", STATE_DIR),
         "prefix": request.options.get("prefix", PREFIX)}
    problems = []
    try:
        o["python"] = _absolute(o["python"], "python")
        o["state_dir"], o["prefix"] = _absolute(o["state_dir"], "state-dir"), _absolute(o["prefix"], "prefix")
    except TargetError as e:
        problems.append(str(e))
    for feature, present in (("router", d.router is not None), ("monitoring", d.monitoring_port is not None),
                             ("batch", any(s.batch for s in d.services))):
        if present and feature not in request.drop:
            problems.append(f"{feature}: the systemd target does not render it yet. Fix: pass --drop {feature} (the "
                            "other units still render), or use --target compose.")
    if d.router is not None and "router" in request.drop:
        problems.append("router: with it dropped its servers would publish no port. Fix: remove `router:` from the "
                        "spec for this target.")
    ports: dict[int | None, str] = {}
    for s in d.services:
        if s.port in ports:
            problems.append(f"services.{s.name}.port: {s.port} is also {ports[s.port]}'s, and a host has one port "
                            "space. Fix: give each service its own port.")
        ports.setdefault(s.port, s.name)
    containers = container.containers(d, jobs=False, routed=False, watched=False)
    texts: dict[str, str] = {}
    if not problems:
        try:
            for c in containers:
                texts[f"{c.name}.service"] = _unit(d, c, o)
                if c.probe is not None:
                    texts[f"{c.name}-health.service"], texts[f"{c.name}-health.timer"] = _health(c, o)
        except TargetError as e:
            problems.append(str(e))
    if problems:
        raise TargetError("\n".join(problems))
    head = header(request.spec, f"--target systemd{drop_flags(request.drop)} -o {shown(request.output or 'DIR')}",
                  request.drop)
    files = {name: head + text for name, text in texts.items()}
    scripts = sorted({m.source for c in containers for m in c.mounts if m.kind == "script"})
    for name in scripts:  # Python reads the header as comments
        files[f"scripts/{name}"] = head + runtime.script_text(name)
    for c in containers:
        for f in c.files:
            files[f"files/{f.name}"] = f.content
    units = sorted(texts)
    out, prefix, state = request.output or "DIR", o["prefix"], o["state_dir"]
    linked = " ".join(f"{prefix}/{u}" for u in units)
    started = " ".join(u for u in units if not u.endswith(("-fetch.service", "-health.service")))
    note = (f"wrote {len(texts)} unit(s) to {out}. Install: sudo cp -rT {out} {prefix} && sudo mkdir -p {state}/models "
            f"{state}/cache && sudo chown -R {container.SERVER_USER} {state} && sudo systemctl link {linked} && sudo "
            f"systemctl enable --now {started}")
    return Rendered(files, env_files=True, notes=(note,))
