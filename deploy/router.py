"""The router: HAProxy (Debian's 2.6) in front of every server, configured from the deployment.

Why HAProxy: docs/router-evaluation.md (measured side by side with LiteLLM and vLLM's own router). It reads
the request's JSON `model` (the whole body is buffered, so `model` may come after multi-MB images), checks
the client's key against SHA-256 hashes, and sends the request on unchanged to a server serving that name;
several servers with one name are replicas, balanced by the spec's policy. Answers, streamed or not, come
back untouched (vLLM's own fields, `reasoning` included). Every refusal is OpenAI-style JSON.

What is rendered here names no key: haproxy.cfg (reads VLLM_API_KEY from the environment when it starts,
which it sends the servers) and three maps (served name → backend, KEY_NAME/model pairs allowed, and each key's
/v1/models answer). deploy/runtime/router_start.py checks the keys at start, writes the map of their SHA-256 hashes
into the container's own /run/router and execs HAProxy as an unprivileged user.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable

from . import swap_service
from .facts import ROUTER_CONFIG_DIR, ROUTER_PORT, ROUTER_RUN_DIR, ROUTER_TLS_DIR, SERVER_PORT, SWAP, SWAP_KEY, SWAP_PORT
from .resolve import Deployment, Service

CONFIGS = ("haproxy.cfg", "backends.map", "scopes.map", "models.map", "lists.map")
HEALTH = "/health"  # answered by the router itself

# The spec's policy (spec.ROUTING_POLICIES) → HAProxy's `balance` algorithm across the servers of one served name.
POLICIES = {
    "leastconn": "leastconn",  # the fewest requests in flight: LLM requests vary a lot in length
    "roundrobin": "roundrobin",
    "random": "random(1)",  # a uniform choice (HAProxy's default random(2) is power-of-two, i.e. leastconn-like)
}

# The whole request body must sit in one buffer to route on `model` (option http-buffer-request): 64 MiB
# buffers, allocated per request as needed (an idle router holds ~15 MiB).
BUFSIZE = 64 << 20
MAXREWRITE = 1 << 16
BODY_LIMIT = 60 << 20  # fits beside the headers; larger gets 413 naming it
TIMEOUT = "30m"  # a server silent this long (no token, streamed or not) is given up on: 504
_BACKEND_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> str:
    """An OpenAI-style error body, as one line of JSON."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code or status}},
                      separators=(",", ":"))


def _quoted(text: str) -> str:
    """TEXT as a double-quoted HAProxy argument (no environment variable expanded in it)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _lf(text: str) -> str:
    """A log-format (lf-string) argument: % doubled, then quoted. The %[...] samples are added after this."""
    return _quoted(text.replace("%", "%%"))


def backends(d: Deployment) -> dict[str, str]:
    """Served name → HAProxy backend name (its Prometheus `proxy` label): the name itself where HAProxy allows it."""
    out: dict[str, str] = {}
    for served in dict.fromkeys(s.served_name for s in d.services):
        name = _BACKEND_CHARS.sub("_", served)
        while name in out.values():
            name += "_"
        out[served] = name
    return out


def _scopes(d: Deployment) -> list[tuple[str, list[str]]]:
    assert d.router is not None
    served = list(backends(d))
    return [(name, served if scope == "*" else list(scope)) for name, scope in d.router.keys]


def maps(d: Deployment) -> dict[str, str]:
    """The map files, by file name. Keys: variable names only; the hashes of their values are made at start."""
    scopes = _scopes(d)
    lengths = {s.served_name: s.max_model_len for s in d.services}

    def entry(name: str) -> dict:
        e = {"id": name, "object": "model", "created": 0, "owned_by": "vllm"}
        if isinstance(lengths[name], int):
            e["max_model_len"] = lengths[name]  # what the spec sets; else the server's own default, unknown here
        return e

    return {
        "backends.map": "".join(f"{served} {b}\n" for served, b in backends(d).items()),
        "scopes.map": "".join(f"{key}/{model} 1\n" for key, models in scopes for model in models),
        "models.map": "".join(f"{key} {json.dumps({'object': 'list', 'data': [entry(m) for m in models]}, separators=(',', ':'))}\n"
                              for key, models in scopes),
        # Inside a JSON string of the error answers: served names need no escaping (spec.SERVED_NAME_RE).
        "lists.map": "".join(f"{key} {', '.join(models)}\n" for key, models in scopes),
    }


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a target puts the router: how HAProxy reaches each server, where it binds, which DNS (if any) follows
    the servers, and what a user runs to look at them. Each target hands one to container.router_container;
    compose's network of containers (NETWORK) is the default."""
    server: Callable[[Service], str]  # a server's address:port on its `server` line
    look: Callable[[list[Service]], str]  # the command showing those servers (a model's 503 names it)
    logs: str  # where a crashed server's story is (the 502 names it)
    bind: str = f":{ROUTER_PORT}"
    resolver: str = ""  # the `resolvers` section that follows the servers at run time; "" for fixed addresses
    dns: tuple[str, ...] = ()  # that section: a comment, then its lines

    def __post_init__(self) -> None:
        assert not self.resolver or len(self.dns) >= 2, "a resolver's section: a comment, then at least one line"


