"""Smoke tests against any running OpenAI-compatible vLLM endpoint.

    pytest smoke_tests --base-url http://127.0.0.1:8000 --model glm-4.5-air [--api-key KEY | --api-key-file secrets.env]
    pytest smoke_tests --base-url https://127.0.0.1:4000 --ca-cert tls/ca.crt ...    (through the router, HTTPS)

Capabilities are read from the server (/v1/models, /version); checks a deployment
does not claim are skipped with the reason. Without --base-url every test skips.
Behind the stack's router (HAProxy) the same checks run; its /v1/models lists a context length only where the
spec sets one (pass --spec for the limit checks otherwise).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("smoke", "vLLM smoke tests")
    g.addoption("--base-url", help="server root, e.g. http://127.0.0.1:8000 (no /v1)")
    g.addoption("--model", help="served model name (default: the first in /v1/models)")
    g.addoption("--api-key", default=os.environ.get("VLLM_API_KEY"), help="API key (default $VLLM_API_KEY)")
    g.addoption("--api-key-file", help="env file with VLLM_API_KEY=… (e.g. the generated secrets.env)")
    g.addoption("--api-key-var", default="VLLM_API_KEY", help="the variable of --api-key-file to use (a router key)")
    g.addoption("--ca-cert", help="verify HTTPS against this CA certificate (the router's self-signed tls/ca.crt)")
    g.addoption("--reasoning-parser", help="the parser the server should run with, for reasoning checks")
    g.addoption("--tool-call-parser", help="the parser the server should run with, for tool-call checks")
    g.addoption("--limit-mm-per-prompt", help='the multimodal limits the server has, e.g. \'{"image":32,"video":1}\'')
    g.addoption("--media-path", help="the server's --allowed-local-media-path (its folder for file:// URLs)")
    g.addoption("--media-dir", help="where that folder is on this machine, if it is not at the same path (the "
                                    "spec's media_dir, e.g. ./media beside compose.yaml, mounted at /media)")
    g.addoption("--spec", help="a deployment spec: claims (parsers, limits, media path, name) are read from it")
    g.addoption("--service", help="the service of --spec to check (default: the only one)")
    g.addoption("--report-md", help="write a Markdown summary (check × pass/fail/skip) to this file")


@dataclass
class Server:
    base_url: str
    api_key: str | None = field(repr=False)  # never in a failure message or a log
    model: str
    max_model_len: int | None
    version: str
    claimed_max_model_len: int | None
    reasoning_parser: str | None
    tool_call_parser: str | None
    mm_limits: dict
    media_path: str | None
    media_dir: str | None = None  # the media folder on this machine (where the checks write files)
    ca_cert: str | None = None
    context_listed: bool = True  # /v1/models lists the context length
    mm_known: bool = False  # the multimodal limits were stated (--spec or --limit-mm-per-prompt), not guessed

    def _ssl(self):
        import ssl

        return ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else None

    def get(self, path: str, auth: bool = True, timeout: float = 30, body: dict | None = None) -> tuple[int, bytes]:
        """GET (or POST, with a JSON body) a path under the server root."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers={"Content-Type": "application/json"})
        if auth and self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def reasoning(self, message) -> str:
        """The thinking in a message or delta, under the field name(s) of the server's vLLM version."""
        from deploy.versions import VllmVersion

        version = VllmVersion.parse(self.version)
        names = version.reasoning_fields if version else ("reasoning", "reasoning_content")
        extra = message.model_extra or {}
        return next((v for n in names if (v := extra.get(n) or getattr(message, n, None))), "")

    def client(self):
        from openai import DefaultHttpxClient, OpenAI

        http = DefaultHttpxClient(verify=self._ssl()) if self.ca_cert else None
        return OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key or "none", timeout=120, max_retries=0,
                      http_client=http)


def _key_from_file(path: str, var: str) -> str:
    if not os.path.isfile(path):
        raise pytest.UsageError(f"--api-key-file {path}: no such file (the stack's secrets.env is beside its compose.yaml)")
    from deploy import envfile

    if var in (keys := envfile.read(path)):
        return keys[var]
    raise pytest.UsageError(f"--api-key-file {path}: no {var}= line")


