"""Content-addressed cache of run artifacts (pruned / fine-tuned checkpoints, evaluation results).

An artifact's key is a signature: the SHA-256 of the canonical JSON of exactly the config values that
determine it (for a pruned model: model, calibration, pruner, schedule). Re-running a job, or an eval-only
sweep over a pruned model, finds the artifact instead of recomputing it. Directories are written under a
temporary name and renamed into place, so an interrupted write never looks like a finished artifact.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .results import read_json, write_json_atomic

#: Bump when the layout of cached artifacts changes, so that old entries are not reused.
CACHE_FORMAT = 1
_MARKER = "artifact.json"


def signature(parts: dict[str, Any]) -> str:
    """A 16-hex-digit key of ``parts`` (JSON-able), independent of dict order.

    It covers config values and the package version, not the code itself: after changing pruning or
    training code between releases, point ``paths.cache`` elsewhere or delete the cached folders.
    """
    from slimgpt import __version__

    canonical = json.dumps({"format": CACHE_FORMAT, "slimgpt": __version__, **parts}, sort_keys=True, default=str,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ArtifactCache:
    """Artifacts under ``root/<kind>/<signature>/`` (directories) or ``root/<kind>/<signature>.json``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def find_dir(self, kind: str, key: str) -> Path | None:
        """The finished artifact directory, or ``None`` (a directory without its marker is not finished)."""
        folder = self.path(kind, key)
        return folder if (folder / _MARKER).is_file() else None

    def store_dir(self, kind: str, key: str, write: Callable[[Path], None], meta: dict) -> Path:
        """Runs ``write(tmp_dir)``, adds the marker with ``meta``, renames into place; returns the final path.

        If another job finished the same artifact first, its copy is kept and ours is discarded.
        """
        final = self.path(kind, key)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            write_json_atomic(tmp / _MARKER, meta)
            os.rename(tmp, final)
        except OSError:
            if self.find_dir(kind, key) is None:
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def dir_meta(self, kind: str, key: str) -> dict:
        return read_json(self.path(kind, key) / _MARKER)

    def find_json(self, kind: str, key: str) -> Any | None:
        file = self.root / kind / f"{key}.json"
        return read_json(file) if file.is_file() else None

    def store_json(self, kind: str, key: str, data: Any) -> Path:
        return write_json_atomic(self.root / kind / f"{key}.json", data)
