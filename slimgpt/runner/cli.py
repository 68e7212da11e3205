"""``slimgpt [overrides]``: the Hydra entry point (the only code that sees the config object).

It turns the composed config into typed specs (``build_job``), builds the logger, runs the job and prints
its results table. Everything else takes plain typed arguments.
"""

import contextlib
import os
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .pipeline import Job, PreflightError, StorageError, run_job
from .record import RESULTS_FILE, RunRecord
from .summary import record_rows, to_markdown
from .specs import parse_stages

#: The config directory (a checkout's conf/; the runner is used from a clone, see README).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Top-level keys of the composed config (groups first); anything else is a typo.
TOP_LEVEL_KEYS = ("model", "calib", "pruner", "schedule", "finetune", "eval", "export", "logger",
                  "stages", "baseline", "name", "sweep_name", "paths")
SPEC_GROUPS = ("model", "calib", "pruner", "schedule", "finetune", "eval", "export")


def build_spec(cfg: DictConfig, group: str):
    """Instantiates ``cfg[group]`` (a ``_target_`` node); a bad key or value names the group and allowed keys."""
    node = _selected_only(cfg[group]) if group == "eval" else cfg[group]
    try:
        return instantiate(node, _convert_="all")
    except Exception as error:  # hydra wraps the constructor's error; unwrap it for the message
        cause = error.__cause__ or error
        allowed = _allowed_keys(node)
        hint = f"; allowed keys: {allowed}" if allowed else ""
        raise ValueError(f"invalid '{group}' config: {cause}{hint}") from error


def _selected_only(node: DictConfig) -> DictConfig:
    """Drops sub-evaluations that carry only size deltas (from debug/experiment files) but were not selected
    by the ``eval`` option: ``debug=default eval=ppl`` shrinks perplexity and runs no zero-shot."""
    node = node.copy()
    for key in ("perplexity", "zeroshot"):
        sub = node.get(key)
        if isinstance(sub, DictConfig) and "_target_" not in sub:
            with open_dict(node):
                node[key] = None
    return node


def _allowed_keys(node: DictConfig) -> list[str]:
    try:
        target = get_class(node["_target_"])
    except Exception:
        return []
    return [f.name for f in dataclasses.fields(target)] if dataclasses.is_dataclass(target) else []


def check_top_level(cfg: DictConfig) -> None:
    """Rejects top-level keys that no part of the runner reads (a typo in an experiment file, say)."""
    unknown = sorted(set(cfg.keys()) - set(TOP_LEVEL_KEYS) - {"hydra"})
    if unknown:
        raise ValueError(f"unknown top-level config keys {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")


def build_job(cfg: DictConfig, *, run_dir: Path, group: str | None = None, overrides: tuple[str, ...] = (),
              choices: dict | None = None) -> Job:
    """The typed ``Job`` of a composed config; fails on unknown keys, unknown stages and bad values."""
    check_top_level(cfg)
    specs = {group_name: build_spec(cfg, group_name) for group_name in SPEC_GROUPS}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return Job(
        model=specs["model"], calib=specs["calib"], pruner=specs["pruner"], schedule=specs["schedule"],
        finetune=specs["finetune"], evaluation=specs["eval"], run_dir=Path(run_dir),
        cache_dir=_cache_dir(cfg.paths.cache), name=str(cfg.name), group=group,
        stages=parse_stages(cfg.stages), baseline=bool(cfg.baseline), overrides=tuple(overrides),
        config={**resolved, "choices": choices or {}, "overrides": list(overrides)}, export=specs["export"],
    )


def _cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    from slimgpt.runner.cache import default_root  # the folder slimgpt-cache looks in

    return default_root()


def job_from_hydra(cfg: DictConfig) -> Job:
    """``build_job`` with the run folder, W&B group, overrides and group choices of the current Hydra job."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    return build_job(cfg, run_dir=Path(hydra_cfg.runtime.output_dir),
                     group=str(cfg.sweep_name) if multirun else None,
                     overrides=tuple(hydra_cfg.overrides.task), choices=choices)


def compose_config(overrides: list[str] = (), *, hydra: bool = False) -> DictConfig:
    """The config ``slimgpt OVERRIDES`` would run, composed in-process (tests, notebooks).

    With ``hydra=True`` the ``hydra`` node (launcher, sweeper, mode) is included.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turns SIGTERM (``kill``, SLURM preemption/time limit) into ``KeyboardInterrupt`` while the job runs,
    so that it ends like Ctrl-C: results.json says ``interrupted`` and the W&B run is closed."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def objective(record: RunRecord) -> float | None:
    """The value a Hydra sweeper optimises: the final model's first perplexity, if measured."""
    final = record.evaluation("final")
    return None if final is None else final.first_perplexity()


def main() -> float | int | None:
    """``slimgpt export ...`` goes to the GGUF exporter; anything else is a Hydra run."""
    if sys.argv[1:2] == ["export"]:
        from ..export.cli import main as export_main

        sys.exit(export_main(sys.argv[2:]))
    return hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Compose → typed job → run → print the results table. A bad config value ends the command with one
    line naming it (the full traceback with ``HYDRA_FULL_ERROR=1``), before any stage runs."""
    try:
        job = job_from_hydra(cfg)
    except ValueError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"slimgpt: {error}") from None
    logger = instantiate(cfg.logger)
    with sigterm_as_interrupt():
        try:
            record = run_job(job, logger)
        except (PreflightError, StorageError) as error:  # before any stage: one line, like a config error
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(f"slimgpt: {error}") from None
    print(f"\nresults: {job.run_dir / RESULTS_FILE}\n" + to_markdown(record_rows(record)), flush=True)
    return objective(record)


if __name__ == "__main__":
    main()
