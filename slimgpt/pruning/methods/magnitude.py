"""Magnitude-sp: structured magnitude pruning, a data-free baseline (LLM-Pruner's "L2" row).

A unit's score is the L2 norm of *all* weights removed with it, taken as one vector:

    score(u) = sqrt( Σ_{j ∈ cols(u)} ‖W_out[:, j]‖²  +  Σ_{(linear, rows)} Σ_{i ∈ rows(u)} ‖W_linear[i, :]‖² )

i.e. its ``out_proj`` columns (o_proj / down_proj) and its coupled rows (the q/k/v rows of a head or KV
group — only q rows with ``head_granularity="query_head"``, where k/v go only with their last query head —
and the gate/up rows of a channel). Biases are not counted. LLM-Pruner's L2 importance sums the squared
norms of the same pieces without the square root, which ranks units identically.
"""

from dataclasses import dataclass

import torch

from ..stats import InputStats
from ..structures import Block
from .base import register
from .scoring import ScoredMethod, column_sq_norms, row_sq_norms, unit_sum


@register
@dataclass
class Magnitude(ScoredMethod):
    """Removes the units whose weights (``out_proj`` columns + coupled rows) have the smallest L2 norm."""

    name = "magnitude"
    needs_inputs = False

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        sq = unit_sum(column_sq_norms(block.out_proj), block.units)
        for linear, rows in block.coupled:
            sq = sq + unit_sum(row_sq_norms(linear), rows)
        return sq.sqrt()