def _claims_from_spec(path: str, service: str | None) -> dict:
    """What the deployment promises, from its spec, resolved by the generator itself."""
    import deploy
    from deploy.errors import SpecError

    try:
        d, _ = deploy.load(path)
    except SpecError as e:
        raise pytest.UsageError(f"--spec {path} is not a valid deployment:\n{e}") from None
    names = [x.name for x in d.services]
    if service is None and len(names) != 1:
        raise pytest.UsageError(f"--spec {path} has services {names}: pass --service NAME")
    return d.service(service or names[0]).settings()


@pytest.fixture(scope="session")
def server(request) -> Server:
    opt = request.config.getoption
    base = opt("--base-url")
    if not base:
        pytest.skip("no --base-url given: pass the server to test, e.g. --base-url http://127.0.0.1:8000")
    base = base.rstrip("/").removesuffix("/v1")
    key = _key_from_file(opt("--api-key-file"), opt("--api-key-var")) if opt("--api-key-file") else opt("--api-key")
    claims = _claims_from_spec(opt("--spec"), opt("--service")) if opt("--spec") else {}
    s = Server(base, key, opt("--model") or claims.get("served_model_name") or "", None, "unknown",
               claims.get("max_model_len") if isinstance(claims.get("max_model_len"), int) else None,
               opt("--reasoning-parser") or claims.get("reasoning_parser"),
               opt("--tool-call-parser") or claims.get("tool_call_parser"),
               json.loads(opt("--limit-mm-per-prompt")) if opt("--limit-mm-per-prompt")
               else dict(claims.get("limit_mm_per_prompt", ())),
               opt("--media-path") or claims.get("allowed_local_media_path"), opt("--media-dir"), opt("--ca-cert"),
               mm_known=bool(opt("--spec") or opt("--limit-mm-per-prompt")))
    if s.media_path and not s.media_dir and os.path.isdir(s.media_path):
        s.media_dir = s.media_path  # a server on this machine, outside a container
    status, body = s.get("/v1/models")
    if status != 200:
        pytest.exit(f"{base}/v1/models answered {status}: {body[:200]!r} (wrong --api-key?)", returncode=1)
    models = json.loads(body)["data"]
    chosen = next((m for m in models if m["id"] == s.model), None) if s.model else models[0]
    if chosen is None:
        pytest.exit(f"model {s.model!r} not served; the server has {[m['id'] for m in models]}", returncode=1)
    s.model, s.max_model_len = chosen["id"], chosen.get("max_model_len")
    if not s.max_model_len:
        # vLLM always lists it; the stack's router only where the spec sets it. The spec's claim then stands in,
        # so that the over-long prompt is still sent (and refused by the server behind).
        s.max_model_len = s.claimed_max_model_len
        s.context_listed = False
    status, body = s.get("/version")
    if status == 200:
        s.version = json.loads(body).get("version", "unknown")
    request.config._smoke_server = s
    return s


_OUTCOMES: dict[str, tuple[str, str]] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
        elif report.failed:
            reason = str(report.longrepr).strip().splitlines()[-1][:160]
        _OUTCOMES.setdefault(report.nodeid, (report.outcome, reason))
        if report.outcome != "passed":
            _OUTCOMES[report.nodeid] = (report.outcome, reason)


def pytest_sessionfinish(session):
    path = session.config.getoption("--report-md")
    if not path:
        return
    s = getattr(session.config, "_smoke_server", None)
    head = f"# Smoke report: {s.model} at {s.base_url}, vLLM {s.version}\n\n" if s else "# Smoke report\n\n"
    rows = [f"| {nodeid.split('::')[-1]} | {outcome} | {reason.replace('|', '/')} |"
            for nodeid, (outcome, reason) in _OUTCOMES.items()]
    counts = {o: sum(1 for x, _ in _OUTCOMES.values() if x == o) for o in ("passed", "failed", "skipped")}
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped\n\n"
                "| check | result | reason |\n|---|---|---|\n" + "\n".join(rows) + "\n")
