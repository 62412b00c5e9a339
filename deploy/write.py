"""Stage 4 — write: the only stage that touches disk.

Files are written atomically (temp file + rename), so a failed run leaves the
old file or nothing. The API keys and Grafana's password live in env files created
with mode 0600 next to compose.yaml, one per set of readers (Deployment.env_files),
and are never printed or written anywhere else.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from . import envfile
from .facts import GRAFANA
from .resolve import Deployment
from .runtime.router_start import KEY_PREFIX, MIN_KEY_LEN


class WriteError(Exception):
    """Nothing was written; the message names the file and the fix."""


def shown(text: str) -> str:
    """TEXT (a file name the user gave) as it may appear in a generated file: one line of valid UTF-8, bytes
    that are not UTF-8 and control characters (a newline) escaped the way Python writes them."""
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    data = text.encode("utf-8")  # before anything is made on disk: an unwritable text leaves nothing behind
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


ENV_HEADER = "# Secrets made by `python -m deploy render` (mode 0600); clients send an API key as a Bearer token.\n"
OLD_HEADERS = ("# API keys for the vLLM servers and the router; clients send one as a Bearer token.\n",
               "# API key for the vLLM servers; clients send it as a Bearer token.\n")


def ours(text: str) -> bool:
    """Whether an env file's text is one this tool made (only those does it change)."""
    return text.startswith((ENV_HEADER, *OLD_HEADERS))


