"""Docs that cannot drift from the code: the generated reference, every YAML block of the README, the CLI's commands."""

from __future__ import annotations

import re

import pytest
import yaml

import deploy
from deploy import cli, reference
from deploy.errors import SpecError
from support import ROOT, check_golden

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, re.S)


def test_the_reference_is_the_codes(update_goldens):
    """docs/reference.md is `vllm-deploy reference`: every spec key with its doc, every preset, every target."""
    check_golden(ROOT / "docs/reference.md", reference.markdown(), update_goldens)


def test_the_reference_names_every_key_preset_and_target():
    from deploy.presets import PRESETS
    from deploy.spec import ServiceSpec, field_names
    from deploy.targets import targets

    text = reference.markdown()
    assert all(f"`services.NAME.{name}`" in text for name in field_names(ServiceSpec))
    assert all(f"`{name}`" in text for name in [*PRESETS, *targets()])


def _specs(block: str) -> list[str]:
    """The specs a README block shows: a whole spec; one per line (`services: {...}` each); or a fragment, which is
    added to the default stack as the README says (a `router:` section: the services' `port:` lines removed)."""
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and all(line.startswith("services:") for line in lines):
        return lines
    data = yaml.safe_load(block)
    if "services" in data:
        return [block]
    base = yaml.safe_load((ROOT / "deploy/stacks/default.yaml").read_text())
    if "router" in data:
        for body in base["services"].values():
            body.pop("port", None)
    return [yaml.safe_dump({**base, **data}, sort_keys=False)]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.splitlines()[0][:30])
def test_every_yaml_block_in_the_readme_passes_check(block):
    assert BLOCKS, "README.md has no YAML block"
    for i, text in enumerate(_specs(block)):
        try:
            deploy.load(f"README block, spec {i}", text=text)
        except SpecError as e:
            pytest.fail(f"{text}\n{e}")


def test_the_cli_lists_every_command_with_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["-h"])
    out = capsys.readouterr().out
    commands = cli.parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert re.search(rf"^  python -m deploy {name}\b", out, re.M), name
