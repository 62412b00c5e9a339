"""Stage 5 — the command line: `python -m deploy COMMAND` (installed as `vllm-deploy`); `-h` lists the commands
and each command's `-h` its options and an example (parser() below is the one list).

Exit codes: 0 ok, 1 bad spec (every problem printed, no traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from . import container, envfile, load, pins, sharing, versions
from .errors import Problem, SpecError
from .facts import GRAFANA, GRAFANA_PASSWORD
from .presets import PRESETS
from .resolve import Deployment
from .targets import MARKER, Request, TargetError, targets
from .write import WriteError, rotate_keys, shown, write_file, write_tree

# The checkout this package runs from: compose builds the project's images from its images/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

def load_deployment(path: str) -> tuple[Deployment, list[Problem]]:
    return load(path)


def _print_warnings(warnings: list[Problem], source: str) -> None:
    for p in warnings:
        print(p.format(source), file=sys.stderr)


def build_context(out_dir: Path) -> str:
    """The project root as compose sees it from OUT_DIR (`.` for the committed compose.yaml)."""
    if not (PROJECT_ROOT / "images").is_dir():
        raise SpecError([Problem("(install)", f"{PROJECT_ROOT} has no images/ folder, so compose could not "
                                      "build the project's images. Fix: install from a clone: pip install -e .")])
    return os.path.relpath(PROJECT_ROOT, out_dir.resolve())


def cmd_render(a) -> int:
    target = targets()[a.target]
    if bad := sorted(set(a.drop) - set(target.DROPPABLE)):
        print(f"--drop {bad[0]}: the {target.NAME} target can leave out {', '.join(target.DROPPABLE) or 'nothing'}. "
              "Fix: remove it.", file=sys.stderr)
        return 2
    if target.OUTPUT == "folder" and a.output in (None, "-"):
        print(f"--target {target.NAME} writes one file per unit: give a folder with -o DIR.", file=sys.stderr)
        return 2
    d, warnings = load_deployment(a.spec)
    _print_warnings(warnings, a.spec)
    out = None if a.output in (None, "-") else Path(a.output)
    folder = out if target.OUTPUT == "folder" else (out.parent if out else Path.cwd())
    request = Request(a.spec, a.output, frozenset(a.drop), vars(a), build_context(folder))
    try:
        rendered = target.render(d, request)
    except TargetError as e:
        for line in str(e).splitlines():
            print(f"{a.spec}: error: {line}", file=sys.stderr)
        print(f"{a.spec}: nothing was written.", file=sys.stderr)
        return 1
    if out is None:
        sys.stdout.write(rendered.files[""])
        return 0
    try:
        if target.OUTPUT == "file":
            notes = write_file(out, rendered.files[""], d, rendered.env_files, rendered.host_folders)
        else:
            notes = write_tree(out, rendered.files, MARKER, d, rendered.env_files)
    except WriteError as e:
        for line in str(e).splitlines():  # every problem, each on its line
            print(f"{a.spec}: {line}", file=sys.stderr)
        return 1
    for line in [*notes, *rendered.notes]:
        print(line, file=sys.stderr)
    return 0


def cmd_check(a) -> int:
    d, warnings = load_deployment(a.spec)
    _print_warnings(warnings, a.spec)
    print(f"{a.spec}: ok — vLLM {d.vllm_version}, {len(d.services)} service(s)")
    for s in d.services:
        print(f"\n[{s.name}]")
        for key, value in sorted(s.settings().items()):
            print(f"  {key:26} {value!r:40} ({s.origin(key)})")
    print("\n".join(sharing.describe(d)))
    return 0


def cmd_doctor(a) -> int:
    from . import doctor

    d, warnings = load_deployment(a.spec)
    _print_warnings(warnings, a.spec)
    return doctor.main(d, a.service, Path(a.dir), a.spec)


def _running_services(workdir: Path) -> tuple[set[str] | None, str]:
    """The services `docker compose ps` reports running in WORKDIR, or (None, why it could not tell)."""
    import subprocess

    try:
        r = subprocess.run(["docker", "compose", "ps", "--status", "running", "--services"], cwd=workdir,
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(getattr(e, "strerror", None) or e)
    if r.returncode:
        return None, (r.stderr.strip().splitlines() or ["no answer"])[-1][:200]
    return set(r.stdout.split()), ""


def _in_dir(workdir: Path, command: str) -> str:
    """COMMAND as the user can paste it from here: prefixed with a cd when the stack's folder is not this one."""
    import shlex

    return command if workdir.resolve() == Path.cwd().resolve() else f"cd {shlex.quote(shown(str(workdir)))} && {command}"


def cmd_rotate_keys(a) -> int:
    d, warnings = load_deployment(a.spec)
    _print_warnings(warnings, a.spec)
    workdir = Path(a.dir)
    if not d.key_names():
        print(f"{a.spec}: this stack has no key to rotate (every service has api_key: false, and there is no router "
              "or Grafana). Fix: nothing to do; set api_key: true on a service to protect it with a key.", file=sys.stderr)
        return 1
    names = tuple(a.key or d.key_names())
    if unknown := [n for n in names if n not in d.key_names()]:
        print(f"{a.spec}: {', '.join(repr(shown(n)) for n in unknown)} is no key of this stack (it has "
              f"{', '.join(d.key_names())}). Fix: pass one of those with --key.", file=sys.stderr)
        return 1
    if not workdir.is_dir():
        print(f"--dir {shown(a.dir)} is {_not_a_file(workdir) or 'missing'}, not a folder. Fix: the folder holding "
              "compose.yaml and the env files.", file=sys.stderr)
        return 1
    # Each file holding a rotated variable, and the containers that read it: they pick the new value up only when
    # recreated (--no-deps: only those; without it compose recreates what they depend on too, every server behind
    # the router).
    groups = [(workdir / f, tuple(n for n in held if n in names), readers) for f, held, readers in d.env_files()]
    groups = [g for g in groups if g[1]]
    # Every key (no --key): an env file the folder lacks is one nothing rendered there reads (systemd with
    # --drop monitoring makes no grafana.env); its keys are left, and said so. None there at all: render first.
    absent = [g for g in groups if not a.key and not g[0].exists() and not g[0].is_symlink()]
    if absent and len(absent) < len(groups):
        groups = [g for g in groups if g not in absent]
        for path, held, _ in absent:
            print(f"{shown(str(path))} is not there (nothing rendered into {shown(a.dir)} reads it): "
                  f"{', '.join(held)} not rotated.", file=sys.stderr)
        names = tuple(n for _, held, _ in groups for n in held)
    for path, _, _ in groups:
        if (what := _not_a_file(path)) or path.is_symlink():
            print(f"{a.spec}: {shown(str(path))} is {what or 'a symbolic link'}, not an env file this tool made; nothing "
                  "was rotated. Fix: move it away and render the spec again (it creates the env files).", file=sys.stderr)
            return 1
    try:
        rotate_keys([(path, rotated) for path, rotated, _ in groups])
    except WriteError as e:
        print(f"{a.spec}: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # an env file that is not UTF-8
        print(f"{a.spec}: cannot read the env files ({type(e).__name__}: {str(e)[:120]}); nothing was rotated. Fix: "
              "an env file of NAME=VALUE lines in UTF-8, as render writes it.", file=sys.stderr)
        return 1
    readers = list(dict.fromkeys(r for _, _, rs in groups for r in rs))
    where = ", ".join(shown(str(path)) for path, _, _ in groups)
    running, why = _running_services(workdir)
    up = [r for r in readers if running is None or r in running]
    down = [r for r in readers if running is not None and r not in running]
    print(f"new {', '.join(names)} in {where} (never printed).", file=sys.stderr)
    if up:
        print(f"The old keys work until these are recreated: "
              f"{_in_dir(workdir, 'docker compose up -d --force-recreate --no-deps ' + ' '.join(up))}; then give "
              f"clients the new keys from {where}", file=sys.stderr)
    if running is None:
        print(f"(docker compose ps could not tell which of them run: {why}. Recreate only those that do.)",
              file=sys.stderr)
    if down:
        print(f"Not running, so nothing to recreate: {', '.join(down)} (they read the new keys when started).",
              file=sys.stderr)
    if GRAFANA_PASSWORD in names and (running is None or GRAFANA in running):
        # Grafana reads the variable only when its database is new; the volume keeps the old password.
        print("Grafana keeps its admin password in its volume; after the recreate set it from the new variable: "
              + _in_dir(workdir, "docker compose exec grafana sh -c 'grafana cli admin reset-admin-password "
                                 "\"$GF_SECURITY_ADMIN_PASSWORD\"'"), file=sys.stderr)
    elif GRAFANA_PASSWORD in names:
        print("Grafana keeps its admin password in its volume: once it runs, set it from the new variable: "
              + _in_dir(workdir, "docker compose exec grafana sh -c 'grafana cli admin reset-admin-password "
                                 "\"$GF_SECURITY_ADMIN_PASSWORD\"'"), file=sys.stderr)
    return 0


def cmd_bench(a) -> int:
    from . import bench

    d, warnings = load_deployment(a.spec)
    _print_warnings(warnings, a.spec)
    try:
        return bench.main(d, a.spec, a.service, Path(a.dir), a.key, a.concurrency, a.num_prompts, a.input_len,
                          a.output_len, a.images, a.output, a.max_minutes)
    except bench.BenchError as e:
        print(f"{a.spec}: {e}", file=sys.stderr)
        return 1


def cmd_presets(a) -> int:
    rows = [("name", "model", "GPUs", "GPU memory", "min vLLM", "summary")]
    for p in PRESETS.values():
        v = p.values
        gpus = "cpu" if v.get("device") == "cpu" else str(v.get("tensor_parallel_size", 1) * v.get("pipeline_parallel_size", 1))
        memory = f"{p.gpu_memory_gb:g} GB" if p.gpu_memory_gb else (f"~{p.download_gb:g} GB weights" if gpus != "cpu" else "-")
        rows.append((p.name, v["model"], gpus, memory, p.min_vllm or versions.OLDEST, p.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=False)) + "  " + r[5])
    return 0


