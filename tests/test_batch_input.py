"""`vllm-deploy batch-input`, the hostile pass: every option and input either read as a user means it or refused
with a message naming it, nothing written on refusal, never a traceback, never a file named `-`."""

from __future__ import annotations

import json
import os

import pytest

from deploy import cli
from deploy.runtime import batch


def run(tmp_path, capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["batch-input", *args])
    out, err = capsys.readouterr()
    return code, out, err


def requests_in(path) -> list[dict]:
    ok, bad = batch.parse_lines(path.read_text(encoding="utf-8"))  # as the job reads it
    assert bad == []
    return [r for _, r in ok]


def test_an_excel_csv_with_bom_crlf_quoted_line_breaks_and_a_huge_field(tmp_path, capsys):
    huge = "x" * 300_000  # past the csv module's default field limit (131,072)
    (tmp_path / "p.csv").write_bytes(("\ufeffcustom_id,prompt,system\r\nq1,\"Two\r\nlines, one prompt\",Be brief\r\n"
                                      f"q2,{huge},\r\n,,\r\n").encode())
    code, _, err = run(tmp_path, capsys, str(tmp_path / "p.csv"), "-o", str(tmp_path / "p.jsonl"))
    assert code == 0, err
    reqs = requests_in(tmp_path / "p.jsonl")
    assert [r["custom_id"] for r in reqs] == ["q1", "q2"]  # the BOM is not part of the first column's name
    assert reqs[0]["body"]["messages"] == [{"role": "system", "content": "Be brief"},
                                           {"role": "user", "content": "Two\r\nlines, one prompt"}]
    assert reqs[1]["body"]["messages"] == [{"role": "user", "content": huge}]


def test_a_large_csv_is_read(tmp_path, capsys):
    rows = "".join(f"r{i},Prompt number {i}\n" for i in range(100_000))
    (tmp_path / "big.csv").write_text("custom_id,prompt\n" + rows)
    code, _, err = run(tmp_path, capsys, str(tmp_path / "big.csv"), "-o", str(tmp_path / "big.jsonl"))
    assert code == 0 and "wrote 100000 request(s)" in err
    assert len(requests_in(tmp_path / "big.jsonl")) == 100_000


