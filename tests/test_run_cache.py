"""The self-checking run cache: checksums on store, verification before use, damaged entries reported and
rebuilt (never used), umask permissions, the package source in the key, and the ``slimgpt-cache`` CLI."""

import json
import os
import shutil
import time

import pytest

from slimgpt import as_slim, io
from slimgpt.runner import cache_cli
from slimgpt.runner import cache as run_cache
from slimgpt.runner.cache import DATA_FILE, MARKER, ArtifactCache, signature
from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.pipeline import run_job
from slimgpt.sources import tiny_model, tiny_tokenizer

WEIGHTS = "model.safetensors"


@pytest.fixture(autouse=True)
def new_process():
    """Every test starts like a new process: nothing verified yet."""
    io._VERIFIED.clear()
    yield
    io._VERIFIED.clear()


def save_checkpoint(folder):
    """A writer like the prune stage's: a SlimGPT model (safetensors, config, modeling code) and a tokenizer."""
    as_slim(tiny_model("llama", num_layers=1)).save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)


@pytest.fixture
def stored(tmp_path):
    """A cache holding one checkpoint (``pruned/k1``) and one JSON artifact (``eval/e1``)."""
    cache = ArtifactCache(tmp_path / "cache")
    cache.store_dir("pruned", "k1", save_checkpoint, meta={"report": {"ratio": 0.2}})
    cache.store_json("eval", "e1", {"ppl/wiki": 12.5})
    return cache


def zero_in_place(path, offset: int = 4096, length: int = 4096) -> None:
    """Overwrites bytes with zeros without changing the size or the modification time (silent bit rot)."""
    info = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(length))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_store_records_sha256_and_size_of_every_file(stored):
    folder = stored.find_dir("pruned", "k1")
    marker = json.loads((folder / MARKER).read_text())
    assert marker["format"] == run_cache.CACHE_FORMAT and marker["meta"] == {"report": {"ratio": 0.2}}
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    assert sorted(marker["files"]) == on_disk and WEIGHTS in on_disk
    assert marker["files"][WEIGHTS] == {"sha256": io.sha256_file(folder / WEIGHTS),
                                         "size": (folder / WEIGHTS).stat().st_size}
    assert stored.dir_meta("pruned", "k1") == {"report": {"ratio": 0.2}}
    assert stored.find_json("eval", "e1") == {"ppl/wiki": 12.5}


def test_zeroed_bytes_in_place_are_detected_and_the_entry_rebuilt(stored):
    folder = stored.path("pruned", "k1")
    original = (folder / WEIGHTS).read_bytes()
    zero_in_place(folder / WEIGHTS)
    with pytest.warns(UserWarning, match=rf"{folder}.*sha256 mismatch for {WEIGHTS}"):
        assert stored.find_dir("pruned", "k1") is None
    assert not folder.exists() and os.listdir(folder.parent) == []  # removed, no leftover
    stored.store_dir("pruned", "k1", save_checkpoint, meta={})
    assert stored.find_dir("pruned", "k1") == folder and (folder / WEIGHTS).read_bytes() == original


@pytest.mark.parametrize("kind, key, name, damage, problem", [
    ("pruned", "k1", WEIGHTS, truncate, f"{WEIGHTS} has .* bytes, expected"),
    ("eval", "e1", DATA_FILE, truncate, f"{DATA_FILE} has .* bytes, expected"),
    ("pruned", "k1", MARKER, truncate, f"{MARKER} is unreadable \\(JSONDecodeError"),
    ("eval", "e1", MARKER, lambda path: path.unlink(), f"no {MARKER} marker"),
    ("pruned", "k1", "config.json", lambda path: path.unlink(), "missing file config.json"),
])
def test_damaged_entries_are_reported_removed_and_never_used(stored, kind, key, name, damage, problem):
    folder = stored.path(kind, key)
    damage(folder / name)
    find = stored.find_json if kind == "eval" else stored.find_dir
    with pytest.warns(UserWarning, match=f"run cache entry {folder} is unusable: {problem}"):
        assert find(kind, key) is None
    assert not folder.exists()


def test_a_checked_entry_is_hashed_once_per_process_then_by_size_and_mtime(stored, monkeypatch):
    hashed = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: hashed.append(path) or real(path))
    folder = stored.find_dir("pruned", "k1")
    first = len(hashed)
    assert first == len(json.loads((folder / MARKER).read_text())["files"])
    assert stored.find_dir("pruned", "k1") == folder and len(hashed) == first  # fast path: no hashing
    weights = folder / WEIGHTS
    zero_in_place(weights)
    os.utime(weights, ns=(time.time_ns(), weights.stat().st_mtime_ns + 10**9))  # a write changes the mtime
    with pytest.warns(UserWarning, match="sha256 mismatch"):
        assert stored.find_dir("pruned", "k1") is None


