"""Typed, validated specifications built from the Hydra config groups (each YAML's ``_target_`` names one).

They are plain frozen dataclasses: the stage functions take them as arguments, never a ``DictConfig``.
Every ``__post_init__`` rejects a bad value with one message naming the value and what is allowed, so a
typo fails when the job starts, not an hour into it. Unknown keys fail in ``__init__`` (dataclasses accept
only their declared fields).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from ..assets.text import TEXT_CORPORA
from ..eval.zeroshot import TASKS as ZEROSHOT_TASKS
from ..pruning.methods import Method, make_method
from ..pruning.options import EngineOptions, check_ratio
from ..pruning.schedules import Schedule as ScheduleSpec  # the schedule is its own typed spec (conf/schedule)

STAGES = ("prune", "finetune", "eval", "export")
#: what a job runs unless ``stages`` says otherwise (the export is opt-in: ``stages=[prune,finetune,eval,export]``)
DEFAULT_STAGES = ("prune", "finetune", "eval")
DTYPES = ("float32", "bfloat16", "float16")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_positive(owner: str, **values: int | None) -> None:
    for key, value in values.items():
        _require(value is None or value > 0, f"{owner}.{key} must be a positive number, got {value!r}")


def _plain(value: Any) -> Any:
    """Turns OmegaConf containers (when a spec is built by ``instantiate``) into plain dicts/lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class ModelSpec:
    """Which model to start from: a name ``slimgpt.load_model`` knows (an asset such as ``smollm2-135m``, a
    hub id, a local path, or a tiny random model ``tiny:llama?num_layers=2``), its dtype and device.

    ``streaming``: prune out of core (``slimgpt.prune_checkpoint``: one decoder layer in memory at a time,
    bit-identical weights): ``true``, ``false``, or ``"auto"`` = streaming when the dense weights in ``dtype``
    take more than half of the host's available memory and the model and method can stream (a checkpoint
    folder or an asset, a method without whole-model statistics); it changes no number, so no cache key.
    """

    name: str
    dtype: str = "float32"
    device: str = "cpu"
    streaming: bool | str = "auto"

    def __post_init__(self):
        _require(self.streaming in (True, False, "auto"),
                 f"model.streaming={self.streaming!r}; use true, false or auto")
        _require(not (self.streaming is True and self.name.startswith("tiny:")),
                 f"model.streaming=true, but {self.name} is built in memory and has no checkpoint to stream")
        _require(bool(self.name), "model.name must be a model name, hub id or path, got an empty value")
        _require(self.dtype in DTYPES, f"model.dtype={self.dtype!r} is not one of {list(DTYPES)}")
        _require(
            self.device == "cpu" or self.device.startswith("cuda"),
            f"model.device={self.device!r}; use 'cpu' or 'cuda[:N]'",
        )

    def identity(self) -> dict:
        """The fields that determine the weights (the device does not)."""
        return {"name": self.name, "dtype": self.dtype}


@dataclass(frozen=True)
class CalibSpec:
    """Calibration set: ``num_samples`` random windows of ``seq_len`` tokens from corpus ``source``."""

    source: str
    num_samples: int = 128
    seq_len: int = 512
    seed: int = 0

    def __post_init__(self):
        _require(self.source in TEXT_CORPORA, f"calib.source={self.source!r} is not one of {list(TEXT_CORPORA)}")
        _check_positive("calib", num_samples=self.num_samples, seq_len=self.seq_len)
        _require(self.seq_len >= 2, f"calib.seq_len={self.seq_len} must be >= 2 (a window needs context)")


