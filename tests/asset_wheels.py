"""Helpers for asset tests: synthetic wheels and an isolated cache (imported by the test modules)."""

import zipfile
from pathlib import Path

from slimgpt.assets import cache, registry


def make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal wheel (a zip) named like PyPI's, holding ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def isolate_assets(tmp_path: Path, monkeypatch) -> None:
    """An empty cache and an empty wheelhouse under ``tmp_path``; pip may not reach any index."""
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(registry.ENV_WHEELHOUSE, str(tmp_path / "house"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