# Compose: Docker's DNS follows servers that start, restart (new address) or stop, by their service names.
NETWORK = Placement(
    server=lambda s: f"{s.name}:{SERVER_PORT}",
    look=lambda servers: f"docker compose ps {' '.join(s.name for s in servers)}",
    logs="docker compose ps; docker compose logs SERVICE",
    resolver="docker",
    dns=("# Docker's DNS: servers that start later, restart with a new address or stop are followed at run time.",
         "  nameserver dns 127.0.0.11:53"))


def haproxy_cfg(d: Deployment, at: Placement = NETWORK) -> str:
    """The router's HAProxy config, placed AT (Placement: compose's network by default)."""
    assert d.router is not None
    r = d.router
    c = ROUTER_CONFIG_DIR
    behind = swap_service.members(d)  # services taking turns: reached through the controller
    # With turns, GET /v1/models is the controller's (it adds each member's state): the rules after it skip it.
    skip = " !{ var(txn.models) -m found }" if behind else ""
    var = "%[var(txn.model),bytes(0,100),json(utf8s)]"  # the client's model, cut and escaped for JSON
    names = f"%[var(txn.keyname),map({c}/lists.map)]"
    bind = f"bind {at.bind}" + (f" ssl crt {ROUTER_RUN_DIR}/router.pem ssl-min-ver TLSv1.2" if r.tls else "")
    lines = [
        "# Rendered by vllm-deploy from the spec's `router:` section (deploy/router.py). HAProxy 2.6, Debian bookworm.",
        "global",
        "  log stdout format raw local0 info",
        "  maxconn 8192",
        f"  tune.bufsize {BUFSIZE}",
        f"  tune.maxrewrite {MAXREWRITE}",
        "",
        *([at.dns[0], f"resolvers {at.resolver}", *at.dns[1:], "  hold valid 10s", "  hold nx 1s", "  hold other 1s", ""]
          if at.resolver else []),
        "defaults",
        "  mode http",
        "  log global",
        # One JSON line per request: the key's variable name (never the key), the model, status, milliseconds to
        # the first byte of the answer and in all, bytes each way. Per-key counts come from here.
        "  log-format " + _quoted('{"key":"%[var(txn.keyname)]","model":"%[var(txn.model),bytes(0,100),json(utf8s)]",'
                                  '"path":"%{+E}HP","status":%ST,"first_byte_ms":%Tr,"total_ms":%Ta,'
                                  '"bytes_in":%U,"bytes_out":%B,"server":"%s"}'),
        "  option http-buffer-request   # the whole body before routing: `model` may follow 40 MB of images",
        "  option http-no-delay         # stream every SSE chunk at once (else ~200 ms Nagle delays)",
        "  retries 0                    # a stopped server answers 503 at once, not after 3 s of retries",
        "  timeout connect 500ms         # on the stack's network a connect takes < 1 ms; a stopped server's gone address never answers",
        f"  timeout client {TIMEOUT}",
        f"  timeout server {TIMEOUT}",
        "  timeout http-request 5m",
        "  timeout http-keep-alive 2m",
        "  timeout check 5s",
        # Health: vLLM's /health every 2 s (0.5 s after a failure); a refused connection of a real request marks
        # the server down at once. Replicas that are down get nothing; a model with none up answers 503.
        "  default-server check inter 2s fastinter 500ms downinter 1s rise 1 fall 2 observe layer4 error-limit 1 "
        "on-error mark-down" + (f" resolvers {at.resolver} resolve-prefer ipv4 init-addr libc,none" if at.resolver else ""),
        "  http-error status 502 content-type application/json string " + _quoted(_error(
            502, "the model's server closed the connection without an answer (it crashed or restarted). "
                 + f"Check: {at.logs}", "server_error")),
        "  http-error status 504 content-type application/json string " + _quoted(_error(
            504, f"the model's server sent nothing for {TIMEOUT}", "server_error")),
        "  http-error status 408 content-type application/json string " + _quoted(_error(
            408, "the request was not received in full within 5 minutes", "invalid_request_error")),
        "",
        "frontend api",
        f"  {bind}",
        f"  http-request set-log-level silent if {{ path {HEALTH} /metrics }}  # the probes' and Prometheus's polls",
        f"  http-request return status 200 content-type application/json string {_quoted(json.dumps({'status': 'ok'}))} if {{ path {HEALTH} }}",
        "  # Open like vLLM's own /metrics: per model (backend) requests by status class, times, in flight.",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        *_dev_routes(d),
        f"  http-request set-var(txn.keyname) req.hdr(authorization),regsub(\"^Bearer +\",\"\"),sha2(256),hex,lower,map({ROUTER_RUN_DIR}/keys.map)",
        "  http-request return status 401 content-type application/json string " + _quoted(_error(
            401, "invalid or missing API key: send one of the stack's keys (secrets.env, router-keys.env) as "
            "`Authorization: Bearer KEY`",
            "invalid_request_error", "invalid_api_key", "Authorization")) + " if !{ var(txn.keyname) -m found }",
        *([f"  http-request return status 200 content-type application/json lf-string \"%[var(txn.keyname),map({c}/models.map)]\""
           " if METH_GET { path /v1/models }"] if not behind else [
            f"  http-request set-var(txn.models) var(txn.keyname),map({c}/models.map) if METH_GET {{ path /v1/models }}",
            f"  http-request set-header {swap_service.MODELS_HEADER} %[var(txn.models)] if {{ var(txn.models) -m found }}"]),
        "  http-request return status 404 content-type application/json lf-string " + _lf(_error(
            404, "the router forwards POST requests with a JSON body naming a `model` (and answers GET /v1/models, "
                 "/health, /metrics); not PATH_HERE", "invalid_request_error", "not_found")).replace("PATH_HERE", "%[path,bytes(0,100),json(utf8s)]")
        + " if !METH_POST" + skip,
        "  http-request return status 413 content-type application/json string " + _quoted(_error(
            413, f"the request body is larger than the router's limit of {BODY_LIMIT >> 20} MiB. Fix: send large "
                 "images or videos as URLs, or as file:// paths in the media folder", "invalid_request_error",
            "request_too_large")) + f" if {{ req.body_size gt {BODY_LIMIT} }}",
        "  http-request set-var(txn.model) req.body,json_query('$.model') if { req.hdr(content-type) -m beg application/json }",
        # multipart/form-data (audio transcription) is not parsed: such a request names its model in a header.
        "  http-request set-var(txn.model) req.hdr(x-model) if !{ var(txn.model) -m found }",
        "  http-request return status 400 content-type application/json string " + _quoted(_error(
            400, "the router found no `model` in this request: send a JSON body (Content-Type: application/json) "
                 "with a \"model\" field naming a served model (GET /v1/models lists them); a multipart request "
                 "(audio) names it in an X-Model header", "invalid_request_error", "missing_model", "model"))
        + " if !{ var(txn.model) -m found }" + skip,
        f"  http-request set-var(txn.backend) var(txn.model),map({c}/backends.map)",
        "  http-request return status 404 content-type application/json lf-string " + _lf(
            '{"error":{"message":"the model \\"MODEL\\" does not exist; this endpoint serves: NAMES","type":'
            '"invalid_request_error","param":"model","code":"model_not_found"}}').replace("MODEL", var).replace("NAMES", names)
        + " if !{ var(txn.backend) -m found }" + skip,
        "  http-request set-var(txn.pair) var(txn.keyname),concat(/,txn.model)",
        "  http-request return status 403 content-type application/json lf-string " + _lf(
            "{\"error\":{\"message\":\"key KEYNAME may not use model 'MODEL'; it may use: NAMES\",\"type\":"
            '"permission_error","param":"model","code":"model_not_allowed"}}').replace("KEYNAME", "%[var(txn.keyname)]")
        .replace("MODEL", var).replace("NAMES", names)
        + f" if !{{ var(txn.pair),map({c}/scopes.map) -m found }}" + skip,
        *([f"  use_backend {SWAP_BACKEND} if {{ var(txn.models) -m found }}"] if behind else []),
        "  use_backend %[var(txn.backend)]",
    ]
    by_name: dict[str, list] = {}
    for s in d.services:
        by_name.setdefault(s.served_name, []).append(s)
    for served, backend in backends(d).items():
        servers = by_name[served]
        if any(s.name in behind for s in servers):
            lines += _swap_backend(backend, f"model {served}")
            continue
        down = ", ".join(s.name for s in servers)
        lines += [
            "",
            f"backend {backend}",
            f"  balance {POLICIES[r.policy]}",
            "  option httpchk GET /health",
            # The client's key is the router's business; the servers get theirs (from the environment, not this file).
            ('  http-request set-header Authorization "Bearer ${VLLM_API_KEY}"' if servers[0].api_key
             else "  http-request del-header Authorization"),
            "  http-error status 503 content-type application/json string " + _quoted(_error(
                503, f"model {served}: no server is up ({down}: starting, stopped, or failing /health). "
                     f"Check: {at.look(servers)}", "service_unavailable", "model_unavailable")),
            *(f"  server {s.name} {at.server(s)}" for s in servers),
        ]
    if behind:
        lines += _swap_backend(SWAP_BACKEND, "the model list")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ servers taking turns (deploy/swap_service.py)