def new_key() -> str:
    """A key as the router requires it (deploy/runtime/router_start.py: the sk- form, long enough)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    assert len(key) >= MIN_KEY_LEN
    return key


def ensure_env_file(path: Path, names: tuple[str, ...], known: dict[str, str] | None = None
                    ) -> tuple[list[str], list[str], list[str]]:
    """Give the env file a value for each of NAMES it lacks: KNOWN's (a key the stack already has elsewhere, which
    clients may hold), else a generated key. Returns (generated, taken from KNOWN, missing).

    A missing file is created with mode 0600. A file we created (it starts with our header) gets the
    missing variables appended, its other lines and mode unchanged: its keys may be in clients' hands
    already. Any other file is left alone, and the names it lacks come back as `missing`.
    """
    known = known or {}
    lines = lambda ns: "".join(f"{n}={known.get(n) or new_key()}\n" for n in ns)  # noqa: E731
    if not path.exists():
        atomic_write(path, ENV_HEADER + lines(names), 0o600)
        lacking = list(names)
    else:
        text = path.read_text(encoding="utf-8")
        lacking = [n for n in names if n not in envfile.read(path)]
        if not lacking:
            return [], [], []
        if not ours(text):
            return [], [], lacking
        atomic_write(path, text + ("" if text.endswith("\n") else "\n") + lines(lacking), path.stat().st_mode & 0o777)
    return [n for n in lacking if not known.get(n)], [n for n in lacking if known.get(n)], []


def rotate_keys(files: list[tuple[Path, tuple[str, ...]]]) -> None:
    """Give each of the NAMES of each env file a new generated key, in place (written whole, mode kept); every other
    line unchanged. Only files this tool made are touched, and none unless all can be. Raises WriteError naming
    the fix."""
    for path, names in files:
        if not path.is_file():
            raise WriteError(f"{path} does not exist. Fix: render the spec first (it creates the env files), or pass --dir.")
        if not ours(path.read_text(encoding="utf-8")):
            raise WriteError(f"{path} was not made by this tool, so it is left alone. Fix: replace the keys in it "
                             "yourself (each `NAME=sk-...`, 20 characters or more).")
        if missing := [n for n in names if n not in envfile.read(path)]:
            raise WriteError(f"{path} has no {', '.join(missing)}. Fix: render the spec again (it adds missing keys).")
    for path, names in files:
        lines = [f"{line.partition('=')[0]}={new_key()}" if envfile.name(line) in names else line
                 for line in path.read_text(encoding="utf-8").splitlines()]
        atomic_write(path, "\n".join(lines) + "\n", path.stat().st_mode & 0o777)


def write_compose(out: Path, text: str, d: Deployment) -> list[str]:
    """compose.yaml at OUT, the env files beside it (keys they lack, in those this tool made), and the host folders
    the services mount that are missing (made by the user who renders, so that the containers' user can read
    and write them: Docker would create them owned by root). Returns what to tell the user."""
    check_env_files(out.parent, d, out)
    atomic_write(out, text)
    notes = write_env_files(out.parent, d)
    notes.append(f"wrote {out}")
    return notes + make_host_folders(out.parent, d)


def check_env_files(folder: Path, d: Deployment, out: Path | None = None) -> None:
    """Before anything is written: no env file may be the output itself or something other than a file."""
    for f, _, _ in d.env_files():
        env = folder / f
        if out is not None and env.resolve() == out.resolve():
            raise WriteError(f"env file {env.name} would overwrite the output {out}. Fix: choose another -o or env_file.")
        if env.exists() and not env.is_file():
            raise WriteError(f"{env} exists and is not a file. Fix: move it away or set env_file.")


def write_env_files(folder: Path, d: Deployment) -> list[str]:
    """The env files in FOLDER: each created (mode 0600) or given the keys it lacks. Returns what to tell the user."""
    files = [(folder / f, names, readers) for f, names, readers in d.env_files()]
    notes = []
    main = folder / d.env_file
    # Before the keys were split by reader, env_file held them all: a key found there keeps its value.
    older = envfile.read(main) if main.is_file() else {}
    moved: list[str] = []
    for env, names, readers in files:
        existed = env.exists()
        added, carried, missing = ensure_env_file(env, names, older if env != main else None)
        moved += carried
        if added or carried:
            notes.append(f"{'added to' if existed else 'created'} {env} (mode 0600): "
                         + "; ".join(([f"new key(s) {', '.join(added)}"] if added else [])
                                     + ([f"{', '.join(carried)} from {main.name}, same value(s)"] if carried else []))
                         + ("; log in to Grafana as admin with it" if readers == (GRAFANA,) else "; clients read them from there"))
        if missing:
            notes.append(f"warning: {env} lacks {', '.join(missing)}, and it is not a file this tool made, so it was "
                         "left alone. Fix: add a line `NAME=sk-<random>` for each (the router refuses to start without them)")
        if existed and env.stat().st_mode & 0o077:
            notes.append(f"warning: {env} can be read by other users. Fix: chmod 600 {env}")
    main_text = main.read_text(encoding="utf-8") if moved else ""
    if moved and ours(main_text):
        kept = [line for line in main_text.splitlines() if envfile.name(line) not in moved]
        atomic_write(main, "\n".join(kept) + "\n", main.stat().st_mode & 0o777)
        notes.append(f"removed {', '.join(moved)} from {main}: each container now sees only the keys it uses (the "
                     "servers restart once at the next `docker compose up -d`)")
    elif moved:
        notes.append(f"warning: {main} still holds {', '.join(moved)}, now read from its own env file. Fix: remove "
                     f"those lines from {main} (the servers need only VLLM_API_KEY)")
    return notes


def make_host_folders(root: Path, d: Deployment) -> list[str]:
    """The host folders the services mount (media, batch input and output) that are missing, made under ROOT (the
    output's folder) by the user who renders, so that the containers' user can use them (Docker would make them
    root's)."""
    notes = []
    for s in d.services:
        folders = [(s.batch.input, f"batch input of {s.name}"), (s.batch.output, f"batch output of {s.name}")] if s.batch else []
        if s.media_dir:
            folders.insert(0, (s.media_dir, f"media folder of {s.name}, mounted read-only at {s.allowed_local_media_path}"))
        for name, what in folders:
            path = Path(name)
            if not path.is_absolute() and not (root / path).exists():
                (root / path).mkdir(parents=True)
                notes.append(f"created {root / path} ({what})")
            elif not (root / path).exists():
                notes.append(f"note: {name} ({what}) does not exist; create it before the service starts")
    return notes


def write_tree(out: Path, files: dict[str, str], marker: str, private: tuple[str, ...] = (),
               d: Deployment | None = None) -> list[str]:
    """FILES (paths relative to the folder OUT → text) written atomically. Every path is checked before anything is
    written: a file already there is replaced only if its first line carries MARKER (a file this tool made); a
    folder, a link, a FIFO or any other non-file in the way, or a file where a folder is needed, is refused. With D,
    the stack's env files go beside them (created mode 0600, or given the keys they lack). Returns what to tell the
    user."""
    problems = []
    if out.exists() and (out.is_symlink() or not out.is_dir()):
        problems.append(f"{out} exists and is not a folder")
    for rel in files:
        path = out / rel
        for parent in [p for p in path.relative_to(out).parents if str(p) != "."]:
            if (out / parent).is_symlink() or ((out / parent).exists() and not (out / parent).is_dir()):
                problems.append(f"{out / parent} is in the way (a folder is needed there)")
        if path.is_symlink() or (path.exists() and not path.is_file()):
            problems.append(f"{path} exists and is not a plain file")
        elif path.exists():
            try:
                with path.open("rb") as f:
                    first = f.readline(4096).decode("utf-8", "replace")
            except OSError as e:
                problems.append(f"{path}: {e.strerror}")
                continue
            if marker not in first:
                problems.append(f"{path} exists and was not written by this tool")
    if problems:
        raise WriteError("; ".join(dict.fromkeys(problems)) + ". Nothing was written. Fix: choose an empty folder "
                         "with -o, or move those away.")
    if d is not None:
        check_env_files(out, d)
    for rel, text in files.items():
        atomic_write(out / rel, text, 0o600 if rel in private else 0o644)
    return write_env_files(out, d) if d is not None else []
