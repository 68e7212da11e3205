"""Atomic JSON artifacts: ``results.json`` of a run and the small JSON files of the artifact cache.

A reader never sees a half-written file: content goes to a temporary name in the same directory, is
flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX), so Ctrl-C or a crash
leaves either the previous complete file or the new complete file.
"""

import json
import math
import os
import platform
import resource
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions every results.json records.
TRACKED_PACKAGES = ("slimgpt", "torch", "transformers", "peft", "lm_eval", "datasets", "hydra-core", "wandb")


def write_json_atomic(path: Path, data: Any) -> Path:
    """Writes ``data`` as indented JSON to ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_jsonable(data), handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path) -> Any:
    """Reads a JSON file (never a pickle)."""
    with open(path) as handle:
        return json.load(handle)


def _jsonable(value: Any) -> Any:
    """Converts paths, tuples, tensors/numpy scalars and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep them visible as strings
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return value


def versions() -> dict[str, str | None]:
    """Versions of Python, the tracked packages and the git commit of the working tree (if any)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["git_commit"] = _git_commit()
    return found


def _git_commit() -> str | None:
    """HEAD of the repository that holds this file, read from .git without running git."""
    for parent in Path(__file__).resolve().parents:
        head = parent / ".git" / "HEAD"
        if head.is_file():
            ref = head.read_text().strip()
            if not ref.startswith("ref: "):
                return ref
            ref_file = parent / ".git" / ref[5:]
            return ref_file.read_text().strip() if ref_file.is_file() else None
    return None


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and, with CUDA, peak allocated GPU memory (MiB).

    The RSS peak is per process: in a sequential multirun (one process) it is the peak over all jobs so far.
    """
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