SWAP_BACKEND = "_swap"  # GET /v1/models with turns; a served name's backend never starts with "_" (SERVED_NAME_RE)


def _swap_backend(backend: str, what: str) -> list[str]:
    """A backend whose one server is the turn-taking controller, called with its own key (from its env file). On the
    stack's network only (compose): the other targets refuse services taking turns, so no Placement names it."""
    return [
        "",
        f"backend {backend}",
        "  option httpchk GET /health",
        f'  http-request set-header Authorization "Bearer ${{{SWAP_KEY}}}"',
        "  http-error status 503 content-type application/json string " + _quoted(_error(
            503, f"{what}: the controller of the models that take turns on GPUs is not up. "
                 f"Check: docker compose ps {SWAP}; docker compose logs {SWAP}",
            "service_unavailable", "model_unavailable")),
        f"  server {SWAP} {SWAP}:{SWAP_PORT}",
    ]


def _dev_routes(d: Deployment) -> list[str]:
    """Where a server runs vLLM's development mode (turns need it for /sleep and /wake_up), its development routes,
    which take no key, are refused to every client — whatever the spelling HAProxy sees (%-encoded, extra slashes,
    case); the controller reaches them on the stack's network. Nothing is rendered for a stack without one."""
    if not swap_service.dev_mode(d):
        return []
    names = "|".join(swap_service.DEV_ROUTES)
    return ["  http-request return status 403 content-type application/json string " + _quoted(_error(
        403, "this is one of vLLM's development routes (sleep, wake, RPC, caches, weights), which only the stack's "
             "own controller may use; clients reach the API under /v1", "permission_error", "development_route"))
        + f" if {{ path,url_dec,lower -m reg ^/+({names})/*$ }}"]


def configs(d: Deployment, at: Placement = NETWORK) -> dict[str, str]:
    """Every file of the router's config (compose configs, a ConfigMap, files bound by a unit), by file name (mounted
    in ROUTER_CONFIG_DIR)."""
    return {"haproxy.cfg": haproxy_cfg(d, at), **maps(d)}


def argv(d: Deployment) -> list[str]:
    """The router container's command: router_start.py's options (key variable names, TLS)."""
    assert d.router is not None
    tls = d.router.tls
    out = [f"--key={name}" for name, _ in d.router.keys]
    if tls is not None:
        out += ["--tls-dir", ROUTER_TLS_DIR] + (["--own-cert"] if tls.cert else [f"--host={h}" for h in tls.hosts])
    return out
