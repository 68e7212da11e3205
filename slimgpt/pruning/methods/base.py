"""The pruning-method protocol: a method only *chooses* units (and may rewrite ``out_proj``); the engine does
the layer loop, statistics and surgery for every method."""

from dataclasses import dataclass, field

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


class Method:
    """Base class. Subclasses set ``name``, ``needs_hessian`` and implement :meth:`select`."""

    name: str = ""
    #: whether the engine must accumulate the ``cols x cols`` input Hessian (otherwise only column moments)
    needs_hessian: bool = False
    #: whether the engine must run calibration data through each block at all
    needs_inputs: bool = True
    #: whether ``Selection.bias`` is used (the engine then gives every o_proj/down_proj a bias first)
    adds_bias: bool = False

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        raise NotImplementedError

    def prepare(self, model, calibration: torch.Tensor) -> None:
        """Hook for whole-model statistics before the layer loop (e.g. gradients for LLM-Pruner)."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, options: dict) -> Method:
    """Instantiates method ``name`` with its ``options`` (clear errors for unknown names/options)."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method '{name}'; choose one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    try:
        return cls(**options)
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"bad option for method '{name}' ({err}); its options are: {allowed or 'none'}") from None
