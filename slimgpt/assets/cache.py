"""The asset cache: where it lives, per-asset manifests with sha256 checksums, atomic builds.

Layout of the cache directory (default ``~/.cache/slimgpt``, env ``SLIMGPT_CACHE``, or an argument)::

    wheels/<wheel files>          registry downloads, kept so that a rebuild needs no network
    assets/<name>/asset.json      the manifest of one asset: sources, license, files with sha256 and size
    assets/<name>/...             the asset itself (a model directory, JSONL files, ...)
    manifest.json                 an index of every asset's manifest (regenerated after each build)

An asset directory only ever appears by ``os.rename`` of a fully built temporary directory that already
holds its manifest, so a killed build leaves at most a ``.tmp-*`` directory that is never loaded and is
removed by the next build of that asset.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

ENV_CACHE = "SLIMGPT_CACHE"
RECORD_NAME = "asset.json"
INDEX_NAME = "manifest.json"
_CHUNK = 1 << 20
_VERIFIED: dict[tuple[str, int], bool] = {}  # (asset dir, manifest mtime) -> checked in this process


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache`` if given, else ``$SLIMGPT_CACHE``, else ``~/.cache/slimgpt`` (created)."""
    root = cache or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "slimgpt"
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def assets_root(cache: str | os.PathLike | None = None) -> Path:
    """The folder holding one sub-folder per prepared asset."""
    root = cache_dir(cache) / "assets"
    root.mkdir(exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """``{relative path: {"sha256", "size"}}`` of every file under ``folder`` except the manifest."""
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != RECORD_NAME:
            records[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return records


def write_json_atomic(path: Path, data) -> None:
    """Writes ``data`` as indented JSON to a temporary name next to ``path``, then renames it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(folder: Path) -> dict | None:
    """The manifest of the asset in ``folder``, or None if absent or unreadable."""
    try:
        return json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def entry_problem(folder: Path, checksums: bool = True) -> str | None:
    """Why the cache entry ``folder`` is unusable (missing, incomplete, size or sha256 mismatch), or None."""
    record = read_record(folder)
    if record is None:
        return f"no readable {RECORD_NAME} in {folder}"
    for rel, expected in record.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != expected["size"]:
            return f"{rel} has {path.stat().st_size} bytes, manifest says {expected['size']}"
        if checksums and sha256_file(path) != expected["sha256"]:
            return f"sha256 mismatch for {rel}"
    return None


def is_valid(folder: Path) -> bool:
    """True if ``folder`` is a complete asset whose files match its manifest (sha256 checked once per process)."""
    try:
        key = (str(folder), (folder / RECORD_NAME).stat().st_mtime_ns)
    except OSError:
        return False
    if key not in _VERIFIED:
        problem = entry_problem(folder)
        if problem is not None and folder.exists():
            warnings.warn(f"cache entry {folder} is corrupt ({problem}); it will be rebuilt", stacklevel=3)
        _VERIFIED[key] = problem is None
    return _VERIFIED[key]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (``flock``) held for the ``with`` block."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_atomic(
    name: str, builder: Callable[[Path], dict], record: dict, cache: str | os.PathLike | None = None
) -> Path:
    """Returns the valid cache entry of asset ``name``, building it first if missing or corrupt.

    ``builder(tmp_dir)`` writes the asset's files into an empty temporary directory and returns extra
    manifest fields (e.g. row counts). The manifest (``record`` + those fields + sha256/size of every file)
    is written inside the temporary directory, which is then renamed to ``assets/<name>``.
    """
    root = assets_root(cache)
    final = root / name
    with _locked(root / f".{name}.lock"):
        if is_valid(final):
            return final
        _remove_leftovers(root, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; a shared cache must stay readable
        try:
            extra = builder(tmp)
            files = file_records(tmp)
            full = {**record, **extra, "name": name, "files": files,
                    "size": sum(f["size"] for f in files.values()), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_json_atomic(tmp / RECORD_NAME, full)
            _swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    write_index(cache)
    return final


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_leftovers(root: Path, name: str) -> None:
    """Deletes temporary or replaced directories of ``name`` left by killed builds."""
    for stale in list(root.glob(f".tmp-{name}-*")) + list(root.glob(f".old-{name}-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, final: Path) -> None:
    """Renames ``tmp`` to ``final``; a corrupt ``final`` is first renamed aside, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_index(cache: str | os.PathLike | None = None) -> Path:
    """Regenerates ``manifest.json``: every asset's manifest without its per-file list, keyed by name."""
    root = assets_root(cache)
    index = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record = read_record(folder)
        if record is not None:
            index[folder.name] = {**{k: v for k, v in record.items() if k != "files"},
                                  "files": {rel: f["sha256"] for rel, f in record.get("files", {}).items()}}
    path = cache_dir(cache) / INDEX_NAME
    write_json_atomic(path, {"assets": index})
    return path
