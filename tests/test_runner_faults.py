"""True state after a kill or a failure (issue 12 §2): a killed LoRA stage, a read-only or full run cache, a
full run-folder disk, and the next run of a killed job.

The file-system faults are real where this machine allows private mounts (``unshare -m``: a read-only tmpfs,
a tmpfs that fills up); the same faults are also simulated in-process so that they are tested everywhere.
"""

import errno
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slimgpt.runner import pipeline
from slimgpt.runner.cache import MARKER, ArtifactCache
from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.pipeline import StorageError, run_job
from slimgpt.runner.record import RunRecord

ROOT = Path(__file__).resolve().parents[1]
#: the debug run (tiny model, tiny LoRA), perplexity only
DEBUG = ["debug=default", "eval=ppl"]

#: Runs one debug job in a fresh process: argv = run_dir, cache, stages, then Python run before the job.
JOB = """
import sys
from slimgpt.runner import pipeline
from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
run_dir, cache, stages, patch = sys.argv[1:5]
exec(patch)
cfg = compose_config(["debug=default", "eval=ppl", f"stages=[{stages}]", "paths.cache=" + cache])
pipeline.run_job(build_job(cfg, run_dir=run_dir), NoneLogger())
"""

#: LoRA training that saves an adapter into its (temporary) output folder, says so, and hangs until killed.
HANGING_LORA = """
import time
from pathlib import Path
from types import SimpleNamespace
from slimgpt.finetune import lora
def hang(self, train_ex, eval_ex, progress):
    self.save_adapter()
    (Path(run_dir) / "adapter-saved").write_text(str(self.out_dir))
    time.sleep(600)
lora._Trainer.run = hang
"""

#: After the prune stage, something else fills the run folder's disk.
FILL_AFTER_PRUNE = """
import errno, os
real = pipeline.prune_stage
def prune_then_fill(*args, **kwargs):
    result = real(*args, **kwargs)
    with open(os.path.join(os.path.dirname(run_dir), "filler"), "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return result
pipeline.prune_stage = prune_then_fill
"""


def debug_job(run_dir: Path, cache: Path, *overrides: str):
    return build_job(compose_config([*DEBUG, *overrides, f"paths.cache={cache}"]), run_dir=run_dir)


def job_process(run_dir: Path, cache: Path, stages: str, patch: str = "", mount: str = "") -> list[str]:
    """The command running the debug job in a new process; ``mount``: shell commands run first in a private
    mount namespace (then the mounts vanish with the process)."""
    command = [sys.executable, "-c", JOB, str(run_dir), str(cache), stages, patch]
    if not mount:
        return command
    return ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *command]


def _private_mounts_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _private_mounts_work(), reason="no private mounts (unshare -m) here")


# ------------------------------------------------------------------------------- a killed LoRA stage


def test_a_killed_lora_stage_is_reported_and_collected_by_the_next_run(tmp_path, caplog):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    job = subprocess.Popen(job_process(run_dir, cache, "prune,finetune", HANGING_LORA), cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "adapter-saved").exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run_dir / "adapter-saved").exists(), "the LoRA stage never saved an adapter"
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    # the true state after kill -9: a partial adapter in an unfinished folder, which gc would remove
    training_dir = Path((run_dir / "adapter-saved").read_text())
    assert training_dir.parent == cache / "finetuned" and training_dir.name.startswith(".tmp-")
    assert (training_dir / "adapter" / "training_state.json").is_file()
    assert training_dir in ArtifactCache(cache).garbage(min_age=0)[0]
    assert RunRecord.load(run_dir / "results.json").status_now() == "killed"
    # the next run of the same job says so twice (its record, the cache) and removes the leftover
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="killed while writing finetuned/"):
        record = run_job(debug_job(run_dir, cache, "stages=[prune,finetune]"), NoneLogger())
    assert f"the previous run in {run_dir} (pid {job.pid}" in caplog.text
    assert "was killed; stages it finished: prune" in caplog.text
    assert record.status == "done" and not training_dir.exists()
    assert [p.name for p in (cache / "finetuned").iterdir() if p.name.startswith(".")] == []
    check_final_paths(record, run_dir, cache)


def check_final_paths(record: RunRecord, run_dir: Path, cache: Path) -> None:
    """The LoRA paths in results.json, artifact.json and metrics.json name the published folder."""
    (info,) = record.finetune
    folder = cache / "finetuned" / record.final_model.key
    assert info["adapter_dir"] == str(folder / "adapter") and info["merged_dir"] == str(folder / "merged")
    assert record.final_model.path == info["merged_dir"]
    assert (folder / "adapter" / "adapter_model.safetensors").is_file() and (folder / "merged").is_dir()
    for text in ((run_dir / "results.json").read_text(), (folder / MARKER).read_text(),
                 (folder / "metrics.json").read_text()):
        assert ".tmp-" not in text
    assert json.loads((folder / "metrics.json").read_text())["merged_dir"] == "merged"  # relative to the folder


