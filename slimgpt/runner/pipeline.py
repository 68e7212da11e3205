"""One job: run the selected stages in order, log them, and keep ``results.json`` up to date.

``run_job`` takes a typed ``Job`` (built by the CLI from the Hydra config, or directly by tests) and a
logger. ``results.json`` is rewritten atomically after every stage, so a job that fails or is interrupted
keeps the results of its finished stages and says how it ended (``status``: running/done/failed/interrupted).
The record is a typed ``RunRecord`` (``runner/record.py``); it names the process (pid, host) so that a
reader can tell a ``running`` job that was killed, and a job started in the folder of a killed one says so.

Before any stage runs, the run folder and the run cache must be writable and have room for what the job
writes (:func:`check_storage`): a read-only or full cache fails at start, not after a finished prune. A
finished prune is recorded before its checkpoint is stored, and the run folder keeps a small reserve
file that is given up when results.json meets a full disk, so that a full disk cannot leave results.json
without the record of a stage that finished.
"""

import datetime as dt
import errno
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .cache import ArtifactCache
from .loggers import Logger, logged_run
from .record import RESULTS_FILE, Evaluation, FinalModel, PruneEntry, RunRecord
from .results import peak_memory_mb, versions
from .specs import (DEFAULT_STAGES, CalibSpec, EvalSpec, ExportSpec, FinetuneSpec, ModelSpec, PrunerSpec, ScheduleSpec,
                    spec_dict)
from .stages import ModelArtifact, dense_artifact, eval_stage, export_stage, finetune_stage, prune_stage

log = logging.getLogger(__name__)

#: Room the run folder must have (results.json, logs, offline W&B files) and the size of its reserve file.
RUN_DIR_MIN_FREE = 64 << 20
RESERVE_BYTES = 1 << 20
RESERVE_FILE = ".results-reserve"
#: Room the run cache must have besides the checkpoints (eval results, markers, tokenizer files).
CACHE_MIN_FREE = 64 << 20


class PreflightError(ValueError):
    """A job that cannot run on this machine or with this model, found before any stage runs."""


class StorageError(OSError):
    """The run folder or the run cache cannot take what the job will write (found before any stage runs)."""


@dataclass(frozen=True)
class Job:
    """Everything one run needs, as typed values. ``config`` is recorded (results.json, W&B), not read."""

    model: ModelSpec
    calib: CalibSpec
    pruner: PrunerSpec
    schedule: ScheduleSpec
    finetune: FinetuneSpec
    evaluation: EvalSpec
    run_dir: Path
    cache_dir: Path
    name: str = "run"
    group: str | None = None
    stages: tuple[str, ...] = DEFAULT_STAGES
    baseline: bool = False
    overrides: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)
    export: ExportSpec = field(default_factory=ExportSpec)

    def specs(self) -> dict:
        """The typed settings as plain dicts (what the summary table reads)."""
        return {"model": spec_dict(self.model), "calib": spec_dict(self.calib), "pruner": spec_dict(self.pruner),
                "schedule": spec_dict(self.schedule), "finetune": spec_dict(self.finetune),
                "eval": spec_dict(self.evaluation), "export": spec_dict(self.export)}


class _Recorder:
    """Keeps the ``RunRecord`` of a job and saves it (atomically) as its results.json on every change."""

    def __init__(self, job: Job):
        self.path = Path(job.run_dir) / RESULTS_FILE
        self.reserve = Path(job.run_dir) / RESERVE_FILE
        self.record = RunRecord(
            status="running", name=job.name, group=job.group, stages=list(job.stages), started=_now(),
            overrides=list(job.overrides), specs=job.specs(), config=job.config, versions=versions(),
            pid=os.getpid(), host=socket.gethostname())
        self.save()
        _write_reserve(self.reserve, RESERVE_BYTES)

    def save(self) -> None:
        """Writes results.json; on a full disk the reserve file is given up once and the write retried."""
        self.record.peak_memory = peak_memory_mb()
        try:
            self.record.save(self.path)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.reserve.exists():
                raise
            log.warning("the disk of %s is full: giving up its reserve to write results.json", self.path.parent)
            self.reserve.unlink()
            self.record.save(self.path)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.record.status, self.record.finished = status, _now()
        if error is not None:
            self.record.error = "".join(traceback.format_exception_only(type(error), error)).strip()
        try:
            self.save()
        finally:
            self.reserve.unlink(missing_ok=True)


def run_job(job: Job, logger: Logger) -> RunRecord:
    """Runs ``job.stages`` (prune → finetune → eval) with ``logger``; returns its record as saved.

    Raises :class:`StorageError` before any stage when the run folder or the run cache cannot be written or
    lacks room (recorded in results.json when the run folder itself is writable).
    """
    _check_writable(Path(job.run_dir), "the run folder")
    _check_room({Path(job.run_dir): RUN_DIR_MIN_FREE}, "")
    note_previous_run(Path(job.run_dir) / RESULTS_FILE)
    recorder = _Recorder(job)
    try:
        check_storage(job)
        check_model_fit(job)
        check_export(job)
        with logged_run(logger, run_dir=job.run_dir, name=job.name, group=job.group, config=job.config):
            _run_stages(job, logger, recorder)
    except KeyboardInterrupt as error:
        recorder.finish("interrupted", error)
        raise
    except BaseException as error:
        recorder.finish("failed", error)
        raise
    recorder.finish("done")
    return RunRecord.load(recorder.path)