@dataclass(frozen=True)
class PrunerSpec:
    """A structured pruner and its target: ``method`` with its ``options``, the engine's options, the ratio.

    ``ratio`` is the fraction of parameters to remove, in [0, 1): of the model's total parameters
    (``ratio_of: total``, the paper's convention, see docs/method.md) or of the prunable parameters of the
    pruned layers (``ratio_of: layers``). ``engine`` holds the
    :class:`~slimgpt.pruning.options.EngineOptions` fields; ``options`` the fields of the method's dataclass
    (built here, so a bad option fails when the job starts).
    """

    method: str
    ratio: float
    ratio_of: str = "total"
    engine: EngineOptions = field(default_factory=EngineOptions)
    options: Method | dict = field(default_factory=dict)

    def __post_init__(self):
        check_ratio(self.ratio, self.ratio_of)
        engine = self.engine if isinstance(self.engine, EngineOptions) else EngineOptions.from_dict(_plain(self.engine))
        options = self.options if isinstance(self.options, Method) else make_method(self.method, _plain(self.options))
        _require(options.name == self.method, f"pruner.options are those of method '{options.name}', not '{self.method}'")
        options.check_engine(engine)
        object.__setattr__(self, "engine", engine)
        object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA recovery stage: train on ``train_examples`` of instruction set ``data``, then merge.

    ``options`` go to ``slimgpt.finetune.lora.lora_finetune`` as keyword arguments (rank, lr, epochs, ...).
    """

    data: str
    train_examples: int | None = None
    eval_examples: int = 64
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", _plain(self.options) or {})
        _require(bool(self.data), "finetune stage data must name an instruction set (sharegpt, alpaca-cleaned)")
        _check_positive("finetune", train_examples=self.train_examples, eval_examples=self.eval_examples)


@dataclass(frozen=True)
class FinetuneSpec:
    """Recovery stages applied in order (an empty list = no recovery)."""

    stages: tuple[LoraSpec, ...] = ()

    def __post_init__(self):
        stages = tuple(_plain(self.stages) or ())
        for stage in stages:
            _require(isinstance(stage, LoraSpec), f"finetune.stages entries must be LoRA stages, got {stage!r}")
        object.__setattr__(self, "stages", stages)


@dataclass(frozen=True)
class PerplexitySpec:
    """Perplexity on each of ``corpora`` (split ``split``), windows of ``seq_len`` tokens."""

    corpora: tuple[str, ...] = ("wiki",)
    split: str = "test"
    seq_len: int = 128
    batch_size: int = 8
    max_tokens: int | None = None

    def __post_init__(self):
        corpora = tuple(_plain(self.corpora) or ())
        _require(len(corpora) > 0, "eval.perplexity.corpora must list at least one corpus")
        unknown = [c for c in corpora if c not in TEXT_CORPORA]
        _require(not unknown, f"eval.perplexity.corpora: unknown corpus {unknown}; known: {list(TEXT_CORPORA)}")
        object.__setattr__(self, "corpora", corpora)
        _check_positive("eval.perplexity", seq_len=self.seq_len, batch_size=self.batch_size, max_tokens=self.max_tokens)
        _require(self.seq_len >= 2, f"eval.perplexity.seq_len={self.seq_len} must be >= 2")


@dataclass(frozen=True)
class ZeroshotSpec:
    """lm-eval zero-shot accuracy on ``tasks`` (first ``limit`` examples of each; null = all).

    ``metrics`` overrides the per-task metric (task -> acc | acc_norm); ``source`` is ``local`` (offline
    data from slimgpt.assets) or ``hub`` (the stock lm-eval datasets, online).
    """

    tasks: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
    limit: int | None = None
    batch_size: int = 8
    metrics: dict | None = None
    source: str = "local"

    def __post_init__(self):
        object.__setattr__(self, "metrics", _plain(self.metrics))
        _require(self.source in ("local", "hub"), f"eval.zeroshot.source={self.source!r}; allowed: local, hub")
        tasks = tuple(_plain(self.tasks) or ())
        _require(len(tasks) > 0, "eval.zeroshot.tasks must list at least one task")
        unknown = [t for t in tasks if t not in ZEROSHOT_TASKS]
        _require(not unknown, f"eval.zeroshot.tasks: unknown task {unknown}; known: {list(ZEROSHOT_TASKS)}")
        object.__setattr__(self, "tasks", tasks)
        _check_positive("eval.zeroshot", limit=self.limit, batch_size=self.batch_size)


@dataclass(frozen=True)
class EvalSpec:
    """What to measure on each model: perplexity and/or zero-shot (at least one)."""

    perplexity: PerplexitySpec | None = None
    zeroshot: ZeroshotSpec | None = None

    def __post_init__(self):
        _require(self.perplexity is not None or self.zeroshot is not None, "eval needs perplexity and/or zeroshot")


@dataclass(frozen=True)
class ExportSpec:
    """The ``export`` stage: the job's final model as a GGUF file for llama.cpp (``slimgpt.export.to_gguf``).

    ``dtype``: a GGUF type (``f32``, ``f16``, ``bf16``, or ``q8_0``/``q4_k_m``/``q5_k_m`` from llama.cpp's
    quantizer); ``pad_ffn``: FFN widths rounded up to a multiple with zero channels (exact); ``regroup``: write
    uneven query groups (``head_granularity=query_head``) with extra kv heads instead of refusing them;
    ``threads``: threads of the quantizer.
    """

    dtype: str = "q8_0"
    pad_ffn: int = 1
    regroup: bool = False
    threads: int = 1

    def __post_init__(self):
        from slimgpt.export.gguf import GGUF_TYPES

        _require(self.dtype in GGUF_TYPES, f"export.dtype={self.dtype!r} is not one of {list(GGUF_TYPES)}")
        _check_positive("export", pad_ffn=self.pad_ffn, threads=self.threads)
        _require(isinstance(self.regroup, bool), f"export.regroup must be true or false, got {self.regroup!r}")


def parse_stages(stages: list[str]) -> tuple[str, ...]:
    """Validates the ``stages`` list: names from ``STAGES``, no repeats, kept in pipeline order."""
    stages = list(_plain(stages))
    for stage in stages:
        _require(stage in STAGES, f"stages: unknown stage {stage!r}; allowed: {list(STAGES)}")
    _require(len(set(stages)) == len(stages), f"stages: {stages} repeats a stage")
    _require(len(stages) > 0, f"stages is empty; choose from {list(STAGES)}")
    return tuple(s for s in STAGES if s in stages)


def spec_dict(spec: Any) -> dict | None:
    """A JSON-able dict of a spec (``None`` stays ``None``)."""
    return None if spec is None else asdict(spec)
