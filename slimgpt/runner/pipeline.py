"""One job: run the selected stages in order, log them, and keep ``results.json`` up to date.

``run_job`` takes a typed ``Job`` (built by the CLI from the Hydra config, or directly by tests) and a
logger. ``results.json`` is rewritten atomically after every stage, so a job that fails or is interrupted
keeps the results of its finished stages and says how it ended (``status``: running/done/failed/interrupted).
The record is a typed ``RunRecord`` (``runner/record.py``); it names the process (pid, host) so that a
reader can tell a ``running`` job that was killed.
"""

import datetime as dt
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .cache import ArtifactCache
from .loggers import Logger, logged_run
from .record import RESULTS_FILE, Evaluation, FinalModel, PruneEntry, RunRecord
from .results import peak_memory_mb, versions
from .specs import STAGES, CalibSpec, EvalSpec, FinetuneSpec, ModelSpec, PrunerSpec, ScheduleSpec, spec_dict
from .stages import ModelArtifact, dense_artifact, eval_stage, finetune_stage, prune_stage

log = logging.getLogger(__name__)


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
    stages: tuple[str, ...] = STAGES
    baseline: bool = False
    overrides: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)

    def specs(self) -> dict:
        """The typed settings as plain dicts (what the summary table reads)."""
        return {"model": spec_dict(self.model), "calib": spec_dict(self.calib), "pruner": spec_dict(self.pruner),
                "schedule": spec_dict(self.schedule), "finetune": spec_dict(self.finetune),
                "eval": spec_dict(self.evaluation)}


class _Recorder:
    """Keeps the ``RunRecord`` of a job and saves it (atomically) as its results.json on every change."""

    def __init__(self, job: Job):
        self.path = Path(job.run_dir) / RESULTS_FILE
        self.record = RunRecord(
            status="running", name=job.name, group=job.group, stages=list(job.stages), started=_now(),
            overrides=list(job.overrides), specs=job.specs(), config=job.config, versions=versions(),
            pid=os.getpid(), host=socket.gethostname())
        self.save()

    def save(self) -> None:
        self.record.peak_memory = peak_memory_mb()
        self.record.save(self.path)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.record.status, self.record.finished = status, _now()
        if error is not None:
            self.record.error = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.save()


def run_job(job: Job, logger: Logger) -> RunRecord:
    """Runs ``job.stages`` (prune → finetune → eval) with ``logger``; returns its record as saved."""
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    recorder = _Recorder(job)
    try:
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
        artifact, report = _timed(recorder, "prune", lambda: prune_stage(
            artifact, job.model, job.calib, job.pruner, job.schedule, cache=cache, logger=logger))
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
    recorder.record.final_model = FinalModel(label=artifact.label, key=artifact.key, path=_path(artifact))


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
