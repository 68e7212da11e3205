"""Atomic file output: the one place where the package writes files that readers may see half-written.

Every writer here puts content under a temporary name in the target's directory, flushes it to disk, then
renames it over the target (``os.replace`` is atomic on POSIX). A reader therefore sees either the previous
complete file or the new complete one, never a partial one, even after Ctrl-C, ``kill -9`` or a full disk.
Files and directories get the permissions the process umask allows (``0o644``/``0o755`` under the usual
umask), not ``mkstemp``'s ``0o600``: caches are shared between users on clusters.
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "jsonable", "read_json", "umask", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (parents created); returns ``path`` as a ``Path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    named ``.tmp-<name>-*`` (and ``.old-<name>-*``) in the same directory, for garbage collection.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    os.chmod(tmp, 0o777 & ~umask())
    try:
        yield tmp
        if final.exists() and not replace:
            return
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
