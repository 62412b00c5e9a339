"""Stage 5 — the command line: `python -m deploy {render,check,presets,args}`.

Exit codes: 0 ok, 1 bad spec (every problem printed, no traceback), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import render, spec, versions
from .errors import Collector, SpecError
from .presets import PRESETS
from .resolve import Deployment, resolve
from .write import atomic_write, ensure_env_file, header

EXAMPLES = """\
examples:
  python -m deploy render deploy/stacks/default.yaml -o compose.yaml
  python -m deploy check deploy/stacks/default.yaml
  python -m deploy presets
  python -m deploy args deploy/stacks/default.yaml --service glm-4.5-air
"""


def load_deployment(path: str) -> tuple[Deployment, Collector]:
    stack, c = spec.load(path)
    d = resolve(stack, c)
    c.raise_if_errors(path)
    return d, c


def _print_warnings(c: Collector, source: str) -> None:
    for p in c.warnings:
        print(p.format(source), file=sys.stderr)


def cmd_render(a) -> int:
    d, c = load_deployment(a.spec)
    _print_warnings(c, a.spec)
    text = render.compose_yaml(d, header(a.spec))
    if a.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    out = Path(a.output)
    atomic_write(out, text)
    env = out.parent / d.env_file
    if any(s.values.get("api_key", True) for s in d.services) and ensure_env_file(env):
        print(f"created {env} (mode 0600) with a new API key; clients read it from there", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_check(a) -> int:
    d, c = load_deployment(a.spec)
    _print_warnings(c, a.spec)
    print(f"{a.spec}: ok — vLLM {d.vllm_version}, {len(d.services)} service(s)")
    for s in d.services:
        print(f"\n[{s.name}]")
        for key in sorted(s.values):
            print(f"  {key:26} {s.values[key]!r:40} ({s.sources.get(key, 'default')})")
    return 0


def cmd_presets(a) -> int:
    rows = [("name", "model", "TP", "device", "summary")]
    for p in PRESETS.values():
        v = p.values
        rows.append((p.name, v["model"], str(v.get("tensor_parallel_size", 1)), v.get("device", "gpu"), p.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)) + "  " + r[4])
    return 0


def cmd_args(a) -> int:
    d, c = load_deployment(a.spec)
    _print_warnings(c, a.spec)
    names = [s.name for s in d.services]
    if a.service is None and len(names) > 1:
        print(f"{a.spec}: several services ({', '.join(names)}). Fix: pass --service NAME.", file=sys.stderr)
        return 1
    if a.service is not None and a.service not in names:
        print(f"{a.spec}: no service {a.service!r}. Services: {', '.join(names)}.", file=sys.stderr)
        return 1
    s = d.service(a.service or names[0])
    env, argv = render.host_command(s, d.vllm_version)
    if a.json:
        print(json.dumps({"env": env, "argv": argv}))
    else:
        print(render.format_command(env, argv))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy",
        description="Render a vLLM deployment spec into a docker compose stack.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_, example, func):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=func)
        return sp

    r = add("render", "render a spec into compose YAML (and create the API-key env file)",
            "python -m deploy render deploy/stacks/default.yaml -o compose.yaml", cmd_render)
    r.add_argument("spec")
    r.add_argument("-o", "--output", help="file to write (default: stdout)")
    c = add("check", "validate a spec and show every resolved value with its origin",
            "python -m deploy check deploy/stacks/default.yaml", cmd_check)
    c.add_argument("spec")
    add("presets", "list the presets", "python -m deploy presets", cmd_presets)
    g = add("args", "print the `vllm serve` command for one service (to run without Docker)",
            "python -m deploy args deploy/stacks/default.yaml --service glm-4.5-air", cmd_args)
    g.add_argument("spec")
    g.add_argument("--service", help="service name (needed when the spec has several)")
    g.add_argument("--json", action="store_true", help="print {env, argv} as JSON")
    p.add_argument("--version", action="version", version=f"vllm-compose 0.1.0 (vLLM {versions.OLDEST}–{versions.NEWEST}, default {versions.DEFAULT})")
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


if __name__ == "__main__":
    sys.exit(main())