def cmd_reference(a) -> int:
    from . import reference

    sys.stdout.write(reference.markdown())
    return 0


def cmd_args(a) -> int:
    d, warnings = load_deployment(a.spec)
    _print_warnings(warnings, a.spec)
    names = [s.name for s in d.services]
    if a.service is None and len(names) > 1:
        print(f"{a.spec}: several services ({', '.join(names)}). Fix: pass --service NAME.", file=sys.stderr)
        return 1
    if a.service is not None and a.service not in names:
        print(f"{a.spec}: no service {a.service!r}. Services: {', '.join(names)}.", file=sys.stderr)
        return 1
    s = d.service(a.service or names[0])
    env, argv = container.host_command(s, d.vllm_version)
    if a.json:
        print(json.dumps({"env": env, "argv": argv}))
    else:
        print(container.format_command(env, argv))
    return 0


def _not_a_file(path: Path) -> str | None:
    from .bench import not_a_file

    return not_a_file(path)


def _not_utf8(text: str) -> bool:
    """Whether an argument held bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def batch_input_problems(a) -> list[str]:
    """Every problem with batch-input's options, each naming the option, the value and the fix (none: [])."""
    problems = []
    for option, value in (("--model", a.model), ("--system", a.system)):
        if value is None:
            continue
        if _not_utf8(value):
            problems.append(f"{option} {shown(value)!r} holds bytes that are not UTF-8. Fix: pass it in UTF-8.")
        elif not value.strip():
            problems.append(f"{option} is empty. Fix: leave {option} out, or give it a value.")
    if a.max_tokens is not None:
        if not re.fullmatch(r"[0-9]{1,9}", a.max_tokens) or int(a.max_tokens) < 1:
            problems.append(f"--max-tokens {shown(a.max_tokens)!r} is not a whole number from 1 to 999,999,999 "
                            "(ASCII digits). Fix: e.g. --max-tokens 512, or leave it out (up to the context length).")
    src = Path(a.prompts)
    if what := _not_a_file(src):
        problems.append(f"{shown(a.prompts)} is {what}, not a file of prompts. Fix: pass a text file (one prompt per "
                        "line) or a .csv.")
    elif not src.exists():
        problems.append(f"{shown(a.prompts)} does not exist. Fix: pass a text file (one prompt per line) or a .csv.")
    if a.output != "-":
        out = Path(a.output)
        if out.suffix != ".jsonl":
            problems.append(f"-o {shown(a.output)}: the batch job reads only *.jsonl files. Fix: -o "
                            f"{shown(str(out.with_suffix('.jsonl')) if out.name else 'prompts.jsonl')}, or -o - for stdout.")
        elif out.exists() or out.is_symlink():
            what = _not_a_file(out)
            problems.append(f"{shown(a.output)} exists{f' and is {what}' if what else ''}; nothing was written. Fix: "
                            "choose another -o, or delete it first (it is never overwritten).")
        elif (parent := next((q for q in out.parents if q.exists()), None)) is not None and not parent.is_dir():
            problems.append(f"-o {shown(a.output)}: {shown(str(parent))} is a file, not a folder. Fix: another -o.")
    return problems


