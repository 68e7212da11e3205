"""Wanda-sp: Wanda's weight-times-activation score made structured (the baseline of FLAP, An et al. 2024).

Wanda scores one weight by ``|W_ij| · ‖x_j‖₂`` (``‖x_j‖₂``: L2 norm of input feature ``j`` over all
calibration tokens). Wanda-sp scores a unit by summing that over the ``out_proj`` columns it owns:

    score(u) = Σ_{j ∈ cols(u)} Σ_i |W_out[i, j]| · ‖x_j‖₂

(FLAP's code averages over the rows ``i`` instead of summing; a constant factor, same ranking.) Coupled
q/k/v and gate/up rows are not scored, as in FLAP's Wanda-sp. No weight update.
"""

from dataclasses import dataclass

import torch

from ..stats import InputStats
from ..structures import Block
from .base import register
from .scoring import ScoredMethod, unit_sum


@register
@dataclass
class WandaSP(ScoredMethod):
    """Removes the units with the smallest summed ``|W|·‖x‖₂`` over their ``out_proj`` columns."""

    name = "wanda_sp"

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        stats = self._require_stats(stats)
        W = block.out_proj.weight.detach().float()  # [hidden, cols]
        per_column = (W.abs() * stats.norm.to(W.device)[None, :]).sum(0)  # [cols]
        return unit_sum(per_column, block.units)
