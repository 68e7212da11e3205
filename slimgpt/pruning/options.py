"""The engine's typed options: how the layer loop runs, independent of the method that chooses units.

A method's own options are the fields of its dataclass (``slimgpt.pruning.methods``); the layer-ratio
schedule is :class:`slimgpt.pruning.schedules.Schedule`. Each value is checked once, here, when the object
is built — so a bad value fails before any weight changes (and, in the runner, before any stage runs).
"""

from dataclasses import dataclass, fields
from typing import Any

from .structures import HEAD_GRANULARITIES

#: how the layer loop computes a layer's activations: ``"one"`` pass (each activation once, the ``o_proj`` and
#: ``down_proj`` inputs kept in buffers), ``"three"`` passes (recomputed, no buffers), or ``"auto"``
#: (one pass when the buffers fit: ``slimgpt.pruning.engine.plan_buffers``)
PASSES = ("auto", "one", "three")

#: where the one-pass loop keeps its activation buffers: ``"auto"`` (device, else host memory, else disk, by size:
#: ``slimgpt.pruning.engine.plan_buffers``) or forced to the compute ``"device"``, ``"host"`` memory or ``"disk"``
BUFFERS = ("auto", "device", "host", "disk")

#: what ``ratio`` is a fraction of: the model's total parameters (the paper's convention, embeddings
#: included) or the prunable parameters of the pruned decoder layers (those in ``layer_range``)
RATIO_OF = ("total", "layers")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class EngineOptions:
    """Options of the layer loop (``slimgpt.pruning.engine.prune_model``).

    head_granularity: ``"kv_group"`` (a key-value head with its query heads is one unit, the paper's),
        ``"query_head"`` (single query heads; a kv head goes when no query head reads it) or
        ``"balanced_query_head"`` (single query heads, every kept kv head keeping the same number: the layout
        llama.cpp runs; ``slimgpt.pruning.balanced``).
    layer_range: ``(start, end)``: only layers ``start <= i < end`` are pruned (LLM-Pruner's setting keeps
        the first and last layers dense); ``None`` = all layers. Checked against the model's depth when the
        ratios are planned.
    batch_size: calibration sequences per layer forward.
    device: compute device of the current layer (default: CUDA if available, else CPU).
    progress: show a progress bar over layers.
    track_error: also run the dense model alongside and report each layer's relative output error
        ``‖y - y_dense‖² / ‖y_dense‖²`` (one more layer forward and one more input buffer per layer).
    width_multiple: FFN widths are rounded to a multiple of this (the OBS step removes channels down to the
        aligned width; the layer's parameter budget is kept to within half a multiple). 1 = the paper; 32
        lets llama.cpp use its fast F16/Q8_0 kernels; 256 suits its k-quants.
    passes: ``"one"`` (compute each activation of a layer once and keep the ``o_proj``/``down_proj``
        inputs), ``"three"`` (recompute them: no activation buffers) or ``"auto"`` (one pass when the buffers
        fit, see ``slimgpt.pruning.engine.plan_buffers``). Both choose the same units.
    buffers: where the one-pass buffers live: ``"auto"`` (by size, see ``plan_buffers``), ``"device"``,
        ``"host"`` or ``"disk"`` (memory-mapped files, bit-identical results); not with ``passes="three"``.
    buffer_dir: folder of the disk buffers (default: the system temporary folder); each file is unlinked as soon
        as it is mapped and its space freed at the end of the layer.
    """

    head_granularity: str = "kv_group"
    layer_range: tuple[int, int] | None = None
    batch_size: int = 8
    device: str | None = None
    progress: bool = True
    track_error: bool = False
    width_multiple: int = 1
    passes: str = "auto"
    buffers: str = "auto"
    buffer_dir: str | None = None

    def __post_init__(self):
        if self.head_granularity not in HEAD_GRANULARITIES:
            raise ValueError(f"unknown head_granularity {self.head_granularity!r}; "
                             f"choose one of {', '.join(HEAD_GRANULARITIES)}")
        if self.passes not in PASSES:
            raise ValueError(f"unknown passes {self.passes!r}; choose one of {', '.join(PASSES)}")
        if self.buffers not in BUFFERS:
            raise ValueError(f"unknown buffers {self.buffers!r}; choose one of {', '.join(BUFFERS)}")
        if self.buffers != "auto" and self.passes == "three":
            raise ValueError(f"buffers={self.buffers!r} places the one-pass loop's buffers, but passes='three' "
                             "keeps none; use passes='one' or 'auto', or buffers='auto'")
        if self.buffer_dir is not None and not isinstance(self.buffer_dir, str):
            object.__setattr__(self, "buffer_dir", str(self.buffer_dir))
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not _is_int(self.width_multiple) or self.width_multiple < 1:
            raise ValueError(f"width_multiple must be a positive int, got {self.width_multiple!r}")
        if self.layer_range is not None:
            span = tuple(self.layer_range)
            if len(span) != 2 or not all(map(_is_int, span)) or not 0 <= span[0] < span[1]:
                raise ValueError(f"layer_range must be null or [start, end] with 0 <= start < end, "
                                 f"got {self.layer_range!r}")
            object.__setattr__(self, "layer_range", span)
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
        if self.device is not None and self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device={self.device!r} but this machine has no CUDA GPU (or torch was built "
                                 "without CUDA); use device='cpu'")
        for name in ("progress", "track_error"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "EngineOptions":
        """Builds the options from a plain dict (one clear error for an unknown key)."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown engine option(s) {', '.join(unknown)}; engine options are: "
                             f"{', '.join(cls.names())}")
        return cls(**values)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (to split ``slimgpt.prune``'s keyword arguments into engine and method options)."""
        return tuple(f.name for f in fields(cls))


def check_ratio(ratio: Any, ratio_of: str) -> None:
    """One clear error for a bad target ratio or ratio convention."""
    if ratio_of not in RATIO_OF:
        raise ValueError(f"ratio_of must be one of {', '.join(RATIO_OF)}, got {ratio_of!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
