"""Content-addressed, self-checking cache of run artifacts (pruned / fine-tuned checkpoints, eval results).

An artifact's key is a signature: the SHA-256 of the canonical JSON of exactly the config values that
determine it (for a pruned model: model, calibration, pruner, schedule) plus a hash of the package source
that computes it (``PRUNE_CODE`` etc.), so a changed engine never serves a model pruned by the old one.
Re-running a job, or an eval-only sweep over a pruned model, finds the artifact instead of recomputing it.

Layout: every artifact is a folder ``root/<kind>/<key>/`` whose marker ``artifact.json`` holds the cache
format, the sha256 and size of every file and the stage's ``meta``; a JSON artifact is the file
``data.json`` in such a folder. A folder appears only by renaming a complete temporary folder
(``slimgpt.io.atomic_dir``), so an interrupted write never looks finished. Before an artifact is used its
files are checked against the marker (sha256 once per process, then sizes and mtimes); an entry that does
not match or cannot be read is reported as a warning, removed, and rebuilt by the stage. A writer killed
hard (``kill -9``, out of memory) leaves its ``.tmp-<key>-*`` folder; the next store of the same entry
reports it (a previous run was killed while writing it) and removes it, and ``slimgpt-cache gc`` removes
any that no later run collects.
"""

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..io import (atomic_dir, file_records, files_problem, in_use, leftovers, read_json, remove_tree, verify_files,
                  write_json_atomic)

#: Bump when the layout of cached artifacts changes, so that old entries are not reused.
CACHE_FORMAT = 2
MARKER = "artifact.json"
#: ``<kind>/.resume-<key>``: the per-layer checkpoint of an unfinished prune (``slimgpt.pruning.checkpoint``)
RESUME_PREFIX = ".resume-"
#: ``slimgpt-cache gc`` keeps the checkpoint of an unfinished prune this long after its last write (seconds)
RESUME_MAX_AGE = 7 * 24 * 3600.0
DATA_FILE = "data.json"
ENV_RUN_CACHE = "SLIMGPT_RUN_CACHE"
#: The ``slimgpt`` package folder; the ``*_CODE`` paths are relative to it.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: Package sources whose code determines each kind of artifact (folders are taken with all their ``.py``).
PRUNE_CODE = ("pruning", "modeling", "data.py")
FINETUNE_CODE = ("finetune", "modeling")
EVAL_CODE = ("eval", "modeling", "data.py")
EXPORT_CODE = ("export", "modeling")


def default_root() -> Path:
    """The run cache when none is configured: ``$SLIMGPT_RUN_CACHE``, else ``<asset cache>/runs``."""
    if os.environ.get(ENV_RUN_CACHE):
        return Path(os.environ[ENV_RUN_CACHE]).expanduser()
    from slimgpt.assets import cache_dir

    return cache_dir() / "runs"


