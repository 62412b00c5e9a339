"""A local server that speaks enough of the Hugging Face Hub's and ModelScope's HTTP protocols for
the real `huggingface_hub` and `modelscope` clients (HF: model info, tree, HEAD/GET `resolve` with
Range; ModelScope: `repo/files` listing and `repo?FilePath=` downloads), so downloads can be tested
where the hubs are unreachable. Not a mock of our code: the clients under test are the real
libraries, talking HTTP to this server (HF_ENDPOINT / MODELSCOPE_ENDPOINT point at it).

It counts the bytes it serves, can throttle (to interrupt a download mid-file) and can corrupt
the first response for a file (to test hash verification).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    def __init__(self, repos: dict[str, dict[str, bytes]], rate: float | None = None):
        self.repos = repos  # "org/name" -> {path: content}
        self.rate = rate  # bytes/s for file bodies, None = unthrottled
        self.corrupt_once: set[str] = set()  # paths whose next GET is served with a flipped byte
        self.bytes_served = 0
        self.bodies_in_flight = 0  # file bodies being sent right now
        self.requests: list[str] = []
        self.authorized = 0  # requests that carried an Authorization header
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ protocol

    def _entries(self, repo: str) -> list[dict]:
        out = []
        for path, data in sorted(self.repos[repo].items()):
            sha = hashlib.sha256(data).hexdigest()
            out.append({"type": "file", "path": path, "rfilename": path, "size": len(data),
                        "oid": hashlib.sha1(data).hexdigest(), "blobId": hashlib.sha1(data).hexdigest(),
                        "lfs": {"oid": sha, "sha256": sha, "size": len(data), "pointerSize": 134}})
        return out

    def _json(self, h, body, status=200):
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        h.wfile.write(raw)

    def _not_found(self, h, head):
        raw = b'{"error": "Repository not found"}'
        h.send_response(404)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", "RepoNotFound")
        h.send_header("X-Error-Message", "Repository not found")
        h.send_header("Content-Length", "0" if head else str(len(raw)))
        h.end_headers()
        if not head:
            h.wfile.write(raw)

    def _handle(self, h, head: bool):
        path = h.path.split("?")[0]
        with self.lock:
            self.requests.append(f"{h.command} {h.path} {h.headers.get('Range', '')}".strip())
            self.authorized += bool(h.headers.get("Authorization"))
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$", path)
        if m:
            repo = m.group(1)
            if repo not in self.repos:
                return self._not_found(h, head)
            return self._json(h, {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                  "siblings": self._entries(repo)})
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        if m:
            if m.group(1) not in self.repos:
                return self._not_found(h, head)
            return self._json(h, self._entries(m.group(1)))
        m = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo/files$", path)
        if m:
            if m.group(1) not in self.repos:
                return self._json(h, {"Code": 10010205, "Success": False,
                                      "Message": f"model {m.group(1)} not found"}, status=404)
            files = [{"Name": e["path"].rsplit("/", 1)[-1], "Path": e["path"], "Revision": COMMIT, "Size": e["size"],
                      "Sha256": e["lfs"]["sha256"], "Type": "blob", "IsLFS": True} for e in self._entries(m.group(1))]
            return self._json(h, {"Code": 200, "Success": True, "Data": {"Files": files}})
        m = re.match(r"^/api/v1/models/([^/]+/[^/]+)/repo$", path)
        if m:
            name = dict(x.split("=", 1) for x in h.path.split("?", 1)[-1].split("&") if "=" in x).get("FilePath")
            if m.group(1) in self.repos and name in self.repos[m.group(1)]:
                return self._file(h, m.group(1), name, head)
            return self._not_found(h, head)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m and m.group(1) in self.repos and m.group(3) in self.repos[m.group(1)]:
            return self._file(h, m.group(1), m.group(3), head)
        return self._not_found(h, head)

    def _file(self, h, repo: str, name: str, head: bool):
        data = self.repos[repo][name]
        sha = hashlib.sha256(data).hexdigest()
        start = 0
        rng = re.match(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
        body = data[start:]
        if not head and name in self.corrupt_once:
            self.corrupt_once.discard(name)
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        h.send_response(206 if rng and not head else 200)
        h.send_header("Content-Length", str(len(data) if head else len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{sha}"')
        h.send_header("X-Linked-Etag", f'"{sha}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("X-Repo-Commit", COMMIT)
        if rng and not head:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        chunk = 64 * 1024
        with self.lock:
            self.bodies_in_flight += 1
        try:
            for i in range(0, len(body), chunk):
                piece = body[i:i + chunk]
                h.wfile.write(piece)
                with self.lock:
                    self.bytes_served += len(piece)
                if self.rate:
                    time.sleep(len(piece) / self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.lock:
                self.bodies_in_flight -= 1
