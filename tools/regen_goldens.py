#!/usr/bin/env python3
"""Regenerate the golden files and compose.yaml — an explicit step, never done by a test.

    python tools/regen_goldens.py

Renders every spec in deploy/stacks/ and tests/specs/good/ into tests/golden/,
the default stack into compose.yaml, and the negative fixtures' messages into
tests/specs/bad/*.expected. Review the diff before committing it.
"""

import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import cli, render  # noqa: E402
from deploy.write import header  # noqa: E402


def rendered(spec: Path) -> str:
    d, _ = cli.load_deployment(str(spec.relative_to(ROOT)))
    return render.compose_yaml(d, header(str(spec.relative_to(ROOT))))


def main() -> None:
    os.chdir(ROOT)
    for spec in sorted([*ROOT.glob("deploy/stacks/**/*.yaml"), *ROOT.glob("tests/specs/good/*.yaml")]):
        (ROOT / "tests/golden" / f"{spec.stem}.compose.yaml").write_text(rendered(spec))
    (ROOT / "compose.yaml").write_text(rendered(ROOT / "deploy/stacks/default.yaml"))
    os.chdir(ROOT / "tests/specs")
    for spec in sorted(Path("bad").glob("*.yaml")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cli.main(["check", str(spec)])
        spec.with_suffix(".expected").write_text(err.getvalue())
    print("regenerated goldens, compose.yaml and negative fixtures; review `git diff`")


if __name__ == "__main__":
    main()