def signature(parts: dict[str, Any], code: tuple[str, ...] = ()) -> str:
    """A 16-hex-digit key of ``parts`` (JSON-able), independent of dict order.

    It covers the cache format, the package version and, with ``code`` (paths under the package, e.g.
    ``PRUNE_CODE``), the content of that source: an edited engine gives new keys.
    """
    from slimgpt import __version__

    content = {"format": CACHE_FORMAT, "slimgpt": __version__, **parts}
    if code:
        content["code"] = source_hash(code)
    canonical = json.dumps(content, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def source_hash(code: tuple[str, ...], root: Path | None = None) -> str:
    """sha256 of the ``.py`` files under the package paths ``code`` (names and bytes), once per process."""
    return _source_hash(tuple(code), Path(root or PACKAGE_ROOT))


@functools.cache
def _source_hash(code: tuple[str, ...], root: Path) -> str:
    digest = hashlib.sha256()
    for part in code:
        path = root / part
        if not path.exists():
            raise FileNotFoundError(f"cache key source '{part}' does not exist under {root}")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


class ArtifactCache:
    """Artifacts under ``root/<kind>/<key>/``, each with its ``artifact.json`` marker (see the module doc)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def resume_path(self, kind: str, key: str) -> Path:
        """The folder of the per-layer checkpoint an unfinished stage keeps to resume from (``.resume-<key>``)."""
        return self.root / kind / f"{RESUME_PREFIX}{key}"

    def find_dir(self, kind: str, key: str) -> Path | None:
        """The artifact folder if it exists and its files match its marker, else ``None``.

        An entry that does not match (or whose marker is missing or unreadable) is reported with a warning
        naming the folder and the problem, then removed, so that the caller rebuilds it.
        """
        folder = self.path(kind, key)
        if not folder.exists():
            return None
        problem = self.problem(folder)
        if problem is None:
            return folder
        self._discard(folder, problem)
        return None

    def problem(self, folder: Path, check: str = "once") -> str | None:
        """What is wrong with the entry ``folder``, or None.

        ``check``: ``"once"`` hashes each file once per process (later calls compare sizes and mtimes),
        ``"full"`` hashes every time, ``"sizes"`` reads the marker and compares sizes only.
        """
        if check not in ("once", "full", "sizes"):
            raise ValueError(f"check must be 'once', 'full' or 'sizes', got {check!r}")
        marker, problem = self.marker(folder)
        if problem is not None:
            return problem
        if check == "once":
            return verify_files(folder, marker["files"], folder / MARKER)
        return files_problem(folder, marker["files"], checksums=check == "full")

    def marker(self, folder: Path) -> tuple[dict | None, str | None]:
        """``(marker, None)``, or ``(None, what is wrong with the marker)``."""
        try:
            marker = read_json(folder / MARKER)
        except FileNotFoundError:
            return None, f"no {MARKER} marker (an unfinished or damaged entry)"
        except (OSError, ValueError) as err:
            return None, f"{MARKER} is unreadable ({type(err).__name__}: {err})"
        if not isinstance(marker, dict) or marker.get("format") != CACHE_FORMAT:
            found = marker.get("format") if isinstance(marker, dict) else None
            return None, f"{MARKER} is of cache format {found}, this version reads {CACHE_FORMAT}"
        if not isinstance(marker.get("files"), dict):
            return None, f"{MARKER} has no list of files"
        return marker, None

    def _discard(self, folder: Path, problem: str) -> None:
        warnings.warn(f"run cache entry {folder} is unusable: {problem}; removing it, it will be rebuilt",
                      stacklevel=3)
        remove_tree(folder)

    def store_dir(self, kind: str, key: str, write: Callable[[Path], None], meta: dict) -> Path:
        """Runs ``write(tmp_dir)``, adds the marker (file checksums + ``meta``), renames into place.

        ``meta`` is read after ``write`` returns (a writer may fill it). If another job finished the same
        artifact first, its copy is kept and ours is discarded; a damaged existing entry is replaced.
        """
        final = self.path(kind, key)
        self.collect_leftovers(kind, key)
        replace = final.exists() and self.problem(final) is not None
        with atomic_dir(final, replace=replace) as tmp:
            write(tmp)
            marker = {"format": CACHE_FORMAT, "kind": kind, "key": key,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "files": file_records(tmp, exclude=(MARKER,)), "meta": meta}
            write_json_atomic(tmp / MARKER, marker)
        return final

    def collect_leftovers(self, kind: str, key: str, min_age: float = 3600.0) -> list[Path]:
        """Removes the unfinished folders (``.tmp-<key>-*``/``.old-<key>-*``) that killed writers of ``kind/key``
        left, warning that a previous run was killed while writing it; returns the removed paths.

        A folder a live writer still holds (its lock, see ``slimgpt.io.in_use``) is kept; where the file system
        has no ``flock``, so that a live writer cannot be told from a dead one, only folders last written more
        than ``min_age`` seconds ago are removed.
        """
        kind_dir = self.root / kind
        removed = []
        for path in leftovers(kind_dir, key):
            age = time.time() - _newest_mtime(path)
            if in_use(path) or (not _locks_work(kind_dir) and age < min_age):
                continue
            when = dt.datetime.fromtimestamp(time.time() - age).isoformat(timespec="seconds")
            warnings.warn(f"a previous run was killed while writing {kind}/{key}: its unfinished folder {path} "
                          f"(last written {when}) is removed", stacklevel=3)
            remove_tree(path)
            removed.append(path)
        return removed

    def dir_meta(self, kind: str, key: str) -> dict:
        """The ``meta`` stored with an artifact (call after :meth:`find_dir` or :meth:`store_dir`)."""
        return read_json(self.path(kind, key) / MARKER)["meta"]

    def find_json(self, kind: str, key: str) -> Any | None:
        """The verified content of a JSON artifact, or ``None`` (a damaged one is reported and removed)."""
        folder = self.find_dir(kind, key)
        if folder is None:
            return None
        try:
            return read_json(folder / DATA_FILE)
        except (OSError, ValueError) as err:
            self._discard(folder, f"{DATA_FILE} is unreadable ({type(err).__name__}: {err})")
            return None

    def store_json(self, kind: str, key: str, data: Any) -> Path:
        """Stores ``data`` as the JSON artifact ``kind/key``; returns its folder."""
        return self.store_dir(kind, key, lambda folder: write_json_atomic(folder / DATA_FILE, data), meta={})

    def entries(self) -> Iterator[tuple[str, str, Path]]:
        """``(kind, key, folder)`` of every entry (finished or not; leftovers ``.tmp-*`` excluded)."""
        for kind_dir in sorted(self._kind_dirs()):
            for folder in sorted(kind_dir.iterdir()):
                if folder.is_dir() and not folder.name.startswith("."):
                    yield kind_dir.name, folder.name, folder

    def garbage(self, min_age: float = 3600.0, resume_max_age: float = RESUME_MAX_AGE) -> tuple[list[Path], list[Path]]:
        """``(removable, kept)`` paths that no lookup ever uses.

        Removable: leftovers of killed writers (``.tmp-*``/``.old-*``) that no live writer holds and that
        were last written more than ``min_age`` seconds ago (the age protects writers on file systems
        without ``flock``), and orphans: stray files, and folders without a readable marker of this cache
        format (entries of older versions). Kept: leftovers still in use or younger than ``min_age``.
        Prune checkpoints (``.resume-<key>``): kept while a prune holds them or while they can be resumed (no
        finished entry ``<key>`` yet) and were written in the last ``resume_max_age`` seconds; otherwise
        removable (a stale one: its prune finished, or nothing resumed it in time).
        """
        removable, kept = [], []
        for kind_dir in self._kind_dirs():
            for path in leftovers(kind_dir):
                young = time.time() - _newest_mtime(path) < min_age
                (kept if in_use(path) or young else removable).append(path)
            for path in sorted(kind_dir.glob(f"{RESUME_PREFIX}*")):
                (kept if self._keep_checkpoint(path, min_age, resume_max_age) else removable).append(path)
            for path in sorted(kind_dir.iterdir()):
                if not path.name.startswith(".") and (path.is_file() or self.marker(path)[1] is not None):
                    removable.append(path)
        return removable, kept

    def _keep_checkpoint(self, path: Path, min_age: float, resume_max_age: float) -> bool:
        """Whether ``gc`` keeps the prune checkpoint ``path`` (see :meth:`garbage`)."""
        if in_use(path):
            return True
        age = time.time() - _newest_mtime(path)
        finished = (path.parent / path.name[len(RESUME_PREFIX):]).is_dir()
        resumable = (path / "state.json").is_file() and not finished
        return age < (resume_max_age if resumable else min_age) and not finished

    def remove(self, path: Path) -> None:
        """Deletes an entry, a leftover or an orphan (renamed aside first)."""
        remove_tree(path)

    def _kind_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _locks_work(folder: Path) -> bool:
    """Whether ``flock`` works on ``folder``'s file system (then a lock tells a live writer from a dead one)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything below it (seconds since the epoch)."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        for below in path.rglob("*"):
            with contextlib.suppress(OSError):  # a file removed meanwhile
                times.append(below.lstat().st_mtime)
    return max(times)
