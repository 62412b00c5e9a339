"""The stack's env files (secrets.env, router-keys.env, grafana.env, and the folder's .env), read the way docker
compose reads them. Every reader in this package (render, rotate-keys, doctor, bench) goes through `load`/`read`;
only deploy/write.py writes them.

The rules, from compose-go's dotenv parser (compose-spec/compose-go, dotenv/parser.go and godotenv.go, the
library docker compose v2 reads `env_file:` with), checked against `docker compose config` by tests/test_envfile.py:

- The file is bytes; a UTF-8 byte-order mark at the very start is skipped. Compose does not check the encoding:
  here bytes that are not UTF-8 are refused, naming the line (a key compose would read differently is worse than
  an error).
- Lines end at `\\n` only. Blank lines and lines whose first non-blank character is `#` are skipped. Blank is
  Go's unicode.IsSpace (so a `\\r` of a CRLF file is blank too).
- A statement may start with `export` and blanks (`export NAME=value`, as a shell file), which are dropped.
- The name runs up to the first `=` or `:` (`NAME: value` is the same as `NAME=value`), blanks around it
  dropped. It may hold letters, digits (of any script), `_`, `.`, `-`, `[` and `]`; any other character, or a
  blank inside it, is an error. A name with neither `=` nor `:` before the end of its line (`NAME` alone) takes
  its value from the shell that runs compose, if set there.
- Blanks after the `=` are dropped. Then:
  - unquoted: the value runs to the end of the line; from ` #` on it is a comment (`a#b` keeps its `#`); blanks
    at its end are dropped; `$NAME`, `${NAME}` (and `$$`) are replaced from the shell and earlier lines.
  - `'single'` or `"double"` quoted: the value runs to the next quote of its kind not preceded by `\\` and may
    span lines; `\\'` / `\\"` stand for the quote, any other `\\x` is kept as it is. Double-quoted values then
    have their escapes read (`\\n`, `\\r`, `\\t`, `\\\\`, `\\"`, octal `\\0NN`, ...) and `$` replaced as unquoted
    ones; single-quoted values are taken literally. What follows the closing quote on its line is read as a
    new statement (a ` # comment` there is skipped). A quote that is never closed is an error.
- A name set twice: the last one wins.

Where compose's value depends on the shell (`$` in an unquoted or double-quoted value, or `NAME` alone), the value
cannot be known here: `Entry.literal` is False, and the stack's keys refuse it (check_keys). Such a value is
otherwise left to compose, which checks it itself (an unclosed `${` is its error at `docker compose up`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

BOM = "\ufeff"
# Go's unicode.IsSpace (Python's str.isspace also counts \x1c-\x1f, which Go does not).
_GO_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}
_SPACE = set("\t\v\f\r \x85\xa0")  # compose's isSpace: blank, but not a line break
_EXPORT = re.compile(r"export[\t\n\v\f\r ]+")  # Go RE2's \s: [\t\n\f\r ] (and \v in newer RE2)
_ESCAPE = re.compile(r"\\(?:[abcfnrtv$\"\\]|0[0-9]{0,3})")
_ESCAPES = {"a": "\a", "b": "\b", "c": "\\c", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\"": "\"", "\\": "\\"}


class EnvFileError(ValueError):
    """An env file compose would not read, or read differently than this tool: the message names the file, the
    line and the fix, and never holds a value from the file."""


@dataclass(frozen=True)
class Entry:
    name: str
    value: str  # as compose gives it to the container (when literal)
    first: int  # the lines (1-based, counted at `\n`) the statement spans
    last: int
    literal: bool = True  # False: compose fills it from the shell (`$` in the value, or the name alone)
    quote: str = ""  # "'", '"' or "" (unquoted)


def _letter_or_digit(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def _expand_escapes(text: str) -> str:
    def one(m: re.Match) -> str:
        s = m.group(0)
        if s == "\\$":
            return "$$"
        if s.startswith("\\0"):  # Go: `\0` becomes `\`, then exactly three octal digits make a character
            digits = s[2:]
            # (when they do not, the text stays with the `0` gone)
            return chr(int(digits, 8)) if re.fullmatch("[0-7]{3}", digits) and int(digits, 8) < 256 else "\\" + digits
        return _ESCAPES[s[1]]
    return _ESCAPE.sub(one, text)


def parse(text: str) -> list[Entry]:
    """The statements of an env file's TEXT (decoded, BOM already removed), in order. Raises EnvFileError
    ("line N: ...") where compose's parser fails."""
    entries: list[Entry] = []
    pos, line, n = 0, 1, len(text)
    while True:
        # The statement's start: skip blanks (counting lines) and comment lines.
        while pos < n and (text[pos] in _GO_SPACE or text[pos] == "#"):
            if text[pos] == "#":
                end = text.find("\n", pos)
                if end < 0:
                    return entries
                pos = end
                continue
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= n:
            return entries
        first = line
        m = _EXPORT.match(text, pos)
        if m:
            pos = m.end()
            line += text.count("\n", m.start(), m.end())
            while pos < n and text[pos] in _SPACE:
                pos += 1
        # The name.
        start, sep = pos, None
        while pos < n:
            ch = text[pos]
            if ch in _SPACE:
                pos += 1
                continue
            if ch in "=:\n":
                sep = ch
                break
            if ch in "_.-[]" or _letter_or_digit(ch):
                pos += 1
                continue
            raise EnvFileError(f"line {line}: {shown_char(ch)} cannot be part of a variable name (compose refuses it)")
        name = text[start:pos].rstrip("".join(_GO_SPACE))
        if " " in name:
            raise EnvFileError(f"line {line}: a variable name cannot contain a space (compose refuses it)")
        if sep is None:  # compose reads a last line `NAME` (no newline) as a variable named "" (refused here)
            raise EnvFileError(f"line {line}: a name without `=` and without a line end (compose misreads it)")
        if sep == "\n":  # NAME alone: from the shell
            entries.append(Entry(name, "", first, line, literal=False))
            pos += 1
            line += 1
            continue
        pos += 1
        while pos < n and text[pos] in _SPACE:
            pos += 1
        if pos < n and text[pos] in "'\"":
            quote, chars, escaped, i = text[pos], [], False, pos + 1
            value_line = line
            while i < n:
                ch = text[i]
                if ch == "\n":
                    line += 1
                if ch != quote:
                    if not escaped and ch == "\\":
                        escaped = True
                    else:
                        if escaped:
                            escaped = False
                            chars.append("\\")
                        chars.append(ch)
                    i += 1
                    continue
                if escaped:
                    escaped = False
                    chars.append(ch)
                    i += 1
                    continue
                break
            else:
                raise EnvFileError(f"line {value_line}: the value of {name} opens a {quote} quote that is never "
                                   "closed (compose refuses it)")
            value = "".join(chars)
            literal = True
            if quote == '"':
                value = _expand_escapes(value)
                literal = "$" not in value
            entries.append(Entry(name, value, first, line, literal, quote))
            pos = i + 1
        else:
            end = text.find("\n", pos)
            raw = text[pos:] if end < 0 else text[pos:end]
            value = raw.split(" #", 1)[0].rstrip("".join(_GO_SPACE))
            entries.append(Entry(name, value, first, line, "$" not in value, ""))
            if end < 0:
                return entries
            pos = end + 1
            line += 1


