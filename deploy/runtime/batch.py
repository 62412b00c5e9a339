"""The batch job: every `*.jsonl` in an input folder (OpenAI batch format) answered into an output folder.

Runs inside the server image (`python3 /opt/vllm-compose/batch.py`, mounted read-only; standard library
only). It starts the exact server command the stack renders (the argv after `--`, bound to 127.0.0.1
inside the container, no published port), sends each request to it over HTTP and writes each answer
as it arrives. Why not `vllm run-batch`: in the pinned vLLM it stops at the first malformed line, keeps
every answer in memory until the end (an interrupted run loses all of them) and cannot resume. Through
the server, the job gets the same engine, parsers and flags as the service, answer by answer.

- A malformed line (not JSON, no `custom_id`, a duplicate `custom_id`, no `body`) is reported with its line
  number, recorded as an error in the output, and the other lines run.
- Answers go to `OUTPUT/.NAME.partial` as they arrive; when every line is answered, `OUTPUT/NAME` is written
  whole (a temporary file renamed over it) in input order, and the partial file removed.
- A rerun skips the `custom_id`s already answered (in the partial file or an earlier output); transport
  errors and 5xx answers are retried.

The same module turns a list of prompts (text, one per line, or CSV with a `prompt` column) into such a
file: `vllm-deploy batch-input` (deploy/cli.py).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import islice
from pathlib import Path

DEFAULT_PORT = 8000  # vLLM's, when the server argv names none
PARTIAL = ".{}.partial"
HEALTH_WAIT_LOG_S = 30
CSV_FIELD_MAX = 2**31 - 1  # the csv module's default (131,072 characters) refuses long prompts; memory is the limit
MAX_LISTED = 20  # problems shown one by one before a count


# ------------------------------------------------------------------ the input format


def jsonl_lines(text: str) -> list[str]:
    """A JSONL text's lines: split at \\n only (\\r\\n too). str.splitlines() would also split at U+2028,
    U+0085 and the like, which JSON strings may hold raw (json.dumps(ensure_ascii=False) writes them so)."""
    return [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]


def text_lines(text: str) -> list[str]:
    """A text file's lines as a user means them: split at \\n, \\r\\n or \\r (old Mac files); other
    separators (U+2028, form feeds, ...) stay inside the prompt."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_lines(text: str) -> tuple[list[tuple[int, dict]], list[tuple[int, str | None, str]]]:
    """(valid requests as (line, request), problems as (line, custom_id or None, message))."""
    requests: list[tuple[int, dict]] = []
    problems: list[tuple[int, str | None, str]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(jsonl_lines(text), 1):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            problems.append((n, None, f"not JSON ({e}). Fix: one JSON object per line."))
            continue
        if not isinstance(req, dict):
            problems.append((n, None, "not a JSON object. Fix: {\"custom_id\": ..., \"method\": \"POST\", "
                                      "\"url\": \"/v1/chat/completions\", \"body\": {...}}."))
            continue
        cid = req.get("custom_id")
        if not isinstance(cid, str) or not cid:
            problems.append((n, None, "no custom_id. Fix: give every line a unique string custom_id."))
        elif cid in seen:
            problems.append((n, cid, f"custom_id {cid[:80]!r} is also on line {seen[cid]}. Fix: make it unique."))
        elif req.get("method", "POST") != "POST":
            problems.append((n, cid, f"method {str(req.get('method'))[:20]!r}. Fix: \"POST\"."))
        elif not isinstance(req.get("url"), str) or not req["url"].startswith("/v1/"):
            problems.append((n, cid, f"url {str(req.get('url'))[:60]!r}. Fix: an API path such as "
                                     "\"/v1/chat/completions\" or \"/v1/completions\"."))
        elif not isinstance(req.get("body"), dict):
            problems.append((n, cid, "no body object. Fix: \"body\": {\"messages\": [...]} (the request as sent "
                                     "to the API)."))
        else:
            seen[cid] = n
            requests.append((n, req))
    return requests, problems


def _csv_items(text: str, system: str | None) -> list[tuple[str, str, str | None]]:
    """(custom_id, prompt, system) per CSV row: a `prompt` column, optional `custom_id` and `system`; rows as the
    csv module reads them (quoted fields may span lines), a UTF-8 BOM (Excel's "CSV UTF-8") ignored."""
    csv.field_size_limit(CSV_FIELD_MAX)
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        rows = list(reader)
    except csv.Error as e:
        raise ValueError(f"CSV line {reader.line_num}: {e}. Fix: save it as CSV (UTF-8) from your spreadsheet, "
                         "with quotes around fields that hold commas, quotes or line breaks.") from None
    if not rows:
        return []
    names = [h.strip() for h in rows[0]]
    if "prompt" not in names:
        raise ValueError(f"the CSV has no `prompt` column (columns: {', '.join(repr(n[:40]) for n in names[:20])}). "
                         "Fix: name the column with the prompts `prompt`.")
    if dup := sorted({n for n in names if n in ("prompt", "custom_id", "system") and names.count(n) > 1}):
        raise ValueError(f"the CSV has {', '.join(dup)} more than once. Fix: one column of each name.")
    items, problems = [], []
    for i, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue  # a blank row
        rec = dict(zip(names, row, strict=False))
        if not (rec.get("prompt") or "").strip():
            problems.append(f"row {i}: no prompt" + (f" (the row has {len(row)} of {len(names)} columns)"
                                                     if len(row) < len(names) else ""))
            continue
        items.append((rec.get("custom_id") or f"row-{i}", rec["prompt"], rec.get("system") or system))
    if problems:
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ValueError("; ".join(problems[:MAX_LISTED]) + more + ". Fix: give every row a prompt (or delete it).")
    return items


def prompts_to_requests(text: str, csv_file: bool, model: str | None, max_tokens: int | None,
                        system: str | None) -> list[dict]:
    """Plain prompts (one per line) or CSV rows (`prompt`, optional `custom_id` and `system`) → batch requests.
    Raises ValueError naming the line or row to fix."""
    if csv_file:
        items = _csv_items(text, system)
    else:
        items = [(f"line-{i}", p, system) for i, p in enumerate(text_lines(text), 1) if p.strip()]
    out = []
    for cid, prompt, sys_prompt in items:
        messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + \
                   [{"role": "user", "content": prompt}]
        body: dict = {"messages": messages}
        if model:
            body["model"] = model
        if max_tokens:
            body["max_tokens"] = max_tokens
        out.append({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
    return out


def write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cannot_write(folder: Path) -> str | None:
    """Why this container cannot write answers into FOLDER (checked before the engine loads), or None."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
        return None
    except OSError as e:
        uid = os.getuid() if hasattr(os, "getuid") else "?"
        return (f"[batch] cannot write to the output folder ({e.strerror}); this container runs as uid {uid}. "
                f"Fix: on the host, `chmod a+w` the spec's batch.output folder or `sudo chown {uid}` it. "
                "Nothing was run.")


def read_answers(path: Path) -> dict[str, dict]:
    """custom_id → record, from an output or partial file; a torn last line (a killed run) is skipped."""
    answers: dict[str, dict] = {}
    if path.is_file():
        for line in jsonl_lines(path.read_text(encoding="utf-8", errors="replace")):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("custom_id") and _answered(rec):
                answers[rec["custom_id"]] = rec
    return answers


def _answered(rec: dict) -> bool:
    """An answer to keep: any HTTP response below 500 (a 400 stays a 400 on a rerun)."""
    response = rec.get("response") or {}
    return isinstance(response, dict) and isinstance(response.get("status_code"), int) and response["status_code"] < 500


def _record(cid: str | None, response: dict | None, error: dict | None, rid: str | None = None) -> dict:
    return {"id": rid or f"batch_req_{uuid.uuid4().hex}", "custom_id": cid, "response": response, "error": error}


# ------------------------------------------------------------------ the runner


class Server:
    """The stack's server command, started once for every file."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        # The port the command itself listens on: `--port N` or `--port=N`, the last one winning, as for argparse.
        self.port = DEFAULT_PORT
        for i, arg in enumerate(argv):
            if arg == "--port" and i + 1 < len(argv) and argv[i + 1].isdigit():
                self.port = int(argv[i + 1])
            elif arg.startswith("--port=") and arg[7:].isdigit():
                self.port = int(arg[7:])
        self.proc: subprocess.Popen | None = None
        self.local = threading.local()
        self.model: str | None = None

    def start(self) -> None:
        print(f"[batch] starting the engine: {' '.join(self.argv[:4])} ...", flush=True)
        self.proc = subprocess.Popen(self.argv)
        t0 = time.monotonic()
        last = t0
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"[batch] the engine exited with code {self.proc.returncode} before it was ready; "
                                 "its log is above. Nothing was sent; a rerun starts over where this one stopped.")
            try:
                status, body = self.call("GET", "/v1/models", None, timeout=5)
                if status == 200:
                    self.model = json.loads(body)["data"][0]["id"]
                    print(f"[batch] engine ready in {time.monotonic() - t0:.0f}s, serving {self.model!r}", flush=True)
                    return
            except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError):
                self.local.conn = None
            if time.monotonic() - last >= HEALTH_WAIT_LOG_S:
                last = time.monotonic()
                print(f"[batch] waiting for the engine to load the model ({last - t0:.0f}s)", flush=True)
            time.sleep(1)

    def call(self, method: str, path: str, body: bytes | None, timeout: float = 3600) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.local.conn = None
            conn.close()
            raise

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Progress:
    def __init__(self, name: str, total: int, done_before: int):
        self.name, self.total, self.done = name, total, done_before
        self.t0 = self.last = time.monotonic()
        self.new = self.tokens = self.failed = 0

    def add(self, tokens: int, ok: bool) -> None:
        self.done += 1
        self.new += 1
        self.tokens += tokens
        self.failed += not ok
        now = time.monotonic()
        if now - self.last >= 10 or self.done == self.total:
            self.last = now
            rate = self.new / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            print(f"[batch] {self.name}: {self.done}/{self.total} answered ({100 * self.done // max(self.total, 1)}%), "
                  f"{rate:.1f} req/s, {self.tokens / max(now - self.t0, 1e-9):.0f} output tok/s, "
                  f"ETA {eta:.0f}s" + (f", {self.failed} failed" if self.failed else ""), flush=True)


def run_file(server: Server, src: Path, out_dir: Path, concurrency: int,
             requests: list[tuple[int, dict]], problems: list, done: dict[str, dict]) -> tuple[int, int]:
    """Answer SRC's pending requests, then write its output. Returns (answers not 2xx, problems)."""
    partial = out_dir / PARTIAL.format(src.name)
    pending = [(n, r) for n, r in requests if r["custom_id"] not in done]
    progress = Progress(src.name, len(requests), len(requests) - len(pending))

    def one(req: dict) -> dict:
        body = dict(req["body"])
        body.setdefault("model", server.model)
        try:
            status, raw = server.call("POST", req["url"], json.dumps(body).encode())
        except (OSError, http.client.HTTPException) as e:
            return _record(req["custom_id"], None, {"code": "transport", "message": f"{type(e).__name__}: {e}"})
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"raw": raw.decode("utf-8", "replace")[:2000]}
        return _record(req["custom_id"], {"status_code": status, "request_id": payload.get("id", ""),
                                          "body": payload}, None)

    with open(partial, "a", encoding="utf-8") as part, ThreadPoolExecutor(concurrency) as pool:
        todo = iter([r for _, r in pending])
        running = {pool.submit(one, r) for r in islice(todo, concurrency)}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    rec = fut.result()
                    part.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    part.flush()
                    if _answered(rec):
                        done[rec["custom_id"]] = rec
                    response = rec.get("response") or {}
                    usage = (response.get("body") or {}).get("usage") or {}
                    progress.add(int(usage.get("completion_tokens") or 0), response.get("status_code") == 200)
                    if (nxt := next(todo, None)) is not None:
                        running.add(pool.submit(one, nxt))
        except KeyboardInterrupt:
            server.stop()  # the requests in flight end at once instead of holding the pool open
            raise

    missing = [r["custom_id"] for _, r in requests if r["custom_id"] not in done]
    if missing:
        print(f"[batch] {src.name}: {len(missing)} request(s) got no answer (server errors or a lost connection), "
              f"e.g. {missing[0]!r}; run the job again to retry them.", flush=True)
        return len(missing), len(problems)
    lines = {n: json.dumps(done[r["custom_id"]], ensure_ascii=False) for n, r in requests}
    for n, cid, message in problems:
        error = {"code": "invalid_line", "line": n, "message": f"line {n}: {message}"}
        lines[n] = json.dumps(_record(cid, None, error, f"batch_invalid_line_{n}"), ensure_ascii=False)
    write_atomic(out_dir / src.name, [lines[n] for n in sorted(lines)])
    partial.unlink(missing_ok=True)
    not_ok = sum(1 for _, r in requests if done[r["custom_id"]]["response"]["status_code"] != 200)
    print(f"[batch] {src.name}: wrote {len(lines)} line(s) to the output folder ({len(requests) - not_ok} answered, "
          f"{not_ok} refused by the API, {len(problems)} malformed)", flush=True)
    return not_ok, len(problems)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="batch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=256)
    args = p.parse_args(argv[:cut])
    server_argv = argv[cut + 1:]
    if not server_argv:
        p.error("the server command goes after `--`")
    files = sorted(args.input.glob("*.jsonl"))
    if not files:
        print(f"[batch] no *.jsonl file in {args.input} (the spec's batch.input folder). Fix: put request files "
              "there, e.g. made with `vllm-deploy batch-input prompts.txt -o FOLDER/prompts.jsonl`.", flush=True)
        return 1
    if problem := cannot_write(args.output):
        print(problem, flush=True)
        return 1
    plans = []
    for src in files:
        requests, problems = parse_lines(src.read_text(encoding="utf-8", errors="replace"))
        for n, _, message in problems[:20]:
            print(f"[batch] {src.name} line {n}: {message} (skipped; the other lines run)", flush=True)
        if len(problems) > 20:
            print(f"[batch] {src.name}: {len(problems) - 20} more malformed line(s)", flush=True)
        done = {**read_answers(args.output / src.name), **read_answers(args.output / PARTIAL.format(src.name))}
        done = {cid: rec for cid, rec in done.items() if cid in {r["custom_id"] for _, r in requests}}
        todo = len(requests) - len(done)
        print(f"[batch] {src.name}: {len(requests)} request(s), {len(done)} already answered, {todo} to run"
              + (f", {len(problems)} malformed line(s)" if problems else ""), flush=True)
        plans.append((src, requests, problems, done))

    server = Server(server_argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker compose stop`/`kill`: keep the answers, stop the engine
    failed = malformed = 0
    try:
        if any(len(req) > len(done) for _, req, _, done in plans):
            server.start()
        for src, requests, problems, done in plans:
            f, m = run_file(server, src, args.output, args.concurrency, requests, problems, done)
            failed, malformed = failed + f, malformed + m
    except KeyboardInterrupt:
        print("[batch] interrupted: answers so far are kept; run the job again to finish.", flush=True)
        return 130
    finally:
        server.stop()
    return 0 if failed == malformed == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