def _run_stages(job: Job, logger: Logger, recorder: _Recorder) -> None:
    cache = ArtifactCache(job.cache_dir)
    artifact = dense_artifact(job.model)
    if job.baseline and "eval" in job.stages and _changes_weights(job):
        _timed(recorder, "eval_dense", lambda: _evaluate(artifact, "dense", job, cache, logger, recorder))
    if "prune" in job.stages:
        def finished(key: str, report: dict) -> None:  # before the checkpoint is stored: path not yet known
            recorder.record.prune = PruneEntry(cached=False, key=key, path=None, report=report)
            recorder.save()

        artifact, report = _timed(recorder, "prune", lambda: prune_stage(
            artifact, job.model, job.calib, job.pruner, job.schedule, cache=cache, logger=logger,
            on_report=finished))
        recorder.record.prune = PruneEntry(cached=artifact.cached, key=artifact.key, path=_path(artifact),
                                           report=report)
        recorder.save()
    if "finetune" in job.stages and job.finetune.stages:
        artifact, infos = _timed(recorder, "finetune", lambda: finetune_stage(
            artifact, job.model, job.finetune, cache=cache, logger=logger))
        recorder.record.finetune = infos
        recorder.save()
    if "eval" in job.stages:
        _timed(recorder, "eval", lambda: _evaluate(artifact, "final", job, cache, logger, recorder))
    if "export" in job.stages:
        recorder.record.export = _timed(recorder, "export", lambda: export_stage(
            artifact, job.model, job.export, cache=cache, logger=logger))
        recorder.save()
    recorder.record.final_model = FinalModel(label=artifact.label, key=artifact.key, path=_path(artifact))


def note_previous_run(results: Path) -> RunRecord | None:
    """Warns when ``results`` (about to be replaced) is the record of a run that was killed, or of a run that
    still runs; returns that record (``None``: no readable earlier record)."""
    try:
        previous = RunRecord.load(results)
    except (OSError, ValueError):
        return None
    status = previous.status_now()
    done = ", ".join(previous.timings) or "none"
    if status == "killed":
        log.warning("the previous run in %s (pid %s on %s, started %s) was killed; stages it finished: %s",
                    results.parent, previous.pid, previous.host, previous.started, done)
    elif status == "running":
        log.warning("the run in %s (pid %s on %s, started %s) is still running; this run replaces its results.json",
                    results.parent, previous.pid, previous.host, previous.started)
    return previous


def check_model_fit(job: Job) -> None:
    """:class:`PreflightError` when the job asks for a GPU this machine lacks, or for windows (calibration or
    perplexity ``seq_len``) longer than the model's context — found before any stage runs."""
    import torch

    if job.model.device.startswith("cuda") and not torch.cuda.is_available():
        raise PreflightError(f"model.device={job.model.device!r} but this machine has no CUDA GPU (or torch was "
                             "built without CUDA); use model.device=cpu")
    from slimgpt.sources import model_config

    context = getattr(model_config(job.model.name), "max_position_embeddings", None)
    windows = {"calib.seq_len": job.calib.seq_len if "prune" in job.stages else None,
               "eval.perplexity.seq_len": (job.evaluation.perplexity.seq_len
                                           if job.evaluation.perplexity is not None and "eval" in job.stages else None)}
    for key, length in windows.items():
        if context is not None and length is not None and length > context:
            raise PreflightError(f"{key}={length} exceeds the context of {job.model.name} ({context} tokens)")


def check_export(job: Job) -> None:
    """:class:`PreflightError` when the ``export`` stage could not write the job's final model: single query heads
    pruned without ``export.regroup`` (uneven groups, which llama.cpp cannot run), a model llama.cpp's graph does
    not compute, or a quantized type without llama.cpp's runtime — found before any stage runs."""
    if "export" not in job.stages:
        return
    from slimgpt.export.gguf import QUANTIZED_TYPES, check_supported
    from slimgpt.sources import model_config

    if "prune" in job.stages and job.pruner.engine.head_granularity == "query_head" and not job.export.regroup:
        raise PreflightError("stages include export, but head_granularity=query_head leaves uneven query groups "
                             "that llama.cpp cannot run: prune with pruner.engine.head_granularity="
                             "balanced_query_head (or kv_group), or set export.regroup=true (extra kv heads)")
    try:
        check_supported(model_config(job.model.name))
    except ValueError as error:
        raise PreflightError(f"export: {error}") from None
    if job.export.dtype in QUANTIZED_TYPES:
        from slimgpt.export.llamacpp import INSTALL_HINT

        try:
            import llama_cpp  # noqa: F401  (the quantizer is llama.cpp's)
        except ImportError:
            raise PreflightError(f"export.dtype={job.export.dtype} needs llama.cpp's quantizer: {INSTALL_HINT}; "
                                 "or export.dtype=f16") from None