def shown_char(ch: str) -> str:
    return repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"


def decode(data: bytes, path: str | Path = "") -> str:
    """An env file's bytes as text: the BOM dropped, bytes that are not UTF-8 refused with their line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise EnvFileError(f"{path}: line {line}: bytes that are not UTF-8. Fix: save the file as UTF-8 (keys are "
                           "ASCII: sk-...).") from None
    return text[1:] if text.startswith(BOM) else text


def load(path: str | Path) -> tuple[str, list[Entry]]:
    """(text, entries) of the env file at PATH; EnvFileError naming the file and line where it cannot be read as
    compose reads it (OSError when it cannot be read at all)."""
    text = decode(Path(path).read_bytes(), path)
    try:
        return text, parse(text)
    except EnvFileError as e:
        raise EnvFileError(f"{path}: {e}. Fix: write that line as NAME=value (see deploy/envfile.py for the "
                           "rules compose follows).") from None


def values(entries: list[Entry]) -> dict[str, str]:
    """Name → value as the container sees it (the last of each name wins)."""
    return {e.name: e.value for e in entries}


def read(path: str | Path) -> dict[str, str]:
    return values(load(path)[1])


def name(line: str) -> str | None:
    """The variable a single line assigns; None for a comment, a blank line, or a line that is not one
    statement compose would read."""
    try:
        entries = parse(line)
    except EnvFileError:
        return None
    return entries[0].name if len(entries) == 1 and entries[0].literal else None


def check_keys(path: str | Path, entries: list[Entry], names: tuple[str, ...] | list[str]) -> list[str]:
    """The problems of NAMES in an env file (each with its line and fix; a key's value is never repeated): a key
    set but empty or blank (vLLM drops an empty key and then serves anyone), set twice, or whose value compose
    would take from the shell. A name not set at all is the caller's business (render adds it)."""
    problems = []
    for n in names:
        mine = [e for e in entries if e.name == n]
        if len(mine) > 1:
            lines = ", ".join(str(e.first) for e in mine)
            problems.append(f"{path}: lines {lines} each set {n} (compose takes the last). Fix: keep one line "
                            f"`{n}=sk-...`.")
        if not mine:
            continue
        e = mine[-1]
        if not e.literal:
            problems.append(f"{path}: line {e.first}: {n}'s value comes from the shell running compose (a `$` in "
                            f"it, or the name alone), so it may be empty. Fix: write the key itself: `{n}=sk-...`, "
                            "in single quotes if it holds a `$`.")
        elif not e.value.strip():
            problems.append(f"{path}: line {e.first}: {n} is empty, and an empty key is taken for no key (vLLM "
                            f"then serves anyone). Fix: delete the line and render again (it generates a key), "
                            f"or write one: `{n}=sk-` followed by 20 or more random characters.")
    return problems
