"""Random: removes uniformly random units (the floor every scored method must beat).

Reproducible: the units of a block are ranked by ``torch.rand`` from a generator seeded with
``(seed, layer, block kind)``, so one seed gives one pruned model whatever the schedule or device.
"""

from dataclasses import dataclass

import torch

from ..stats import InputStats
from ..structures import Block
from .base import register
from .scoring import ScoredMethod


@register
@dataclass
class Random(ScoredMethod):
    """Seeded random units.

    Options (the dataclass fields):
        seed: the seed (an int).
    """

    name = "random"
    needs_inputs = False

    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(block_seed(self.seed, block))
        return torch.rand(block.num_units, generator=generator)


def block_seed(seed: int, block: Block) -> int:
    """A distinct, deterministic seed per (seed, layer, kind)."""
    return (seed * 1_000_003 + 2 * (block.layer + 1) + (block.kind == "mlp")) % (2**63)
