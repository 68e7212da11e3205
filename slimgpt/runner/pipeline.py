"""One job: run the selected stages in order, log them, and keep ``results.json`` up to date.

``run_job`` takes a typed ``Job`` (built by the CLI from the Hydra config, or directly by tests) and a
logger. ``results.json`` is rewritten atomically after every stage, so a job that fails or is interrupted
keeps the results of its finished stages and says how it ended (``status``: running/done/failed/interrupted).
"""

import datetime as dt
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .cache import ArtifactCache
from .loggers import Logger, logged_run
from .results import peak_memory_mb, read_json, versions, write_json_atomic
from .specs import STAGES, CalibSpec, EvalSpec, FinetuneSpec, ModelSpec, PrunerSpec, ScheduleSpec, spec_dict
from .stages import ModelArtifact, dense_artifact, eval_stage, finetune_stage, prune_stage

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"


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


class _Record:
    """The results.json of a job, saved atomically on every change."""

    def __init__(self, job: Job):
        self.path = Path(job.run_dir) / RESULTS_FILE
        self.data = {
            "status": "running", "name": job.name, "group": job.group, "stages": list(job.stages),
            "started": _now(), "finished": None, "error": None, "overrides": list(job.overrides),
            "specs": job.specs(), "config": job.config,
            "evaluations": [], "prune": None, "finetune": [], "params": {}, "timings": {},
            "peak_memory": {}, "versions": versions(),
        }
        self.save()

    def save(self) -> None:
        self.data["peak_memory"] = peak_memory_mb()
        write_json_atomic(self.path, self.data)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.data.update(status=status, finished=_now())
        if error is not None:
            self.data["error"] = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.save()


def run_job(job: Job, logger: Logger) -> dict:
    """Runs ``job.stages`` (prune → finetune → eval) with ``logger``; returns the results.json content."""
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    record = _Record(job)
    try:
        with logged_run(logger, run_dir=job.run_dir, name=job.name, group=job.group, config=job.config):
            _run_stages(job, logger, record)
    except KeyboardInterrupt as error:
        record.finish("interrupted", error)
        raise
    except BaseException as error:
        record.finish("failed", error)
        raise
    record.finish("done")
    return read_json(record.path)


def _run_stages(job: Job, logger: Logger, record: _Record) -> None:
    cache = ArtifactCache(job.cache_dir)
    artifact = dense_artifact(job.model)
    if job.baseline and "eval" in job.stages and _changes_weights(job):
        _timed(record, "eval_dense", lambda: _evaluate(artifact, "dense", job, cache, logger, record))
    if "prune" in job.stages:
        artifact, report = _timed(record, "prune", lambda: prune_stage(
            artifact, job.model, job.calib, job.pruner, job.schedule, cache=cache, logger=logger))
        record.data["prune"] = {"cached": artifact.cached, "key": artifact.key, "path": artifact.path,
                                "report": report}
        record.save()
    if "finetune" in job.stages and job.finetune.stages:
        artifact, infos = _timed(record, "finetune", lambda: finetune_stage(
            artifact, job.model, job.finetune, cache=cache, logger=logger))
        record.data["finetune"] = infos
        record.save()
    if "eval" in job.stages:
        _timed(record, "eval", lambda: _evaluate(artifact, "final", job, cache, logger, record))
    record.data["final_model"] = {"label": artifact.label, "key": artifact.key, "path": artifact.path}


def _changes_weights(job: Job) -> bool:
    """False when the final model is the dense one (then a baseline evaluation would repeat it)."""
    return "prune" in job.stages or ("finetune" in job.stages and bool(job.finetune.stages))


def _evaluate(artifact: ModelArtifact, role: str, job: Job, cache: ArtifactCache, logger: Logger,
              record: _Record) -> dict:
    metrics = eval_stage(artifact, job.model, job.evaluation, cache=cache, logger=logger, role=role)
    entry = {"role": role, "model": artifact.label, "key": artifact.key, "metrics": metrics}
    record.data["evaluations"].append(entry)
    record.data["params"][role] = metrics.get("params")
    record.save()
    rows = [[e["role"], e["model"], *[e["metrics"].get(k) for k in _metric_keys(record)]]
            for e in record.data["evaluations"]]
    logger.log_table("eval/results", ["role", "model", *_metric_keys(record)], rows)
    return metrics


def _metric_keys(record: _Record) -> list[str]:
    return sorted({k for e in record.data["evaluations"] for k in e["metrics"]})


def _timed(record: _Record, stage: str, work):
    """Runs ``work()``, records its wall time under ``timings[stage]`` (seconds) and returns its result."""
    started = time.perf_counter()
    log.info("stage %s ...", stage)
    result = work()
    record.data["timings"][stage] = round(time.perf_counter() - started, 3)
    record.save()
    return result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
