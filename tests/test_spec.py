"""The spec stage (deploy/spec.py): bad and hostile specs refused with the expected messages, nothing written; the
loader raises nothing but SpecError."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy import cli, spec
from deploy.errors import SpecError
from support import EXAMPLES, SPECS, check_golden, deployment
from support import yaml_values as support_yaml_values

BAD = sorted(SPECS.glob("bad/*.yaml"))


@pytest.mark.parametrize("bad", BAD, ids=lambda p: p.stem)
def test_bad_spec_gives_expected_messages_and_writes_nothing(bad, tmp_path, monkeypatch, capsys, update_goldens):
    monkeypatch.chdir(SPECS)
    out = tmp_path / "compose.yaml"
    assert cli.main(["render", f"bad/{bad.name}", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    check_golden(bad.with_suffix(".expected"), err, update_goldens)
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["render"])
    assert e.value.code == 2


yaml_values = support_yaml_values()


field_names = st.sampled_from(spec.field_names(spec.ServiceSpec) + ["bogus"])


service_bodies = st.dictionaries(field_names, yaml_values, max_size=8)


stacks = st.fixed_dictionaries(
    {"services": st.dictionaries(st.text(min_size=1, max_size=8), service_bodies | yaml_values, max_size=3)},
    optional={"vllm_version": yaml_values | st.sampled_from(["0.10.0", "0.32.0", "0.9"]), "images": yaml_values},
)


@settings(max_examples=EXAMPLES(300), deadline=None)
@given(stacks | yaml_values)
def test_loader_only_ever_raises_spec_error(data):
    text = yaml.safe_dump(data)
    try:
        deployment(text)
    except SpecError as e:
        assert e.problems and all(p.message for p in e.problems)


HOSTILE = sorted(SPECS.glob("hostile/*.yaml"))


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda p: p.stem)
def test_hostile_spec_is_refused_cleanly(bad, tmp_path, capsys):
    """Each class of hostile input (alias bombs, recursion, odd keys and scalars, paths, versions, secrets):
    exit 1, a bounded message naming a path and a fix, nothing written, no traceback."""
    out = tmp_path / "out" / "compose.yaml"
    assert cli.main(["render", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) < 4000, err[:500]
    assert ": error: " in err and "Fix" in err, err
    assert not (tmp_path / "out").exists()