def test_short_csv_rows_are_refused_by_row_not_sent_as_null_prompts(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("custom_id,prompt\nq1,Hello\nq2\nq3,\n")
    code, _, err = run(tmp_path, capsys, str(tmp_path / "p.csv"), "-o", str(tmp_path / "p.jsonl"))
    assert code == 1 and "row 3: no prompt (the row has 1 of 2 columns)" in err and "row 4: no prompt" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_line_separators(tmp_path, capsys):
    """\\n, \\r\\n and \\r end a prompt; U+2028, U+0085 and form feeds are text inside it (str.splitlines() split
    there), and the JSONL written with them raw is still one request per line for the job."""
    (tmp_path / "p.txt").write_text("one\u2028still one\ntwo\r\nthree\rfour\x85 and\x0cmore\n\n", newline="")
    code, _, err = run(tmp_path, capsys, str(tmp_path / "p.txt"), "-o", str(tmp_path / "p.jsonl"))
    assert code == 0, err
    prompts = [r["body"]["messages"][0]["content"] for r in requests_in(tmp_path / "p.jsonl")]
    assert prompts == ["one\u2028still one", "two", "three", "four\x85 and\x0cmore"]
    assert "\u2028" in (tmp_path / "p.jsonl").read_text(encoding="utf-8")  # raw, as json.dumps(ensure_ascii=False)



def test_dash_writes_jsonl_bytes_to_stdout(tmp_path):
    import subprocess
    import sys

    (tmp_path / "p.txt").write_text("Héllo\n")
    r = subprocess.run([sys.executable, "-m", "deploy", "batch-input", "p.txt", "-o", "-"], cwd=tmp_path,
                       capture_output=True, env={**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": ""})
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["body"]["messages"][0]["content"] for x in r.stdout.decode().splitlines()] == ["Héllo"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


@pytest.mark.parametrize("value", ["0", "-5", "١٠", "1_0", "8.0", "", " 8", "9" * 30])
def test_max_tokens_must_be_a_positive_whole_number(tmp_path, capsys, value):
    (tmp_path / "p.txt").write_text("Hello\n")
    code, _, err = run(tmp_path, capsys, str(tmp_path / "p.txt"), "-o", str(tmp_path / "p.jsonl"), "--max-tokens", value)
    assert code == 1 and "--max-tokens" in err and "Fix:" in err and "Traceback" not in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("option", ["--model", "--system"])
@pytest.mark.parametrize("value", ["m\udcff", "", "   "])
def test_text_options_that_are_not_utf8_or_empty_are_refused(tmp_path, capsys, option, value):
    (tmp_path / "p.txt").write_text("Hello\n")
    code, _, err = run(tmp_path, capsys, str(tmp_path / "p.txt"), "-o", str(tmp_path / "p.jsonl"), option, value)
    assert code == 1 and option in err and "nothing was written" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path, capsys):
    (tmp_path / "p.csv").write_bytes("prompt\nCaf\xe9\n".encode("latin-1"))
    code, _, err = run(tmp_path, capsys, str(tmp_path / "p.csv"), "-o", str(tmp_path / "p.jsonl"))
    assert code == 1 and "not UTF-8 (byte 0xe9 at offset 10)" in err and "CSV UTF-8" in err


def test_fifos_folders_and_missing_files_are_called_what_they_are(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "p.txt").write_text("Hello\n")
    cases = [((str(tmp_path / "fifo"), "-o", str(tmp_path / "a.jsonl")), "is a FIFO, not a file of prompts"),
             ((str(tmp_path), "-o", str(tmp_path / "a.jsonl")), "is a folder, not a file of prompts"),
             ((str(tmp_path / "nope.txt"), "-o", str(tmp_path / "a.jsonl")), "nope.txt does not exist"),
             ((str(tmp_path / "p.txt"), "-o", str(tmp_path / "dir.jsonl")), "dir.jsonl exists and is a folder"),
             ((str(tmp_path / "p.txt"), "-o", str(tmp_path / "fifo.jsonl")), None),
             ((str(tmp_path / "p.txt"), "-o", str(tmp_path / "file/x.jsonl")), "is a file, not a folder"),
             ((str(tmp_path / "p.txt"), "-o", str(tmp_path / "p.json")), "the batch job reads only *.jsonl files")]
    os.mkfifo(tmp_path / "fifo.jsonl")
    cases[4] = (cases[4][0], "fifo.jsonl exists and is a FIFO")
    for args, message in cases:
        code, _, err = run(tmp_path, capsys, *args)
        assert code == 1 and message in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.jsonl", "fifo", "fifo.jsonl", "file", "p.txt"]


def test_a_non_utf8_file_name_is_read_and_shown_escaped(tmp_path, capsys):
    name = os.fsdecode(b"pr\xffompts.txt")
    (tmp_path / name).write_text("Hello\n")
    code, _, err = run(tmp_path, capsys, str(tmp_path / name), "-o", str(tmp_path / os.fsdecode(b"o\xfe.jsonl")))
    assert code == 0 and "o\\xfe.jsonl" in err
    code, _, err = run(tmp_path, capsys, str(tmp_path / name), "-o", str(tmp_path / os.fsdecode(b"o\xfe.jsonl")))
    assert code == 1 and "o\\xfe.jsonl exists" in err


def test_the_job_reads_raw_line_separators_inside_json_as_one_line():
    line = json.dumps({"custom_id": "a", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": "x\u2028y\x85z"}]}}, ensure_ascii=False)
    ok, bad = batch.parse_lines("\ufeff" + line + "\r\n" + line.replace('"a"', '"b"') + "\n")
    assert [r["custom_id"] for _, r in ok] == ["a", "b"] and bad == []


def test_batch_input_helper_never_overwrites_and_reads_csv(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("custom_id,prompt\nq1,Hello\nq2,\"Two, with a comma\"\n")
    out = tmp_path / "in" / "p.jsonl"
    assert cli.main(["batch-input", str(tmp_path / "p.csv"), "-o", str(out), "--max-tokens", "8"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["q1", "q2"]
    assert lines[1]["body"] == {"messages": [{"role": "user", "content": "Two, with a comma"}], "max_tokens": 8}
    before = out.read_text()
    assert cli.main(["batch-input", str(tmp_path / "p.csv"), "-o", str(out)]) == 1
    assert out.read_text() == before and "exists; nothing was written" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    assert cli.main(["batch-input", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "b.jsonl")]) == 1
    assert "no `prompt` column" in capsys.readouterr().err and not (tmp_path / "b.jsonl").exists()
    (tmp_path / "dup.csv").write_text("custom_id,prompt\nq1,Hello\nq1,Again\n")
    assert cli.main(["batch-input", str(tmp_path / "dup.csv"), "-o", str(tmp_path / "d.jsonl")]) == 1
    assert "request 2: custom_id 'q1' is also on line 1" in capsys.readouterr().err
    assert not (tmp_path / "d.jsonl").exists()


def test_batch_input_lines_are_checked_one_by_one():
    from deploy.runtime import batch

    text = "\n".join([
        '{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": []}}',
        "not json",
        '{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}',
        '{"custom_id": "b", "url": "/v1/chat/completions"}',
        '{"custom_id": "c", "method": "GET", "url": "/v1/models", "body": {}}',
        "[1]", "",
        '{"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "x"}}'])
    ok, bad = batch.parse_lines(text)
    assert [(n, r["custom_id"]) for n, r in ok] == [(1, "a"), (8, "d")]
    assert [(n, cid) for n, cid, _ in bad] == [(2, None), (3, "a"), (4, "b"), (5, "c"), (6, None)]
    assert "also on line 1" in bad[1][2] and all("Fix" in m for _, _, m in bad)