def cmd_batch_input(a) -> int:
    from .runtime import batch

    if problems := batch_input_problems(a):
        for problem in problems:
            print(f"batch-input: {problem}", file=sys.stderr)
        print("batch-input: nothing was written.", file=sys.stderr)
        return 1
    src = Path(a.prompts)
    try:
        text = src.read_bytes().decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as e:
        print(f"{shown(a.prompts)}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}). Fix: save it as "
              "UTF-8 (a spreadsheet: CSV UTF-8). Nothing was written.", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cannot read {shown(a.prompts)}: {e.strerror}. Nothing was written.", file=sys.stderr)
        return 1
    max_tokens = int(a.max_tokens) if a.max_tokens is not None else None
    try:
        requests = batch.prompts_to_requests(text, src.suffix.lower() == ".csv", a.model, max_tokens, a.system)
    except ValueError as e:
        print(f"{shown(a.prompts)}: {e} Nothing was written.", file=sys.stderr)
        return 1
    if not requests:
        print(f"{shown(a.prompts)} holds no prompt; nothing was written.", file=sys.stderr)
        return 1
    lines = [json.dumps(r, ensure_ascii=False) for r in requests]
    _, problems = batch.parse_lines("\n".join(lines))  # the job's own checks (unique custom_id, ...), one pass
    if problems:
        shown_problems = [f"request {n}: {message}" for n, _, message in problems[:20]]
        print(f"{shown(a.prompts)}: " + "; ".join(shown_problems) + " Nothing was written.", file=sys.stderr)
        return 1
    if a.output == "-":
        sys.stdout.buffer.write("".join(line + "\n" for line in lines).encode("utf-8"))
        sys.stdout.flush()
        print(f"wrote {len(requests)} request(s) to stdout", file=sys.stderr)
        return 0
    out = Path(a.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        batch.write_atomic(out, lines)
    except OSError as e:
        print(f"cannot write {shown(a.output)}: {e.strerror}. Nothing was written.", file=sys.stderr)
        return 1
    print(f"wrote {len(requests)} request(s) to {shown(a.output)}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy",
        description="Render a vLLM deployment spec into a docker compose stack.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    examples: list[str] = []

    def add(name, help_, example, func):
        examples.append(example)
        sp = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    r = add("render", "render a spec into compose YAML (and create the API-key env file)",
            "python -m deploy render deploy/stacks/default.yaml -o compose.yaml", cmd_render)
    r.add_argument("spec")
    r.add_argument("-o", "--output", help="file to write (default: stdout); with --target kubernetes, a folder")
    registry = targets()
    r.add_argument("--target", choices=list(registry), default=next(iter(registry)),
                   help="; ".join(f"{name}: {m.HELP}" for name, m in registry.items()))
    droppable = sorted({x for m in registry.values() for x in m.DROPPABLE})
    r.add_argument("--drop", action="append", default=[], choices=droppable, metavar="FEATURE",
                   help="leave FEATURE out (" + "; ".join(f"{name}: {', '.join(m.DROPPABLE)}" for name, m in
                                                           registry.items() if m.DROPPABLE) + "); every file's header says so")
    for name, m in registry.items():
        m.options(r.add_argument_group(f"{name} target"))
    c = add("check", "validate a spec and show every resolved value with its origin",
            "python -m deploy check deploy/stacks/default.yaml", cmd_check)
    c.add_argument("spec")
    dr = add("doctor", "preflight this host for a spec: Docker, Compose, NVIDIA runtime, GPUs, driver, disk, ports, "
             "secrets (exit 1 on any problem)", "python -m deploy doctor deploy/stacks/default.yaml", cmd_doctor)
    dr.add_argument("spec")
    dr.add_argument("--service", action="append", help="check this service (repeatable; default: the services "
                    "`docker compose up` starts, those without a profile)")
    dr.add_argument("--dir", default=".", help="the folder holding compose.yaml and the env files (default: .)")
    add("presets", "list the presets", "python -m deploy presets", cmd_presets)
    add("reference", "print the reference (every spec key, preset and target) as Markdown: docs/reference.md",
        "python -m deploy reference > docs/reference.md", cmd_reference)
    rk = add("rotate-keys", "replace the stack's keys in its env file with new generated ones (all, or --key NAME), "
             "e.g. after a leak; prints what to recreate", "python -m deploy rotate-keys deploy/stacks/default.yaml",
             cmd_rotate_keys)
    rk.add_argument("spec")
    rk.add_argument("--key", action="append", help="only this variable (repeatable; default: every key of the stack)")
    rk.add_argument("--dir", default=".", help="the folder holding compose.yaml and the env files (default: .)")
    be = add("bench", "measure a running service with vLLM's own `vllm bench serve`, run from the service's image "
             "through the router if there is one: a table of req/s, tok/s, TTFT and TPOT per concurrency, and a JSON file",
             "python -m deploy bench deploy/stacks/default.yaml --service glm-4.5-air --concurrency 1,16,64", cmd_bench)
    be.add_argument("spec")
    be.add_argument("--service", required=True, help="the service to measure")
    be.add_argument("--dir", default=".", help="the folder holding compose.yaml and the env files (default: .)")
    # Numbers stay text here: bench checks them (ASCII digits, bounds, the service's limits) with messages naming the fix.
    be.add_argument("--concurrency", help="levels, comma-separated (default: 1,16,64,256; a CPU service 1,4)")
    be.add_argument("--num-prompts", help="requests per level (default: 4 × the level, at least 8)")
    be.add_argument("--input-len", help="random prompt tokens (default: 1024; a CPU service 128)")
    be.add_argument("--output-len", help="tokens out, EOS ignored (default: 256; a CPU service 32)")
    be.add_argument("--images", help="random images per request (224² or 672²; default: 0)")
    be.add_argument("--max-minutes", help="a CPU service: refuse sizes estimated to take longer (default: 10)")
    be.add_argument("--key", help="the env-file variable whose key to send (default: VLLM_API_KEY, or the first "
                    "router key that may use the model)")
    be.add_argument("-o", "--output", help="the JSON file (default: bench/SERVICE-TIME.json beside compose.yaml)")
    g = add("args", "print the `vllm serve` command for one service (to run without Docker)",
            "python -m deploy args deploy/stacks/default.yaml --service glm-4.5-air", cmd_args)
    g.add_argument("spec")
    g.add_argument("--service", help="service name (needed when the spec has several)")
    g.add_argument("--json", action="store_true", help="print {env, argv} as JSON")
    b = add("batch-input", "turn prompts (a text file, one per line, or a CSV with a `prompt` column and optional "
            "`custom_id`, `system`) into a batch job's JSONL input",
            "python -m deploy batch-input prompts.txt -o batch/glm-4.5-air/input/prompts.jsonl", cmd_batch_input)
    b.add_argument("prompts")
    b.add_argument("-o", "--output", required=True, help="the .jsonl file to create (never overwritten); - for stdout")
    b.add_argument("--model", help="served model name (default: the job's model)")
    b.add_argument("--max-tokens", help="max_tokens of every request, at least 1 (default: up to the context length)")
    b.add_argument("--system", help="a system prompt for every request")
    p.epilog = "examples:\n" + "".join(f"  {x}\n" for x in examples)  # one per command, from the commands themselves
    p.add_argument("--version", action="version", version=f"vllm-compose {pins.PROJECT} (vLLM {versions.OLDEST}–{versions.NEWEST}, default {pins.VLLM})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        for p in e.problems:
            print(p.format(e.source), file=sys.stderr)
        n = len([p for p in e.problems if not p.warning])
        print(f"{e.source}: {n} error(s); nothing was written.", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except envfile.EnvFileError as e:  # an env file compose would read otherwise (it names the file, line and fix)
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
