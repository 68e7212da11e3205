"""The pruning-method protocol: a method only *chooses* units (and may rewrite ``out_proj``); the engine does
the layer loop, statistics and surgery for every method."""

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch

from ..stats import InputStats
from ..structures import Block


@dataclass
class Selection:
    """A method's decision for one block.

    removed: unit indices to delete.
    weight: new ``[rows, cols]`` weight for ``out_proj`` before slicing (OBS compensation), or None.
    bias: new ``[rows]`` bias for ``out_proj`` (FLAP's bias compensation), or None.
    info: numbers for the report (estimated error, damping, steps).
    """

    removed: list[int]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Method:
    """Base class of every method: a dataclass whose fields are the method's options.

    Subclasses are ``@dataclass``es: they declare their options as fields with defaults, check them in
    ``__post_init__`` (once, when the method is built), set the class variables below, and implement
    :meth:`select`. State computed while pruning (e.g. LLM-Pruner's gradients) lives in private attributes
    that are not fields, so :meth:`options` (what the report records) stays plain data.
    """

    name: ClassVar[str] = ""
    #: whether the engine must accumulate the ``cols x cols`` input Hessian (otherwise only column moments)
    needs_hessian: ClassVar[bool] = False
    #: whether the engine must run calibration data through each block at all
    needs_inputs: ClassVar[bool] = True
    #: whether :meth:`plan` decides every layer's width (FLAP's global search): the engine's schedule and its
    #: per-layer feasibility check then do not apply. A method whose ``plan`` only prepares state and returns
    #: ``None`` (slimgpt+'s sensitivity pass) leaves it False and keeps the schedule.
    plans_widths: ClassVar[bool] = False

    @property
    def adds_bias(self) -> bool:
        """Whether ``Selection.bias`` is used (the engine then gives every o_proj/down_proj a bias first)."""
        return False

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        """The units of ``block`` to remove (``num_remove`` of them; for a balanced query-head block,
        ``block.groups`` set, query heads freeing ``num_remove`` head slots in a balanced layout:
        :mod:`slimgpt.pruning.balanced`)."""
        raise NotImplementedError

    def check_granularity(self, granularity: str) -> None:
        """Refuses a ``head_granularity`` this method cannot prune with (one clear error; default: accepts all)."""

    def check_engine(self, engine) -> None:
        """Refuses engine options (``EngineOptions``) this method cannot prune with, one clear error each: its
        head granularity (:meth:`check_granularity`) and, for a method that plans every layer's width itself
        (:meth:`plan`), aligned FFN widths (``width_multiple > 1``: its plan does not round to a multiple)."""
        self.check_granularity(engine.head_granularity)
        if engine.width_multiple > 1 and self.plans_widths:
            raise ValueError(f"method '{self.name}' plans every layer's width itself; width_multiple="
                             f"{engine.width_multiple} is not supported with it (use 1)")

    def prepare(self, model, calibration: torch.Tensor) -> None:
        """Hook for whole-model statistics before the layer loop (e.g. gradients for LLM-Pruner)."""

    def plan(self, model, params_after: float, granularity: str,
             layer_range: tuple[int, int] | None) -> list[tuple[int, int]] | None:
        """Per layer, ``(attention units, FFN channels)`` to remove, for a method that decides every layer's width
        itself (FLAP's global search) so that ``model`` keeps ``params_after`` parameters; runs after
        :meth:`prepare`. ``None`` (the default): the engine's schedule decides."""
        return None

    def layer_target(self, layer, index: int, ratio: float, inps: torch.Tensor, batches: list,
                     engine) -> tuple[float, int | None]:
        """Hook before decoder layer ``index`` is pruned (``inps: [n, L, hidden]`` its inputs, ``batches`` the
        engine's calibration batches, ``engine`` its options): the layer's ratio and, optionally, the attention
        units to remove (the FFN then takes the rest of the layer's budget). Default: ``(ratio, None)``."""
        return ratio, None

    def finish_layer(self, layer, index: int, inps: torch.Tensor) -> None:
        """Hook after decoder layer ``index`` is pruned, with its outputs ``inps: [n, L, hidden]`` (the next
        layer's inputs; a method may correct the layer and them in place). Default: nothing."""

    def options(self) -> dict:
        """The method's options as a plain dict (the report records it)."""
        return asdict(self)


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def option_names(name: str) -> tuple[str, ...]:
    """The options (dataclass fields) of method ``name``."""
    return tuple(f.name for f in fields(method_class(name)))


def method_class(name: str) -> type[Method]:
    """The registered class of method ``name`` (one clear error for an unknown name)."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_method(name: str, options: dict | None = None) -> Method:
    """Builds method ``name`` from its ``options`` (clear errors for unknown names and options)."""
    cls, options = method_class(name), dict(options or {})
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        allowed = ", ".join(option_names(name)) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for method '{name}'; its options are: {allowed}")
    return cls(**options)