def test_a_job_rebuilds_a_corrupt_pruned_model_and_eval_result(tmp_path):
    """The reported failure: a checkpoint with zeroed bytes gave another perplexity with status ``done``."""
    def run(name):
        cfg = compose_config(["debug=default", "stages=[prune,eval]", "eval=ppl", f"paths.cache={tmp_path / 'c'}"])
        return run_job(build_job(cfg, run_dir=tmp_path / name, overrides=()), NoneLogger())

    first = run("first")
    weights = tmp_path / "c" / "pruned" / first.prune.key / WEIGHTS
    zero_in_place(weights, offset=weights.stat().st_size // 2, length=20_000)
    (eval_dir,) = (tmp_path / "c" / "eval").iterdir()  # only the pruned model's evaluation (no baseline)
    truncate(eval_dir / DATA_FILE)
    io._VERIFIED.clear()  # the next job runs in a new process
    with pytest.warns(UserWarning, match="unusable") as caught:
        second = run("second")
    assert {str(weights.parent), str(eval_dir)} <= {w.message.args[0].split()[3] for w in caught}
    assert second.status == "done" and second.prune.cached is False
    assert second.metric("ppl/wiki") == first.metric("ppl/wiki")


def test_cache_files_get_the_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        cache = ArtifactCache(tmp_path / "cache")
        cache.store_dir("pruned", "k1", save_checkpoint, meta={})
        cache.store_json("eval", "e1", {"ppl/wiki": 1.0})
    finally:
        os.umask(previous)
    paths = [cache.root, *cache.root.rglob("*")]
    modes = {p.relative_to(cache.root).as_posix(): p.stat().st_mode & 0o777 for p in paths}
    assert {m for p, m in modes.items() if (cache.root / p).is_dir()} == {0o755}, modes
    assert {m for p, m in modes.items() if (cache.root / p).is_file()} == {0o644}, modes


def copy_sources(root):
    """A copy of the package's pruning, modeling and finetune sources plus data.py under ``root``."""
    for part in ("pruning", "modeling", "finetune"):
        shutil.copytree(run_cache.PACKAGE_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(run_cache.PACKAGE_ROOT / "data.py", root / "data.py")


def test_a_changed_source_file_gives_a_new_key(tmp_path, monkeypatch):
    copy_sources(tmp_path)
    monkeypatch.setattr(run_cache, "PACKAGE_ROOT", tmp_path)
    parts = {"pruner": {"method": "slimgpt", "ratio": 0.2}}

    def keys():
        run_cache._source_hash.cache_clear()  # a new process
        return signature(parts, code=run_cache.PRUNE_CODE), signature(parts, code=run_cache.FINETUNE_CODE)

    prune_key, finetune_key = keys()
    assert keys() == (prune_key, finetune_key)  # deterministic
    with open(tmp_path / "pruning" / "engine.py", "a") as handle:
        handle.write("\n# a changed engine\n")
    new_prune_key, new_finetune_key = keys()
    assert new_prune_key != prune_key and new_finetune_key == finetune_key  # only what uses engine.py moves
    assert signature(parts) != prune_key  # the stages' keys cover code; a key without code differs
    with pytest.raises(FileNotFoundError, match="'nosuch' does not exist"):
        run_cache.source_hash(("nosuch",))


def test_gc_removes_leftovers_and_orphans_but_keeps_entries_and_live_writers(stored, capsys):
    root, old = stored.root, time.time() - 7200
    killed = root / "pruned" / ".tmp-k2-0123abcd"
    killed.mkdir()
    (killed / WEIGHTS).write_bytes(b"half")
    for path in (killed / WEIGHTS, killed):
        os.utime(path, (old, old))
    young = root / "pruned" / ".old-k3-0123abcd"  # e.g. a job swapping an entry right now
    young.mkdir()
    (root / "eval" / "0123456789abcdef.json").write_text("{}")  # an eval result of cache format 1
    (root / "pruned" / "nomarker").mkdir()
    (root / "pruned" / "format1").mkdir()
    (root / "pruned" / "format1" / MARKER).write_text('{"report": {}}')
    with io.atomic_dir(root / "pruned" / "k4") as live:  # a job still writing
        os.utime(live, (old, old))
        assert cache_cli.main(["--cache", str(root), "gc", "--dry-run"]) == 0
        assert "would remove pruned/.tmp-k2-0123abcd" in capsys.readouterr().out and killed.exists()
        assert cache_cli.main(["--cache", str(root), "gc"]) == 0
        out = capsys.readouterr().out
        assert live.exists() and young.exists() and "kept pruned/.old-k3-0123abcd" in out
        assert cache_cli.main(["--cache", str(root), "gc", "--min-age", "0"]) == 0
        assert live.exists() and not young.exists()
    assert sorted(p.name for p in (root / "pruned").iterdir()) == ["k1", "k4"]
    assert [p.name for p in (root / "eval").iterdir()] == ["e1"]
    assert stored.find_dir("pruned", "k1") and stored.find_json("eval", "e1") == {"ppl/wiki": 12.5}


def test_cli_list_verify_rm(stored, capsys, monkeypatch):
    monkeypatch.setenv(run_cache.ENV_RUN_CACHE, str(stored.root))  # the default location
    assert cache_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"run cache: {stored.root}" in out and "pruned/k1" in out and "eval/e1" in out and " ok" in out
    assert cache_cli.main(["verify"]) == 0 and "pruned/k1: ok" in capsys.readouterr().out
    zero_in_place(stored.path("pruned", "k1") / WEIGHTS)
    assert cache_cli.main(["verify", "k1"]) == 1
    assert f"pruned/k1: sha256 mismatch for {WEIGHTS}" in capsys.readouterr().out
    assert stored.path("pruned", "k1").exists()  # verify only reports
    assert cache_cli.main(["rm", "pruned/k1", "e1"]) == 0
    assert not stored.path("pruned", "k1").exists() and not stored.path("eval", "e1").exists()
    assert cache_cli.main(["rm", "k1"]) == 2
    assert "'k1' names no entry in" in capsys.readouterr().err
