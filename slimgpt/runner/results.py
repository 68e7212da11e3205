"""What every ``results.json`` records besides the metrics: package versions, the git commit, peak memory.

The JSON helpers (``write_json_atomic``, ``read_json``) and ``peak_memory_mb`` live in ``slimgpt.io`` and
``slimgpt.memory``; they are imported here for the modules that read them from this one.
"""

import platform
from importlib import metadata
from pathlib import Path

from ..io import read_json, write_json_atomic
from ..memory import peak_memory_mb

__all__ = ["TRACKED_PACKAGES", "peak_memory_mb", "read_json", "versions", "write_json_atomic"]

#: Distributions whose versions every results.json records.
TRACKED_PACKAGES = ("slimgpt", "torch", "transformers", "peft", "lm_eval", "datasets", "hydra-core", "wandb")


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
