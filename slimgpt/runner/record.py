"""The run record: what one job did and measured, as a typed, versioned ``results.json``.

The pipeline fills a :class:`RunRecord` stage by stage and saves it atomically after each; the summary
(``slimgpt-report``), the studies (``slimgpt-figures``) and the sweeper objective read its attributes.

Versions: 1 is the format without a ``version`` key (written before this module existed; it lacks
``pid``/``host``); 2 adds ``version``, ``pid`` and ``host``; 3 types the pruner; 4 adds ``export``. :meth:`RunRecord.from_json` reads every
version, upgrading an older one step by step (``_UPGRADES``), and refuses newer versions and unknown
keys, naming them. A change of what the record holds bumps :data:`RECORD_VERSION` and adds a step.

The engine's pruning report (``PruneReport.to_dict()``) is kept as the plain dict the pruning layer
writes; read inside it only through :meth:`PruneEntry.value` and :meth:`PruneEntry.layer_values`.
"""

import os
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from slimgpt.io import jsonable, read_json, write_json_atomic

#: The name of a job's record in its run folder.
RESULTS_FILE = "results.json"
#: The format :meth:`RunRecord.to_json` writes.
RECORD_VERSION = 4
#: What a job's ``status`` can be on disk; a reader may also show ``killed`` (see :meth:`RunRecord.status_now`).
STATUSES = ("running", "done", "failed", "interrupted")


@dataclass
class Evaluation:
    """One evaluated model: ``role`` (``dense`` baseline or ``final``), its label, cache key and metrics.

    ``metrics`` maps ``ppl/<corpus>``, ``zeroshot/<task>``, ``zeroshot/avg``, ``params``, ``eval_seconds``
    to numbers (non-finite values are stored as the strings ``inf``/``nan``).
    """

    role: str
    model: str
    key: str
    metrics: dict[str, Any]

    def metric(self, name: str) -> float | None:
        """Metric ``name`` as a float; ``None`` when absent or not a number (``inf``/``nan`` are stored as strings)."""
        value = self.metrics.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def first_perplexity(self) -> float | None:
        """The first ``ppl/*`` metric (insertion order) as a float (``inf``/``nan`` included), or ``None``."""
        value = next((v for k, v in self.metrics.items() if k.startswith("ppl/")), None)
        return None if value is None else float(value)


@dataclass
class PruneEntry:
    """The prune stage: whether it came from the run cache, its cache key and checkpoint, and the report."""

    cached: bool
    key: str
    path: str | None
    report: dict

    def value(self, dotted: str) -> Any:
        """A value of the pruning report by dotted path: ``achieved_ratio``, ``options.head_score``, ..."""
        return _dig(self.report, dotted)

    def layer_values(self, dotted: str) -> list:
        """Per decoder layer, a value of its report entry: ``output_error``, ``params``, ``attention.obs_error``."""
        return [_dig(layer, dotted) for layer in _dig(self.report, "layers") or []]


@dataclass
class ExportEntry:
    """The export stage: the GGUF file of the final model (``path``, in the run cache), its type, sha256 and size
    in bytes, whether it came from the run cache, its cache key, and the exporter's one-line summary."""

    cached: bool
    key: str
    path: str
    dtype: str
    sha256: str
    bytes: int
    summary: str = ""


@dataclass
class FinalModel:
    """The model the job ended with: label (``slimgpt+lora``), cache key, checkpoint folder (``None``: dense)."""

    label: str
    key: str
    path: str | None


