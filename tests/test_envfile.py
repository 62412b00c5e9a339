"""deploy/envfile.py against the real parser: `docker compose config` (compose v2, compose-go's dotenv) is the
oracle. Hypothesis writes env files from pieces compose treats specially (export, `NAME: value`, quotes, escapes,
inline comments, CRLF, a BOM, duplicates); every file this project's parser accepts must give, for every literal
variable, exactly the value compose gives the container. Many files go into one compose call (one service each),
so the property costs a few compose runs. The compose CLI needs no Docker engine for `config`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from deploy import envfile

COMPOSE = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
needs_compose = pytest.mark.skipif(not COMPOSE, reason="needs the docker CLI with the compose v2 plugin "
                                   "(bash .ci/run installs it); `docker compose config` needs no engine")


def compose_env(folder: Path, files: list[bytes]) -> list[dict[str, str] | str]:
    """For each env file's bytes: the environment compose gives a service reading it, or compose's error."""
    body = "".join(f"  s{i}:\n    image: busybox\n    env_file: [e{i}.env]\n" for i in range(len(files)))
    for i, data in enumerate(files):
        (folder / f"e{i}.env").write_bytes(data)
    (folder / "compose.yaml").write_text("services:\n" + body)
    # No shell variables: `$X` and `NAME` alone read nothing from this test's environment.
    r = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=folder, capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")})
    if r.returncode:
        return [r.stderr] * len(files)
    services = json.loads(r.stdout)["services"]
    # `config` writes a value's `$` as `$$` (so that its output reads back the same): the container gets one.
    return [{k: ("" if v is None else v.replace("$$", "$")) for k, v in (services[f"s{i}"].get("environment") or {}).items()}
            for i in range(len(files))]


def ours(data: bytes) -> dict[str, str] | None:
    """The values as this project reads them; None when it refuses the file, or when a value comes from the shell
    (compose checks those itself: `${` unclosed is its error; the stack's keys refuse them, test below)."""
    try:
        entries = envfile.parse(envfile.decode(data))
    except envfile.EnvFileError:
        return None
    if not all(e.literal for e in entries):
        return None
    return envfile.values(entries)


NAMES = st.sampled_from(["A", "KEY", "VLLM_API_KEY", "a.b", "x-y", "K[0]", "Ü", "export", "_1"])
PLAIN = st.text(alphabet="ab 1#\\'\"=:${}\t\u00a0", max_size=8)
SINGLE = st.text(alphabet="ab #${}\\\"\n", max_size=6).map(lambda t: f"'{t}'")
DOUBLE = st.text(alphabet="ab #\\'ntr0177\n", max_size=8).map(lambda t: '"' + t.replace('"', '') + '"')
VALUES = st.one_of(PLAIN, SINGLE, DOUBLE)
STATEMENT = st.tuples(st.sampled_from(["", " ", "\t", "export ", "export\t"]), NAMES,
                      st.sampled_from(["=", ":", " = ", ": ", "=  "]), VALUES,
                      st.sampled_from(["", " # note", "#x", " "])).map("".join)
LINE = st.one_of(STATEMENT, STATEMENT, st.sampled_from(["", "# comment", "   ", "#A=1", "KEY", "export A"]))
FILES = st.tuples(st.booleans(), st.lists(LINE, max_size=5), st.sampled_from(["\n", "\r\n"]), st.booleans()).map(
    lambda t: ((envfile.BOM if t[0] else "") + t[2].join(t[1]) + (t[2] if t[3] else "")).encode())


@needs_compose
# No shrinking: each step is a compose run; the failing batch is printed whole.
@settings(max_examples=int(os.environ.get("ENVFILE_EXAMPLES", "12")), deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FILES, min_size=40, max_size=40))
def test_accepted_files_read_as_compose_reads_them(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("oracle")
    mine = [ours(f) for f in files]
    accepted = [(f, m) for f, m in zip(files, mine, strict=True) if m is not None]
    theirs = compose_env(folder, [f for f, _ in accepted])
    for (data, m), t in zip(accepted, theirs, strict=True):
        assert isinstance(t, dict), f"compose refused a file this project accepts: {data!r}: {t}"
        assert {k: t.get(k) for k in m} == m, f"{data!r}: compose {t}, ours {m}"
    assert len(accepted) >= len(files) // 5, "the parser refuses most files: the property tests little"


CASES = [
    b"A=1\nexport B = two # c\nC: three\nD=\"x\\ny\\101\\0101\"\nE='q\\'r' # x\nF=a#b\nG=\nH= #z\nI-J.K[0]=v\r\n"
    b"L=\"multi\nline\"\nA=last\n",
    "\ufeffVLLM_API_KEY=sk-bom\r\n".encode(),
    b"export VLLM_API_KEY='sk-$single'\n",
    b"KEY = \"quoted # not a comment\" # comment\n",
    b'A="\\0" B="\\012" C="\\0101" D="\\0400"\n',
]


@needs_compose
@pytest.mark.parametrize("data", CASES)
def test_examples_read_as_compose_reads_them(tmp_path, data):
    (theirs,) = compose_env(tmp_path, [data])
    assert isinstance(theirs, dict), theirs
    mine = ours(data)
    assert mine and {k: theirs.get(k) for k in mine} == mine


@needs_compose
@pytest.mark.parametrize("data", [b"A='open\n", b"A B=1\n", b"A/B=1\n", b"KEY=\"never closed\n"])
def test_what_compose_refuses_is_refused(tmp_path, data):
    assert not isinstance(compose_env(tmp_path, [data])[0], dict)
    with pytest.raises(envfile.EnvFileError, match=r"line \d"):
        envfile.parse(data.decode())


def test_non_utf8_is_refused_with_its_line(tmp_path):
    """Compose reads the raw bytes; a key it would read differently from us is refused, naming the line."""
    f = tmp_path / "secrets.env"
    f.write_bytes(b"# ok\nVLLM_API_KEY=sk-\xff\xfe0000000000000000000\n")
    with pytest.raises(envfile.EnvFileError, match=r"line 2: bytes that are not UTF-8"):
        envfile.read(f)


@pytest.mark.parametrize("text, problem", [
    ("VLLM_API_KEY=\n", "line 1: VLLM_API_KEY is empty"),
    ("VLLM_API_KEY= \t \r\n", "line 1: VLLM_API_KEY is empty"),
    ("# c\nVLLM_API_KEY='  '\n", "line 2: VLLM_API_KEY is empty"),
    ("VLLM_API_KEY=\"\"\n", "line 1: VLLM_API_KEY is empty"),
    ("export VLLM_API_KEY: \n", "line 1: VLLM_API_KEY is empty"),
    ("VLLM_API_KEY\n", "line 1: VLLM_API_KEY's value comes from the shell"),
    ("VLLM_API_KEY=$KEY\n", "line 1: VLLM_API_KEY's value comes from the shell"),
    ("VLLM_API_KEY=sk-aaaaaaaaaaaaaaaaaaaaaa\nVLLM_API_KEY=sk-bbbbbbbbbbbbbbbbbbbbbbb\n", "lines 1, 2 each set VLLM_API_KEY"),
])
def test_key_problems_name_the_line_and_never_the_value(text, problem):
    problems = envfile.check_keys("secrets.env", envfile.parse(text), ["VLLM_API_KEY"])
    assert len(problems) == 1 and problem in problems[0] and "Fix:" in problems[0]
    assert "sk-a" not in problems[0] and "sk-b" not in problems[0]
