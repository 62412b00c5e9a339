"""Stage 4 — write: the only stage that touches disk.

Files are written atomically (temp file + rename), so a failed run leaves the
old file or nothing. The API keys and Grafana's password live in env files created
with mode 0600 next to compose.yaml, one per set of readers (Deployment.env_files),
and are never printed or written anywhere else.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from . import envfile
from .facts import GRAFANA, SERVER_USER
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


def _without(text: str, entries: list[envfile.Entry], names, replace: dict[str, str] | None = None) -> str:
    """TEXT with the lines of the ENTRIES that set one of NAMES removed (or, for a name in REPLACE, the first of
    them replaced by `NAME=value`); every other line kept as it was. Lines end at `\\n`, as compose reads them."""
    lines = text.split("\n")
    drop: set[int] = set()
    put: dict[int, str] = {}
    for e in entries:
        if e.name in names:
            drop.update(range(e.first - 1, e.last))
            if replace and e.name in replace and e.name not in put.values():
                put[e.first - 1] = e.name
    out = [f"{put[i]}={replace[put[i]]}" if i in put and replace else line
           for i, line in enumerate(lines) if i not in drop or i in put]
    return "\n".join(out)


def _link_problem(path: Path, folder: Path) -> str | None:
    """Why PATH (an env file about to be written) must not be: a symbolic link, or a file outside FOLDER (another
    stack's, another reader's: writing it would give them a secret that is not theirs)."""
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        return (f"{path} is a symbolic link (to {path.resolve()}), so it is not edited: its target may be another "
                "stack's or another reader's env file. Fix: replace the link with a file of its own (delete it and "
                "render again, which creates it), or add the missing lines to the target yourself.")
    return None


def check_env_files(folder: Path, files: list[tuple[str, tuple[str, ...], tuple[str, ...]]],
                    out: Path | None = None) -> None:
    """Every problem of the stack's env files in FOLDER, before anything is written (raised as one WriteError
    naming each file, line and fix): a file in the way of OUT, not a file, a link about to be edited, two names
    for one file, text compose reads differently, a key empty, blank, set twice or taken from the shell."""
    problems: list[str] = []
    real: dict[Path, str] = {}
    for name, names, _ in files:
        env = folder / name
        if out is not None and env.resolve() == out.resolve():
            problems.append(f"env file {env.name} would overwrite the output {out}. Fix: choose another -o or env_file.")
            continue
        if not env.exists():
            if env.is_symlink():
                problems.append(f"{env} is a symbolic link to {os.readlink(env)}, which does not exist. Fix: delete the "
                                "link and render again (it creates the file).")
            continue
        if not env.is_file():
            problems.append(f"{env} exists and is not a file. Fix: move it away or set env_file.")
            continue
        if (other := real.setdefault(env.resolve(), name)) != name:
            problems.append(f"{env} and {folder / other} are one file (a symbolic link), so each reader would see "
                            "the other's keys. Fix: give each a file of its own (delete the link and render again).")
            continue
        try:
            _, entries = envfile.load(env)
        except (envfile.EnvFileError, OSError) as e:
            problems.append(str(e))
            continue
        problems += envfile.check_keys(env, entries, names)
        if any(n not in envfile.values(entries) for n in names) and (why := _link_problem(env, folder)):
            problems.append(why)
    if problems:
        raise WriteError("\n".join(problems))


def rotate_keys(files: list[tuple[Path, tuple[str, ...]]]) -> None:
    """Give each of the NAMES of each env file a new generated key, in place (written whole, mode kept); every other
    line unchanged. Only files this tool made are touched, and none unless all can be. Raises WriteError naming
    the fix."""
    for path, names in files:
        if not path.is_file():
            raise WriteError(f"{path} does not exist. Fix: render the spec first (it creates the env files), or pass --dir.")
        if why := _link_problem(path, path.parent):
            raise WriteError(why)
        try:
            text, entries = envfile.load(path)
        except envfile.EnvFileError as e:
            raise WriteError(str(e)) from None
        if problems := envfile.check_keys(path, entries, names):
            raise WriteError("\n".join(problems))
        if not ours(text):
            raise WriteError(f"{path} was not made by this tool, so it is left alone. Fix: replace the keys in it "
                             "yourself (each `NAME=sk-...`, 20 characters or more).")
        if missing := [n for n in names if n not in envfile.values(entries)]:
            raise WriteError(f"{path} has no {', '.join(missing)}. Fix: render the spec again (it adds missing keys).")
    for path, names in files:
        text, entries = envfile.load(path)
        atomic_write(path, _without(text, entries, names, {n: new_key() for n in names}), path.stat().st_mode & 0o777)


def check_host_folders(folder: Path, d: Deployment) -> None:
    """The host folders render makes (media, batch input/output, relative to FOLDER): a file where one of them or a
    folder above it goes is refused before anything is written."""
    problems = []
    for s in d.services:
        wanted = [s.media_dir] if s.media_dir else []
        wanted += [s.batch.input, s.batch.output] if s.batch else []
        for relative in wanted:
            if Path(relative).is_absolute():
                continue
            path = folder / relative
            for p in (path, *path.parents):
                if p == folder or folder not in p.parents:
                    break
                if p.exists() and not p.is_dir():
                    problems.append(f"{p} is a file where the folder {path} of service {s.name} goes. Fix: move it "
                                    "away, or set the folder in the spec.")
                    break
    if problems:
        raise WriteError("\n".join(dict.fromkeys(problems)))


def write_file(out: Path, text: str, d: Deployment, env_files: frozenset[str] = frozenset(),
               host_folders: bool = True) -> list[str]:
    """A one-file target's output (compose.yaml) at OUT, the ENV_FILES (of Deployment.env_files) beside it (keys they
    lack, in those this tool made), and the host folders the services mount that are missing (made by the user who
    renders, so that the containers' user can read and write them: Docker would create them owned by root). Every
    check first. Returns what to tell the user."""
    check_env_files(out.parent, _wanted(d, env_files), out)  # every env file read and checked before any write
    if host_folders:
        check_host_folders(out.parent, d)
    atomic_write(out, text)
    notes = write_env_files(out.parent, d, env_files)
    notes.append(f"wrote {out}")
    return notes + (make_host_folders(out.parent, d) if host_folders else [])


def _wanted(d: Deployment, names: frozenset[str]) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return [x for x in d.env_files() if x[0] in names]


def write_env_files(folder: Path, d: Deployment, names: frozenset[str]) -> list[str]:
    """The env files NAMES (of Deployment.env_files) in FOLDER, checked by check_env_files first: each created (mode
    0600) or given the keys it lacks. Returns what to tell the user."""
    files = [(folder / f, held, readers) for f, held, readers in _wanted(d, names)]
    if not files:  # a target that writes none (Kubernetes: a Secret from them): nothing here is read
        return []
    notes = []
    main = folder / d.env_file
    # Before the keys were split by reader, env_file held them all: a key found there keeps its value.
    older = envfile.read(main) if main.is_file() else {}
    moved: list[str] = []
    for env, held, readers in files:
        existed = env.exists()
        added, carried, missing = ensure_env_file(env, held, older if env != main else None)
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
    main_text, main_entries = envfile.load(main) if moved else ("", [])
    if moved and ours(main_text) and not _link_problem(main, folder):
        atomic_write(main, _without(main_text, main_entries, moved), main.stat().st_mode & 0o777)
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
                if s.batch and name == s.batch.output:
                    notes += writable_by_job(root / path)
            elif not (root / path).exists():
                notes.append(f"note: {name} ({what}) does not exist; create it before the service starts")
            elif s.batch and name == s.batch.output and not job_can_write(root / path):
                notes.append(f"warning: {root / path} ({what}) cannot be written by uid {JOB_UID}, the job's "
                             f"user, so the job will refuse to run. Fix: sudo chown {JOB_UID} {root / path}")
    return notes


# The batch job runs as the servers' user (container.SERVER_USER; the CPU image's own user has the same uid).
JOB_UID = int(SERVER_USER.split(":")[0])


def job_can_write(folder: Path) -> bool:
    st = folder.stat()
    return bool(st.st_mode & 0o002) or (st.st_uid == JOB_UID and bool(st.st_mode & 0o200))


def writable_by_job(folder: Path) -> list[str]:
    """Let the job's user write answers into FOLDER, which render just made as the rendering user: root hands it to
    that uid; another user, who cannot, opens it to all (the folder is inside the user's checkout)."""
    if os.geteuid() == JOB_UID:
        return []
    if os.geteuid() == 0:
        os.chown(folder, JOB_UID, -1)
        return [f"  owned by uid {JOB_UID}: the batch job runs as that user and writes its answers there"]
    folder.chmod(0o777)
    return [f"  made writable by every user (mode 777): the batch job runs as uid {JOB_UID} and writes its answers "
            f"there; or `sudo chown {JOB_UID} {folder}` and chmod 755 it"]


def write_tree(out: Path, files: dict[str, str], marker: str, d: Deployment | None = None,
               env_files: frozenset[str] = frozenset()) -> list[str]:
    """FILES (paths relative to the folder OUT → text) written atomically. Every path is checked before anything is
    written: a file already there is replaced only if its first line carries MARKER (a file this tool made); a
    folder, a link, a FIFO or any other non-file in the way, or a file where a folder is needed, is refused. The
    ENV_FILES of D's go beside them (created mode 0600, or given the keys they lack). Returns what to tell the
    user."""
    problems = []
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise WriteError(f"{out} is {'a symbolic link' if out.is_symlink() else 'not a folder'}; nothing was written. "
                         "Fix: give -o a folder (a new one is made).")
    for rel in files:
        path = out / rel
        for parent in list(path.relative_to(out).parents)[:-1]:
            where = out / parent
            if where.is_symlink() or (where.exists() and not where.is_dir()):
                problems.append(f"{where} is in the way of {path} (not a folder)")
        try:
            mode = path.lstat().st_mode  # never opened before it is known to be a plain file: a FIFO would block
        except FileNotFoundError:
            continue
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
            continue
        if not stat.S_ISREG(mode):
            what = ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a folder" if stat.S_ISDIR(mode) else "not a regular file")
            problems.append(f"{path} is {what}, where a generated file goes")
            continue
        with path.open("rb") as f:
            first = f.readline(4096).decode("utf-8", "replace")
        if marker not in first:
            problems.append(f"{path} exists and was not written by this tool")
    if problems:
        raise WriteError("\n".join(f"{p}; nothing was written. Fix: move it away or choose an empty folder with -o."
                                   for p in dict.fromkeys(problems)))
    if d is not None:
        check_env_files(out, _wanted(d, env_files))
    for rel, text in files.items():
        atomic_write(out / rel, text)
    return write_env_files(out, d, env_files) if d is not None else []