def check_storage(job: Job) -> None:
    """Raises :class:`StorageError` unless each run-cache folder the job's stages write into is writable and the
    file systems of the run folder and the cache have room: :data:`RUN_DIR_MIN_FREE` for the run folder, one
    checkpoint of the dense model per weight-changing stage (prune, each LoRA stage; cached or not) plus
    :data:`CACHE_MIN_FREE` for the cache (added up where both are on one disk)."""
    run_dir, cache = Path(job.run_dir), Path(job.cache_dir)
    kinds = [kind for kind, stage in (("pruned", "prune"), ("finetuned", "finetune"), ("eval", "eval"),
                                      ("gguf", "export")) if stage in job.stages]
    for kind in kinds:
        _check_writable(cache / kind, "the run cache")
    checkpoints = ("prune" in job.stages) + ("finetune" in job.stages) * len(job.finetune.stages)
    checkpoints += 2 * ("export" in job.stages)  # the GGUF file, and an F32 scratch file for a quantized type
    needs = {run_dir: RUN_DIR_MIN_FREE, cache: CACHE_MIN_FREE + checkpoints * (checkpoint_bytes(job.model) or 0)}
    _check_room(needs, f" ({checkpoints} checkpoint(s) of {job.model.name})")


def _check_room(needs: dict[Path, int], why: str) -> None:
    """:class:`StorageError` unless each file system holding folders of ``needs`` (folder → bytes) has room for
    all of them together."""
    by_disk: dict[int, list[Path]] = {}
    for folder in needs:
        folder.mkdir(parents=True, exist_ok=True)
        by_disk.setdefault(folder.stat().st_dev, []).append(folder)
    for folders in by_disk.values():
        need, free = sum(needs[f] for f in folders), shutil.disk_usage(folders[0]).free
        if free < need:
            names = " and ".join(str(f) for f in folders)
            raise StorageError(f"{names} has {free / 2**20:,.0f} MiB free, but this job may write "
                               f"{need / 2**20:,.0f} MiB there{why}; free some space (`slimgpt-cache gc`, "
                               "`slimgpt-cache rm KEY`) or choose other folders (paths.cache, hydra.run.dir)")


def checkpoint_bytes(model: ModelSpec) -> int | None:
    """Bytes of the dense model's weights in ``model.dtype`` (a pruned or merged checkpoint is not larger), from
    its config alone; ``None`` when the config cannot be read here (loading the model will say why)."""
    import torch
    from transformers import AutoModelForCausalLM

    from slimgpt.sources import model_config

    try:
        config = model_config(model.name)
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
    except Exception as error:  # noqa: BLE001 - only an estimate; the prune stage reports the real problem
        log.debug("no checkpoint size for %s: %s", model.name, error)
        return None
    return sum(p.numel() for p in net.parameters()) * getattr(torch, model.dtype).itemsize


def _check_writable(folder: Path, what: str) -> None:
    """Creates ``folder`` if needed and writes and removes a probe file in it; :class:`StorageError` if not."""
    probe = folder / f".tmp-write-probe-{uuid.uuid4().hex[:8]}"  # a name slimgpt-cache gc collects
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise StorageError(f"{what} {folder} is not writable ({error.strerror or error}); "
                           "nothing was run") from None


def _write_reserve(path: Path, size: int) -> None:
    """Writes ``size`` real bytes (not a sparse file) to ``path``: room that a full disk cannot take away."""
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))  # not zeros, which a compressing file system would not store
        handle.flush()
        os.fsync(handle.fileno())


def _changes_weights(job: Job) -> bool:
    """False when the final model is the dense one (then a baseline evaluation would repeat it)."""
    return "prune" in job.stages or ("finetune" in job.stages and bool(job.finetune.stages))


def _evaluate(artifact: ModelArtifact, role: str, job: Job, cache: ArtifactCache, logger: Logger,
              recorder: _Recorder) -> dict:
    metrics = eval_stage(artifact, job.model, job.evaluation, cache=cache, logger=logger, role=role)
    evaluations = recorder.record.evaluations
    evaluations.append(Evaluation(role=role, model=artifact.label, key=artifact.key, metrics=metrics))
    recorder.record.params[role] = metrics.get("params")
    recorder.save()
    keys = sorted({k for e in evaluations for k in e.metrics})
    logger.log_table("eval/results", ["role", "model", *keys], [[e.role, e.model, *map(e.metrics.get, keys)]
                                                                 for e in evaluations])
    return metrics


def _path(artifact: ModelArtifact) -> str | None:
    """The artifact's checkpoint folder as recorded (``None``: the dense model)."""
    return None if artifact.path is None else str(artifact.path)


def _timed(recorder: _Recorder, stage: str, work):
    """Runs ``work()``, records its wall time under ``timings[stage]`` (seconds) and returns its result."""
    started = time.perf_counter()
    log.info("stage %s ...", stage)
    result = work()
    recorder.record.timings[stage] = round(time.perf_counter() - started, 3)
    recorder.save()
    return result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
