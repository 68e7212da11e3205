"""Metric loggers behind one protocol: Weights & Biases, local disk (JSON lines), or nothing.

The runner drives a logger through ``start → log / log_table / summary → close``. ``logged_run`` wraps
that in a context manager that always calls ``close`` — with status ``failed`` or ``interrupted`` when the
job raised — so a crashed job still finishes its W&B run and never leaves a dangling process.
"""

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

WANDB_MODES = ("auto", "offline", "online", "disabled")
#: A logged key ``<prefix>/<axis>`` with one of these names is the x-axis of the other ``<prefix>/*`` keys
#: (``prune_layer/layer`` for per-layer pruning metrics, ``lora0/step`` for a loss curve).
AXIS_NAMES = ("layer", "step")


@runtime_checkable
class Logger(Protocol):
    """What the runner needs from a metric logger."""

    def start(self, *, run_dir: Path, name: str, group: str | None, config: dict) -> None: ...

    def log(self, metrics: dict[str, float]) -> None: ...

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...


class NoneLogger:
    """Logs nothing (tests, quick local runs)."""

    def start(self, *, run_dir: Path, name: str, group: str | None, config: dict) -> None:
        pass

    def log(self, metrics: dict[str, float]) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class DiskLogger:
    """Appends every event as one JSON line to ``<run_dir>/<filename>`` (readable with pandas/jq)."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename = filename
        self._file = None

    def start(self, *, run_dir: Path, name: str, group: str | None, config: dict) -> None:
        self._file = open(Path(run_dir) / self.filename, "a")
        self._write({"event": "start", "name": name, "group": group, "config": config})

    def log(self, metrics: dict[str, float]) -> None:
        self._write({"event": "log", **metrics})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._write({"event": "table", "key": key, "columns": columns, "rows": rows})

    def summary(self, values: dict[str, Any]) -> None:
        self._write({"event": "summary", **values})

    def close(self, status: str) -> None:
        if self._file is not None:
            self._write({"event": "close", "status": status})
            self._file.close()
            self._file = None

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")
            self._file.flush()


class WandbLogger:
    """One W&B run per job; files go under the job's run directory.

    mode ``auto`` (the default) is ``online`` when ``WANDB_API_KEY`` is set and ``offline`` otherwise
    (offline needs no key and opens no connection: sync later with ``wandb sync``). ``WANDB_MODE`` in the
    environment wins over ``auto``. Online start-up is bounded by ``init_timeout`` seconds.
    """

    def __init__(self, project: str = "slimgpt", entity: str | None = None, mode: str = "auto",
                 tags: list[str] | tuple[str, ...] = (), init_timeout: float = 90.0):
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r} is not one of {list(WANDB_MODES)}")
        self.project, self.entity, self.mode = project, entity, mode
        self.tags, self.init_timeout = list(tags or ()), init_timeout
        self.run = None

    def resolved_mode(self) -> str:
        """The W&B mode this logger will use (see the class docstring)."""
        if self.mode != "auto":
            return self.mode
        return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")

    def start(self, *, run_dir: Path, name: str, group: str | None, config: dict) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project, entity=self.entity, name=name, group=group, tags=self.tags, config=config,
            dir=str(run_dir), mode=self.resolved_mode(), reinit="finish_previous",
            settings=wandb.Settings(init_timeout=self.init_timeout, console="off", silent=True),
        )
        self._axes: set[str] = set()

    def log(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self._define_axes(metrics)
            self.run.log(metrics)

    def _define_axes(self, metrics: dict) -> None:
        """Plots per-layer metrics against their layer and losses against their step (see ``AXIS_NAMES``)."""
        for key in metrics:
            prefix, _, last = key.rpartition("/")
            if prefix and last in AXIS_NAMES and key not in self._axes:
                self.run.define_metric(key)
                self.run.define_metric(f"{prefix}/*", step_metric=key)
                self._axes.add(key)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def close(self, status: str) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.summary["status"] = status
            run.finish(exit_code=0 if status == "done" else 1)


@contextlib.contextmanager
def logged_run(logger: Logger, *, run_dir: Path, name: str, group: str | None, config: dict) -> Iterator[Logger]:
    """Starts ``logger`` and always closes it: status ``done``, ``failed`` or ``interrupted``."""
    logger.start(run_dir=run_dir, name=name, group=group, config=config)
    status = "failed"
    try:
        yield logger
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        logger.close(status)
