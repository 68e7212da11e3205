"""Atomic file output and file checksums: the one place where the package writes files that readers may see
half-written, and checks that files are still what was written.

Every writer here puts content under a temporary name in the target's directory, flushes it to disk, then
renames it over the target (``os.replace`` is atomic on POSIX). A reader therefore sees either the previous
complete file or the new complete one, never a partial one, even after Ctrl-C, ``kill -9`` or a full disk.
Files and directories get the permissions the process umask allows (``0o644``/``0o755`` under the usual
umask), not ``mkstemp``'s ``0o600`` (nor that of a library writing into an :func:`atomic_dir`): caches are
shared between users on clusters. Temporary names are
``.tmp-<name>-<8 hex>`` (and ``.old-<name>-<8 hex>`` for a replaced directory), so that :func:`leftovers`
finds what a killed writer left.

The caches record ``{relative path: {"sha256", "size"}}`` of their files (:func:`file_records`) and check
an entry against it with :func:`verify_files`: sha256 once per process and entry, afterwards only sizes and
modification times (a file rewritten in place gets a new mtime, so it is hashed again).
"""

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_file", "file_records", "files_problem", "in_use", "jsonable", "leftovers", "move_atomic", "read_json",
           "remove_tree", "sha256_file", "umask", "verify_files", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]

_CHUNK = 1 << 20
#: folder -> the (relative path, size, mtime_ns) stamp of its files when their sha256 last matched (this process)
_VERIFIED: dict[str, tuple] = {}


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_name(final: Path, kind: str = "tmp") -> Path:
    """``<dir>/.<kind>-<name>-<8 hex>``: a fresh name next to ``final`` that :func:`leftovers` recognises."""
    return final.parent / f".{kind}-{final.name}-{uuid.uuid4().hex[:8]}"


def leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """The ``.tmp-*``/``.old-*`` entries of ``folder`` written by this module (of target ``name`` if given).

    A name is matched exactly: the leftovers of ``wiki`` are not those of ``wiki-extra``. The 8-character
    tail also matches ``tempfile.mkdtemp``'s, which older versions used.
    """
    target = re.escape(name) if name is not None else ".+"
    pattern = re.compile(rf"\.(tmp|old)-{target}-[0-9a-z_]{{8}}")
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name)) if folder.is_dir() else []


def move_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Publishes the finished file ``src`` as ``dst`` in one rename (same file system), with umask permissions."""
    os.chmod(src, 0o666 & ~umask())
    os.replace(src, dst)
    return Path(dst)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path next to ``path`` (parents created; nothing is created there) for a writer to
    fill; when the block succeeds the file there replaces ``path`` (:func:`move_atomic`), else it is removed.
    For writers that take a file name (a GGUF writer, llama.cpp's quantizer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        move_atomic(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (parents created); returns ``path`` as a ``Path``."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, sort_keys: bool = False) -> Path:
    """Writes ``data`` as indented JSON (see :func:`jsonable` for what is converted) atomically; returns ``path``."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=sort_keys, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file (never a pickle)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def jsonable(value: Any) -> Any:
    """Paths, tuples, tensor/numpy scalars and non-finite floats as plain JSON values (inf/nan as strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep them visible as strings
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item())
    return value


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yields an empty temporary directory next to ``final``; when the block succeeds it becomes ``final``.

    On an exception the temporary directory is deleted and ``final`` is untouched. With ``replace`` an
    existing ``final`` is first renamed aside and deleted after the swap; without it, an existing ``final``
    (another process finished first) is kept and the new copy discarded. Leftovers of killed writers are
    named ``.tmp-<name>-*`` (and ``.old-<name>-*``) in the same directory, for garbage collection; while
    the block runs the writer holds a lock on its temporary directory, which :func:`in_use` tests.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(final)
    tmp.mkdir()
    os.chmod(tmp, 0o777 & ~umask())
    held = os.open(tmp, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: gc falls back on the age
            fcntl.flock(held, fcntl.LOCK_SH)
        yield tmp
        _share(tmp)
        _publish_dir(tmp, final, replace)
    finally:
        os.close(held)
        shutil.rmtree(tmp, ignore_errors=True)


def _share(folder: Path) -> None:
    """Gives ``folder`` and everything below it the permissions the umask allows (``0o755``/``0o644`` under
    umask 022), whatever its writers used (``transformers`` writes ``model.safetensors`` as ``0o600``)."""
    mask = umask()
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _publish_dir(tmp: Path, final: Path, replace: bool) -> None:
    """Renames ``tmp`` to ``final`` (see :func:`atomic_dir`); a ``final`` that appears meanwhile is kept."""
    old = None
    if replace and final.exists():
        old = _temp_name(final, "old")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise  # not "another writer published first"
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def in_use(path: str | os.PathLike) -> bool:
    """True while an :func:`atomic_dir` block still writes into the temporary directory ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no flock here: the caller decides by age
    finally:
        os.close(fd)
    return False


def remove_tree(path: str | os.PathLike) -> None:
    """Deletes the folder (or file) ``path`` after renaming it aside (``.old-*``), so that no reader sees a
    half-deleted folder and a killed removal leaves a name that :func:`leftovers` finds."""
    path = Path(path)
    aside = _temp_name(path, "old")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return  # someone else removed it first
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"sha256", "size"}}`` of every file under ``folder`` except the paths in ``exclude``."""
    folder = Path(folder)
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in exclude:
            records[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return records


def files_problem(folder: str | os.PathLike, records: dict[str, dict], checksums: bool = True) -> str | None:
    """What is wrong with the files of ``folder`` against ``records`` (:func:`file_records`), or None.

    Checks that every recorded file exists with its size and (with ``checksums``) its sha256; the first
    problem found is returned in words, e.g. ``"model.safetensors has 10 bytes, expected 20"``.
    """
    folder = Path(folder)
    for rel, expected in records.items():
        path = folder / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != expected["size"]:
            return f"{rel} has {path.stat().st_size} bytes, expected {expected['size']}"
        if checksums and sha256_file(path) != expected["sha256"]:
            return f"sha256 mismatch for {rel} (same size, different content)"
    return None


def verify_files(folder: str | os.PathLike, records: dict[str, dict], marker: str | os.PathLike) -> str | None:
    """:func:`files_problem` with sha256 once per process: later calls only compare sizes and mtimes.

    ``marker`` (the file holding ``records``) is part of the stamp, so a rewritten manifest is checked again.
    """
    folder = Path(folder)
    try:
        stamp = tuple((rel, *_size_mtime(folder / rel)) for rel in sorted(records)) + (_size_mtime(Path(marker)),)
    except OSError:
        stamp = None  # a file is missing: files_problem says which
    if stamp is not None and _VERIFIED.get(str(folder)) == stamp:
        return None
    problem = files_problem(folder, records)
    if problem is None and stamp is not None:
        _VERIFIED[str(folder)] = stamp
    else:
        _VERIFIED.pop(str(folder), None)
    return problem


def _size_mtime(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns
