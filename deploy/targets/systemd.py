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
- router.service, when the spec has a router: the router container's entrypoint (router_start.py, with the host's
  Python) and its HAProxy config at their container paths, run with Debian's haproxy (`apt-get install haproxy`, the
  package the router image installs). It starts as root like the container (to read the TLS files, make the
  self-signed pair in --state-dir/tls), writes the keys' hashes into its own runtime folder /run/router and runs
  HAProxy as the user `router`; a preflight names the fix when haproxy, that user or (self-signed TLS) the Python
  cryptography package is missing. With no network of containers, the servers behind it listen on 127.0.0.1 from
  --server-port on (one port each, in spec order), and haproxy.cfg names them there (`placement`, below); the
  router binds the stack's bind address on router.port. Stopped with HAProxy's soft stop (SIGUSR1) and the router's
  grace, like the container.

What it cannot express — monitoring, batch jobs, services taking turns on GPUs (the turn-taking controller), several
services on one port — it refuses with the fix (`--drop FEATURE` leaves monitoring or jobs out on request, and every
file's header says so).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from .. import container, numbers, router, runtime, swap_service
from ..container import Container
from ..facts import ROUTER_RUN_DIR, SERVER_PORT, fetch_name
from ..resolve import Deployment
from ..runtime import router_start
from ..write import shown
from . import Rendered, Request, TargetError, drop_flags, header

NAME = "systemd"
HELP = "systemd units for a host without Docker (one folder: units, env files, scripts)"
DROPPABLE = ("batch", "monitoring")
OUTPUT = "folder"
PYTHON = "/usr/bin/python3"
STATE_DIR = "/var/lib/vllm-compose"
PREFIX = "/etc/vllm-compose"
SERVER_PORTS = SERVER_PORT  # behind the router: the first server's port on 127.0.0.1, the others the next ones


def options(group) -> None:
    group.add_argument("--python", default=PYTHON, metavar="PATH",
                       help=f"systemd: the Python with vLLM and this package installed (default: {PYTHON})")
    group.add_argument("--state-dir", default=STATE_DIR, metavar="DIR",
                       help=f"systemd: where the weights and the compile cache live (default: {STATE_DIR})")
    group.add_argument("--prefix", default=PREFIX, metavar="DIR",
                       help=f"systemd: where this output folder is installed (default: {PREFIX})")
    group.add_argument("--server-port", type=_port, default=None, metavar="N",
                       help="systemd: behind the router, the servers listen on 127.0.0.1 from this port on, one each in "
                            f"spec order (default: {SERVER_PORTS})")


def _port(text: str) -> int:
    import argparse

    if (n := numbers.whole(text, 1, 65535)) is None:
        raise argparse.ArgumentTypeError(f"{shown(text)[:20]!r} is not a port. Fix: a whole number from 1 to 65535, "
                                         f"such as {SERVER_PORTS}")
    return n


def _quote(arg: str) -> str:
    """One argument of ExecStart=: double-quoted, with systemd's specifiers (%) and variables ($) kept literal."""
    if any(ord(ch) < 32 for ch in arg):
        raise TargetError(f"the argument {shown(arg)[:60]!r} holds a control character, which a unit file cannot carry. "
                          "Fix: remove it from the spec.")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def _env_line(name: str, value: str) -> str:
    return f"Environment={_quote(f'{name}={value}')}"


# A path the units name: `:` separates BindPaths= source from target, whitespace separates list items, `%` starts
# a specifier, quotes and backslashes are unquoted differently by each directive, and the install note is a shell line.
PATH_RE = re.compile(r"[A-Za-z0-9/._+@-]+")


def _absolute(path: str, what: str) -> str:
    p = PurePosixPath(path)
    example = {"python": PYTHON, "state-dir": STATE_DIR, "prefix": PREFIX}[what]
    if not p.is_absolute() or ".." in p.parts:
        raise TargetError(f"--{what} {shown(path)[:60]!r} must be an absolute path. Fix: such as {example}.")
    if not PATH_RE.fullmatch(str(p)):
        raise TargetError(f"--{what} {shown(path)[:60]!r} holds a character a unit file or the install line would read "
                          "differently (a space, ':', '%', '$', a quote, a backslash, a control or non-ASCII "
                          f"character). Fix: a path of letters, digits and / . _ + @ -, such as {example}.")
    if what != "python" and len(p.parts) < 3:  # `cp -rT DIR /etc` would spread the units and env files over /etc
        raise TargetError(f"--{what} {shown(path)[:60]!r} is not a folder of its own; the install copies the units and "
                          f"env files into it (or the weights, for --state-dir). Fix: such as {example}.")
    return str(p)


def host_ports(d: Deployment, first: int = SERVER_PORTS) -> dict[str, int]:
    """Each server's port on the host: the spec's, or behind the router (which publishes the only port) FIRST, FIRST+1,
    ... in spec order, on 127.0.0.1."""
    if d.router is None:
        return {s.name: s.port for s in d.services if s.port is not None}
    return {s.name: first + i for i, s in enumerate(d.services)}


def placement(d: Deployment, ports: dict[str, int]) -> router.Placement:
    """The router on a host: no network of containers, so no resolver; each server at 127.0.0.1 on its port (PORTS),
    the router bound at the stack's bind address on router.port, as compose publishes it."""
    assert d.router is not None
    bind = f"[{d.bind_address}]" if ":" in d.bind_address else d.bind_address
    return router.Placement(server=lambda s: f"127.0.0.1:{ports[s.name]}",
                            look=lambda servers: f"systemctl status {' '.join(f'{s.name}.service' for s in servers)}",
                            logs="systemctl status SERVICE; journalctl -u SERVICE", bind=f"{bind}:{d.router.port}")


def _host_argv(c: Container, d: Deployment, python: str, ports: dict[str, int]) -> list[str]:
    """The container's argv with the host's Python, and a server bound where compose would publish it (behind the
    router: on 127.0.0.1, where only the host's own processes reach it)."""
    # Every `python3` of the entrypoint (a keyed server's start script execs a second one) is the host's Python.
    argv = [python if a == "python3" else a for a in c.entrypoint] + list(c.args)
    if c.role == "server":
        host, port = argv.index("--host"), argv.index("--port")
        argv[host + 1] = "127.0.0.1" if d.router is not None else d.bind_address
        argv[port + 1] = str(ports[c.service])
    return argv


def _preflight(d: Deployment) -> str:
    """The router unit's ExecStartPre (the host's Python): what router_start.py needs from the host and a container
    has, each missing one named with its fix, instead of a traceback from the exec or the user lookup."""
    user = router_start.USER
    checks = ["shutil.which('haproxy') or sys.exit('router: HAProxy is not installed on this host (the router runs "
              "Debian haproxy, as its image does). Fix: sudo apt-get install haproxy')",
              f"any(p.pw_name == '{user}' for p in pwd.getpwall()) or sys.exit('router: this host has no user {user}, "
              f"which HAProxy runs as. Fix: sudo useradd --system --no-create-home --shell /usr/sbin/nologin {user}')"]
    if d.router is not None and d.router.tls is not None and not d.router.tls.cert:
        checks.append("importlib.util.find_spec('cryptography') or sys.exit('router: this Python cannot import "
                      "cryptography, which makes the self-signed certificate. Fix: sudo apt-get install "
                      "python3-cryptography, or pip install cryptography into --python')")
    return "; ".join(["import importlib.util, pwd, shutil, sys", *checks])


def _unit(d: Deployment, c: Container, o: dict, ports: dict[str, int]) -> str:
    state, prefix = o["state_dir"], o["prefix"]
    lines = ["[Unit]", f"Description=vllm-compose {c.role} {c.service}"]
    for name, condition in c.after:
        lines += [f"{'Wants' if condition == 'started-if-enabled' else 'Requires'}={name}.service", f"After={name}.service"]
    lines += ["", "[Service]"]
    if c.role == "fetch":
        lines += ["Type=oneshot", "RemainAfterExit=yes"]
    else:
        lines += ["Type=exec"]
    if c.role == "router":
        # As the container: root only to read the TLS files and make the self-signed pair; router_start.py then
        # runs HAProxy as its user, with the keys' hashes in a runtime folder of its own (removed at the stop).
        assert ROUTER_RUN_DIR.startswith("/run/")
        lines += [f"RuntimeDirectory={ROUTER_RUN_DIR.removeprefix('/run/')}", "RuntimeDirectoryMode=0700"]
    else:
        lines += [f"User={_uid(c)}", "Group=0"]
    volumes = {"models": f"{state}/models", "compile_cache": f"{state}/cache"}
    for m in c.mounts:
        if m.kind == "volume":
            source = volumes[m.source]
        elif m.kind == "script":
            source = f"{prefix}/scripts/{m.source}"
        else:
            source = m.source if m.source.startswith("/") else f"{state}/{PurePosixPath(m.source)}"
            if ":" in source:  # BindPaths= reads it as the separator, quoted or not
                raise TargetError(f"the {m.role} path {shown(source)[:60]!r} of {c.service} holds ':', which a unit "
                                  "cannot bind. Fix: rename it, or point the spec at a path without ':'.")
        lines.append(f"{'BindReadOnlyPaths' if m.read_only else 'BindPaths'}={_quote(f'{source}:{m.target}')}")
    for f in c.files:
        lines.append(f"BindReadOnlyPaths={_quote(f'{prefix}/files/{f.name}:{f.target}')}")
    for f, required in c.env_files:
        lines.append(f"EnvironmentFile={'' if required else '-'}{prefix}/{f}")
    env = dict(c.env)
    if c.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, c.gpu_ids if c.gpu_ids is not None else range(c.gpus)))
    if c.role == "server":
        env["VLLM_COMPOSE_PORT"] = str(ports[c.service])  # where liveness.py finds it
    lines += [_env_line(k, v) for k, v in env.items()]
    if c.role == "router":
        lines.append("ExecStartPre=" + " ".join(_quote(a) for a in (o["python"], "-c", _preflight(d))))
    lines.append("ExecStart=" + " ".join(_quote(a) for a in _host_argv(c, d, o["python"], ports)))
    if c.restarts:
        lines += ["Restart=always", "RestartSec=5"]
    if c.stop_signal is not None:
        lines.append(f"KillSignal={c.stop_signal}")
    if c.stop_grace is not None:
        lines.append(f"TimeoutStopSec={c.stop_grace}")
    if c.probe is not None:
        lines.append(f"TimeoutStartSec={c.probe.start_period}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _health(c: Container, o: dict, port: int) -> tuple[str, str]:
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
        _env_line("VLLM_COMPOSE_PORT", str(port)),
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


def _unit_names(d: Deployment) -> list[str]:
    """A spec service whose unit is another's generated unit (a service `a-health` beside `a`), each with the fix."""
    owners: dict[str, tuple[str, str]] = {}
    problems = []
    for s in d.services:
        for unit, what in ((s.name, "server"), (fetch_name(s.name), "download"), (f"{s.name}-health", "healthcheck")):
            owner, theirs = owners.setdefault(unit, (s.name, what))
            if owner != s.name:
                problems.append(f"services.{s.name}: its {what} unit {unit}.service is also the {theirs} unit of "
                                f"{owner!r}. Fix: rename one of them.")
    return problems


def render(d: Deployment, request: Request) -> Rendered:
    o = {"python": request.options.get("python", PYTHON), "state_dir": request.options.get("state_dir", STATE_DIR),
         "prefix": request.options.get("prefix", PREFIX)}
    first = request.options.get("server_port") or SERVER_PORTS
    problems = []
    if d.router is None and request.options.get("server_port") is not None:
        problems.append(f"--server-port {first}: it places the servers behind a router, and this spec has none: each "
                        "server listens on its own services.NAME.port. Fix: leave out --server-port, or add a `router:` "
                        "section to the spec.")
    for key in ("python", "state_dir", "prefix"):
        try:
            o[key] = _absolute(o[key], key.replace("_", "-"))
        except TargetError as e:
            problems.append(str(e))
    for feature, present in (("monitoring", d.monitoring_port is not None), ("batch", any(s.batch for s in d.services))):
        if present and feature not in request.drop:
            problems.append(f"{feature}: the systemd target does not render it (the router and the servers it does). "
                            f"Fix: pass --drop {feature} (the other units still render), or use --target compose.")
    if turns := swap_service.groups(d):
        names = ", ".join(m for g in turns for m in g.members)
        problems.append(f"services ({names}) take turns on shared GPUs, and the systemd target does not render the "
                        "turn-taking controller. Fix: give each service GPUs of its own (or enough memory to run side "
                        "by side), or use --target compose.")
    ports = host_ports(d, first)
    if d.router is not None:
        last = first + len(d.services) - 1
        if last > 65535:
            problems.append(f"--server-port {first}: the {len(d.services)} servers behind the router need ports "
                            f"{first}-{last}, past 65535. Fix: a lower --server-port, such as {SERVER_PORTS}.")
        elif first <= d.router.port <= last:
            problems.append(f"router.port {d.router.port} is among the ports of the servers behind it on this host "
                            f"({first}-{last}, from --server-port). Fix: --server-port {max(d.router.port + 1, SERVER_PORTS)}, "
                            "or another router.port.")
    else:
        seen: dict[int, str] = {}
        for s in d.services:
            if s.port in seen:
                problems.append(f"services.{s.name}.port: {s.port} is also {seen[s.port]}'s, and a host has one port "
                                "space. Fix: give each service its own port.")
            seen.setdefault(s.port, s.name)
    problems += _unit_names(d)
    containers = container.containers(d, jobs=False, routed=False, watched=False)
    if d.router is not None and not problems:
        containers.append(container.router_container(d, placement(d, ports)))
    texts: dict[str, str] = {}
    if not problems:
        try:
            for c in containers:
                texts[f"{c.name}.service"] = _unit(d, c, o, ports)
                if c.role == "server" and c.probe is not None:
                    texts[f"{c.name}-health.service"], texts[f"{c.name}-health.timer"] = _health(c, o, ports[c.service])
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
        for f in c.files:  # the router's: HAProxy reads `#` lines of its config and maps as comments
            files[f"files/{f.name}"] = head + f.content
    units = sorted(texts)
    out, prefix, state = request.output or "DIR", o["prefix"], o["state_dir"]
    linked = " ".join(f"{prefix}/{u}" for u in units)
    started = " ".join(u for u in units if not u.endswith(("-fetch.service", "-health.service")))
    tls = [f"{state}/{PurePosixPath(m.source)}" for c in containers for m in c.mounts if m.create]
    note = (f"wrote {len(texts)} unit(s) to {out}. Install: sudo cp -rT {out} {prefix} && sudo mkdir -p {state}/models "
            # Only the servers' folders become their uid's: the router's TLS folder (its CA key) stays root's.
            f"{state}/cache && sudo chown -R {container.SERVER_USER} {state}/models {state}/cache && "
            + "".join(f"sudo install -d -m 0700 {x} && " for x in tls)
            + f"sudo systemctl link {linked} && sudo systemctl enable --now {started}")
    notes = [note]
    for c in containers:  # the spec's relative host paths: compose reads them beside compose.yaml, a unit here
        for m in c.mounts:
            if m.kind == "host" and not m.create and not m.source.startswith("/"):
                notes.append(f"{c.service}'s {m.role} {shown(m.source)} is read at {state}/{PurePosixPath(m.source)} "
                             "on the host: put it there before the start")
    if d.router is not None:
        user = router_start.USER
        notes.append(f"the router unit runs Debian's HAProxy as the user {user}, on {shown(d.bind_address)}:"
                     f"{d.router.port}; its servers listen on 127.0.0.1:{first}"
                     f"{f'-{first + len(d.services) - 1}' if len(d.services) > 1 else ''}. Before "
                     f"enabling it: sudo apt-get install haproxy && (id -u {user} >/dev/null 2>&1 || sudo useradd "
                     f"--system --no-create-home --shell /usr/sbin/nologin {user})")
        if d.router.port < 1024:  # in a container the port is mapped; here HAProxy binds it after dropping root
            notes.append(f"warning: router.port {d.router.port} is below 1024, which HAProxy, running as {user}, cannot "
                         "bind on a host by default. Fix: a router.port from 1024 up, or allow it on this host: sudo "
                         f"sysctl -w net.ipv4.ip_unprivileged_port_start={d.router.port} (and in /etc/sysctl.d/)")
    # Only the env files a unit reads (grafana.env not, with monitoring dropped).
    return Rendered(files, env_files=frozenset(f for c in containers for f, _ in c.env_files), notes=tuple(notes))