@dataclass
class RunRecord:
    """Everything ``results.json`` holds about one job (see the module docstring for the versions).

    ``specs`` are the job's typed settings as plain dicts (``spec_dict`` of each spec), ``config`` the
    resolved Hydra config; read them with :meth:`spec`. ``params`` maps role → parameter count, ``timings``
    stage → seconds, ``peak_memory`` ``rss_mb``/``cuda_mb`` → MiB. ``finetune`` holds one summary dict per
    recovery stage (as the finetune stage returns it).
    """

    status: str = "running"
    name: str = "run"
    group: str | None = None
    stages: list[str] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    specs: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    evaluations: list[Evaluation] = field(default_factory=list)
    prune: PruneEntry | None = None
    finetune: list[dict] = field(default_factory=list)
    params: dict[str, int | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    final_model: FinalModel | None = None
    export: ExportEntry | None = None
    pid: int | None = None
    host: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r} is not one of {list(STATUSES)}")

    # ------------------------------------------------------------------------------------------- reading

    def evaluation(self, role: str = "final") -> Evaluation | None:
        """The first evaluation of ``role`` (``final`` or ``dense``), if any."""
        return next((e for e in self.evaluations if e.role == role), None)

    def metric(self, name: str, role: str = "final") -> float | None:
        """Metric ``name`` (``ppl/wiki``, ``zeroshot/avg``, ``params``) of the first ``role`` evaluation having it."""
        return next((e.metric(name) for e in self.evaluations if e.role == role and name in e.metrics), None)

    def spec(self, dotted: str) -> Any:
        """A setting by dotted path, e.g. ``pruner.ratio`` or ``pruner.options.head_score`` (``None`` if absent)."""
        return _dig(self.specs, dotted)

    def recovery_data(self) -> list[str]:
        """The instruction set of each recovery (LoRA) stage the final model went through, in order."""
        stages = (self.spec("finetune.stages") or []) if "finetune" in self.stages else []
        return [_dig(stage, "data") for stage in stages]

    def status_now(self) -> str:
        """``status``, except ``killed`` for a ``running`` record whose process is gone from this host."""
        if self.status == "running" and self.pid is not None and self.host == socket.gethostname():
            return "running" if process_alive(self.pid) else "killed"
        return self.status

    # ------------------------------------------------------------------------------------------- JSON

    def to_json(self) -> dict:
        """The record as plain JSON values, ``version`` first."""
        return {"version": RECORD_VERSION, **jsonable(asdict(self))}

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        """A record from :meth:`to_json` output or an older version's ``results.json`` (no ``version``: 1)."""
        data = dict(_object(data, "results.json"))
        version = data.pop("version", 1)
        if not isinstance(version, int) or version not in range(1, RECORD_VERSION + 1):
            raise ValueError(f"results.json version {version!r} is not one this code reads (1..{RECORD_VERSION})")
        for older in range(version, RECORD_VERSION):
            data = _UPGRADES[older](data)
        data["evaluations"] = [_build(Evaluation, e, f"evaluations[{i}]") for i, e in enumerate(
            data.get("evaluations", []))]
        for key, nested in (("prune", PruneEntry), ("final_model", FinalModel), ("export", ExportEntry)):
            if data.get(key) is not None:
                data[key] = _build(nested, data[key], key)
        return _build(cls, data, "results.json")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunRecord":
        """Reads ``path``; an unreadable file raises ``OSError`` or ``ValueError`` (JSON or format errors)."""
        return cls.from_json(read_json(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the record to ``path`` atomically; returns the path."""
        return write_json_atomic(path, self.to_json())


def _v1_to_v2(data: dict) -> dict:
    """Version 1 did not record the process: pid and host unknown."""
    return {**data, "pid": None, "host": None}


#: the engine's option names in version 2 records, where ``pruner.options`` mixed them with the method's own
_V2_ENGINE_KEYS = ("layer_range", "head_granularity", "batch_size", "device", "progress", "track_error")


def _v2_to_v3(data: dict) -> dict:
    """Version 3 types the pruner: ``specs.pruner`` splits ``options`` into ``engine`` and the method's own
    ``options`` and gains ``ratio_of`` (version 2 ratios were all of total parameters); the prune report's
    ``options`` become ``engine`` and ``method_options``. (Older ``specs.model`` entries may hold ``tiny`` sizes,
    which tiny model names carry since; they are kept as they are.)"""
    specs = dict(data.get("specs") or {})
    if isinstance(specs.get("pruner"), dict):
        pruner = dict(specs["pruner"])
        mixed = dict(pruner.pop("options", None) or {})
        engine = {k: mixed.pop(k) for k in list(mixed) if k in _V2_ENGINE_KEYS}
        pruner.update(ratio_of="total", engine=engine, options=mixed)
        specs["pruner"] = pruner
    prune = data.get("prune")
    if isinstance(prune, dict) and isinstance(prune.get("report"), dict):
        report = dict(prune["report"])
        mixed = dict(report.pop("options", None) or {})
        report.setdefault("first_ratio", mixed.pop("first_ratio", None))
        report.setdefault("ratio_of", "total")
        report["engine"] = {k: mixed.pop(k) for k in list(mixed) if k in _V2_ENGINE_KEYS}
        report["method_options"] = mixed
        prune = {**prune, "report": report}
    return {**data, "specs": specs, "prune": prune}


def _v3_to_v4(data: dict) -> dict:
    """Version 4 adds the export stage; a version 3 job exported nothing."""
    return {**data, "export": None}


#: version -> the function that turns a record of that version into one of the next version
_UPGRADES = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dig(value: Any, dotted: str) -> Any:
    """``value[a][b]...`` for ``dotted`` = ``a.b...``; ``None`` where a level is missing or not a dict."""
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _object(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    return data


def _build(cls: type, data: Any, where: str):
    """``cls(**data)`` with unknown or missing keys reported as one ``ValueError`` naming ``where``."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(_object(data, where)) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {names}")
    try:
        return cls(**data)
    except TypeError as error:  # a required key is missing
        raise ValueError(f"{where}: {error}") from None