def test_a_diverged_lora_stage_names_no_discarded_folder(tmp_path, monkeypatch):
    """NaN training ends the job; its error must not point at the temporary folder that is deleted with it."""
    from slimgpt.finetune import lora

    def diverge(self, value, what):
        raise lora.NonFiniteLossError(f"loss is nan at optimizer step 1; training stopped. Last good adapter: "
                                      f"{self.out_dir / 'adapter'}.", self.out_dir / "adapter", 0)

    monkeypatch.setattr(lora._Trainer, "_check_finite", diverge)
    with pytest.raises(lora.NonFiniteLossError, match="lora0: loss is nan at optimizer step 1"):
        run_job(debug_job(tmp_path / "run", tmp_path / "cache", "stages=[prune,finetune]"), NoneLogger())
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and ".tmp-" not in record.error and "discarded" in record.error
    assert list((tmp_path / "cache" / "finetuned").iterdir()) == []


# ------------------------------------------------------------------------------- storage checked at start


def refuse_to_prune(*args, **kwargs):
    raise AssertionError("the prune stage ran although the job cannot store its result")


def test_an_unwritable_cache_fails_before_the_prune(tmp_path, monkeypatch):
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setattr(pipeline, "prune_stage", refuse_to_prune)
    with pytest.raises(StorageError, match="the run cache .*blocked/pruned is not writable"):
        run_job(debug_job(tmp_path / "run", tmp_path / "blocked", "stages=[prune,eval]"), NoneLogger())
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and "not writable" in record.error and record.timings == {}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["results.json"]  # no reserve, no probe left


@needs_mounts
def test_a_read_only_cache_fails_at_start_on_a_real_read_only_mount(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    cache.mkdir()
    mount = f"mount -t tmpfs tmpfs {cache} && mount -o remount,ro {cache}"
    done = subprocess.run(job_process(run_dir, cache, "prune,eval", mount=mount), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "StorageError" in done.stderr, done.stderr[-2000:]
    record = RunRecord.load(run_dir / "results.json")
    assert record.status == "failed" and "not writable (Read-only file system); nothing was run" in record.error
    assert "prune" not in record.timings and record.prune is None  # no prune was thrown away


def test_no_room_in_the_cache_fails_before_the_prune(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "prune_stage", refuse_to_prune)
    free = 80 << 20  # enough for the run folder alone, not for it and the cache on one disk
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 40, free=free))
    job = debug_job(tmp_path / "run", tmp_path / "cache", "stages=[prune,eval]")
    weights = pipeline.checkpoint_bytes(job.model)
    assert 100_000 < weights < 2 << 20  # the tiny model's float32 weights
    need = (pipeline.RUN_DIR_MIN_FREE + pipeline.CACHE_MIN_FREE + weights) / 2**20
    with pytest.raises(StorageError, match=rf"has 80 MiB free, but this job may write {need:,.0f} MiB there \(1 check"):
        run_job(job, NoneLogger())
    assert RunRecord.load(tmp_path / "run" / "results.json").status == "failed"


# ------------------------------------------------------------------------------- a full disk mid-run


def test_a_failing_store_keeps_the_record_of_the_finished_prune(tmp_path, monkeypatch):
    """The cache's disk fills while the checkpoint is written: results.json still holds the prune report."""
    store = ArtifactCache.store_dir

    def full(self, kind, key, write, meta):
        if kind == "pruned":
            raise OSError(errno.ENOSPC, "No space left on device")
        return store(self, kind, key, write, meta)

    monkeypatch.setattr(ArtifactCache, "store_dir", full)
    with pytest.raises(OSError, match="No space left"):
        run_job(debug_job(tmp_path / "run", tmp_path / "cache", "stages=[prune,eval]"), NoneLogger())
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and "No space left" in record.error
    assert record.prune.path is None and record.prune.value("achieved_ratio") > 0.1


class FullDisk:
    """The run folder's disk as a capacity: writes through ``slimgpt.io`` fail with ENOSPC once the files in the
    folder would exceed it (an atomic write needs room for the new file while the old one exists)."""

    def __init__(self, folder: Path, real_write):
        self.folder, self.real_write, self.capacity = folder, real_write, None

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def write(self, path, data: bytes):
        if self.capacity is not None and Path(path).parent == self.folder and self.used() + len(data) > self.capacity:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return self.real_write(path, data)


