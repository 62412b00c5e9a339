#!/usr/bin/env python3
"""A fast stand-in for a GPU vLLM server, for router benchmarks only (maintainer/bench_router.py).

    python3 stub_openai.py [--port 8000] [--delay 0.05] [--chunks 8] [--gap 0.02]

Speaks just enough of vLLM's OpenAI API over HTTP/1.1 keep-alive: GET /health; POST /v1/chat/completions and
/v1/completions answer after DELAY seconds (like a GPU's time to a whole short answer), or with `stream: true`
send CHUNKS server-sent events GAP seconds apart then `data: [DONE]` (like a GPU streaming tokens). A request
may set its own (`stub_delay`, `stub_chunks`, `stub_gap` in the body, passed through by the router unchanged,
as vLLM's own extra fields are). The answer echoes the request's `model`. The standard library only, one asyncio loop: ~5,000 requests/s on one core, so a
router in front of it shows its own ceiling, not a model's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--delay", type=float, default=0.05)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--gap", type=float, default=0.02)
    a = p.parse_args()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length) if length else b""
                if head[0].startswith("GET /health"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                req = json.loads(body or b"{}")
                model = req.get("model", "")
                delay, chunks, gap = (req.get(f"stub_{k}", v) for k, v in (("delay", a.delay), ("chunks", a.chunks), ("gap", a.gap)))
                if req.get("stream"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    for i in range(chunks):
                        event = json.dumps({"id": "stub", "object": "chat.completion.chunk", "created": int(time.time()),
                                            "model": model, "choices": [{"index": 0, "delta": {"content": f"t{i} "},
                                                                         "finish_reason": None}]})
                        data = f"data: {event}\n\n".encode()
                        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                        await writer.drain()
                        await asyncio.sleep(gap)
                    done = b"data: [DONE]\n\n"
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                else:
                    await asyncio.sleep(delay)
                    out = json.dumps({"id": "stub", "object": "chat.completion", "created": int(time.time()), "model": model,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "0.0.0.0", a.port, backlog=1024)
        await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