def test_a_full_run_folder_keeps_the_record_of_the_finished_prune(tmp_path, monkeypatch):
    from slimgpt import io

    run_dir = tmp_path / "run"
    disk = FullDisk(run_dir, io.write_bytes_atomic)
    monkeypatch.setattr(io, "write_bytes_atomic", disk.write)
    real_prune = pipeline.prune_stage

    def prune_then_fill(*args, **kwargs):
        result = real_prune(*args, **kwargs)
        disk.capacity = disk.used()  # another job takes the rest of the disk
        return result

    monkeypatch.setattr(pipeline, "prune_stage", prune_then_fill)
    record = run_job(debug_job(run_dir, tmp_path / "cache", "stages=[prune,eval]"), NoneLogger())
    assert disk.capacity is not None and record.status == "done"
    saved = RunRecord.load(run_dir / "results.json")
    assert saved.prune.path is not None and saved.evaluation("final") is not None
    assert [p.name for p in run_dir.iterdir()] == ["results.json"]  # the reserve went into the record


@needs_mounts
def test_a_full_run_folder_disk_keeps_the_prune_record_on_a_real_full_disk(tmp_path):
    outputs, cache = tmp_path / "outputs", tmp_path / "cache"
    outputs.mkdir()
    run_dir = outputs / "run"
    mount = f"mount -t tmpfs -o size={(pipeline.RUN_DIR_MIN_FREE >> 20) + 4}m tmpfs {outputs}"
    copy = "import atexit, shutil; atexit.register(shutil.copy, run_dir + '/results.json', sys.argv[5])\n"
    command = job_process(run_dir, cache, "prune,eval", copy + FILL_AFTER_PRUNE, mount) + [str(tmp_path / "out.json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    record = RunRecord.load(tmp_path / "out.json")  # results.json as the full disk kept it
    assert "giving up its reserve" in done.stderr, done.stderr[-2000:]
    assert record.prune is not None and record.prune.path is not None, done.stderr[-2000:]
    assert record.status in ("done", "failed") and record.status_now() != "killed"


# ------------------------------------------------------------------------------- the next run of a killed job


def test_the_next_run_in_the_folder_of_a_killed_run_says_so(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    run_dir = tmp_path / "run"
    RunRecord(status="running", name="debug", started="2026-01-01T00:00:00+00:00", timings={"prune": 1.0},
              pid=gone.pid, host=__import__("socket").gethostname()).save(run_dir / "results.json")
    with caplog.at_level(logging.WARNING, logger="slimgpt.runner.pipeline"):
        record = run_job(debug_job(run_dir, tmp_path / "cache", "stages=[eval]"), NoneLogger())
    assert record.status == "done"
    assert f"the previous run in {run_dir} (pid {gone.pid}" in caplog.text
    assert "started 2026-01-01T00:00:00+00:00) was killed; stages it finished: prune" in caplog.text


def test_a_store_collects_the_leftovers_of_killed_writers_of_its_entry_only(tmp_path):
    from slimgpt import io

    cache = ArtifactCache(tmp_path)
    killed, other = tmp_path / "pruned" / ".tmp-k1-0123abcd", tmp_path / "pruned" / ".tmp-k2-0123abcd"
    for folder in (killed, other):
        (folder / "adapter").mkdir(parents=True)
    with io.atomic_dir(tmp_path / "pruned" / "k1", replace=False) as live:  # another job writing k1 right now
        with pytest.warns(UserWarning, match=r"a previous run was killed while writing pruned/k1: .*\.tmp-k1-0123abcd"):
            cache.store_dir("pruned", "k1", lambda folder: (folder / "w").write_text("ok"), meta={})
        assert live.exists() and not killed.exists() and other.exists()
    assert cache.find_dir("pruned", "k1") is not None


def test_windows_longer_than_the_context_or_a_missing_gpu_fail_before_any_stage(tmp_path):
    from slimgpt.runner.cli import build_job, compose_config
    from slimgpt.runner.loggers import NoneLogger
    from slimgpt.runner.pipeline import PreflightError, run_job

    cfg = compose_config(["debug=default", "stages=[prune,eval]", "eval=ppl", "eval.perplexity.seq_len=100000",
                          f"paths.cache={tmp_path / 'c'}"])
    with pytest.raises(PreflightError, match=r"eval.perplexity.seq_len=100000 exceeds the context of tiny:llama"):
        run_job(build_job(cfg, run_dir=tmp_path / "run", overrides=()), NoneLogger())
    from slimgpt.runner.record import RunRecord

    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and record.prune is None and not record.timings  # no stage ran
    if not torch.cuda.is_available():
        cfg = compose_config(["debug=default", "model.device=cuda", f"paths.cache={tmp_path / 'c'}"])
        with pytest.raises(PreflightError, match="no CUDA GPU"):
            run_job(build_job(cfg, run_dir=tmp_path / "run2", overrides=()), NoneLogger())
