"""FLAP: fluctuation-based structured pruning with bias compensation (An et al., AAAI 2024).

Score (WIFV, "weighted input feature variance") of an ``out_proj`` input column ``j`` and of a unit:

    s_j = Var(x_j) · ‖W_out[:, j]‖²,      score(u) = Σ_{j ∈ cols(u)} s_j

with ``Var(x_j)`` the variance of feature ``j`` over all calibration tokens (population variance; FLAP's
sample variance differs by ``N/(N-1)``, the same ranking). A removed column's input is then replaced by its
calibration mean, which folds into the output bias:

    b_out ← b_out + W_out[:, R] · mean(x_R)        (R: the removed columns)

so ``adds_bias = True`` (the engine gives every o_proj/down_proj a zero bias first and records it in the
config). ``bias_compensation=False`` removes the same units without it (an ablation).

Not done: FLAP's *adaptive global structure search* (standardize the scores of all layers and remove the
globally lowest heads/channels, so the layer widths come from the scores). It needs the statistics of every
layer before any is pruned and decides the per-layer counts itself, while our engine plans the per-layer
ratios from the schedule and streams layer by layer; the layer-wise variant here is FLAP's "UL-UM" setting,
and the engine's schedules take the place of its structure search.
"""

from dataclasses import dataclass

import torch

from ..stats import InputStats
from ..structures import Block
from .base import Selection, register
from .scoring import ScoredMethod, column_sq_norms, unit_sum


@register
@dataclass
class FLAP(ScoredMethod):
    """Fluctuation metric (input variance × squared column norm) with mean-input bias compensation.

    Args:
        bias_compensation: fold the removed columns' mean contribution into the ``out_proj`` bias.
    """

    name = "flap"

    bias_compensation: bool = True

    def __post_init__(self):
        if not isinstance(self.bias_compensation, bool):
            raise ValueError(f"bias_compensation must be a bool, got {self.bias_compensation!r}")

    @property
    def adds_bias(self) -> bool:
        return self.bias_compensation

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        stats = self._require_stats(stats)
        variance = stats.variance.to(block.out_proj.weight.device)
        return unit_sum(variance * column_sq_norms(block.out_proj), block.units)

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        selection = super().select(block, stats, num_remove)
        if self.bias_compensation and selection.removed:
            selection.bias = compensated_bias(block, stats.mean, selection.removed)
        return selection


def compensated_bias(block: Block, mean: torch.Tensor, removed: list[int]) -> torch.Tensor:
    """``[hidden]`` new ``out_proj`` bias: old bias (zero if none) + ``W[:, R] @ mean[R]`` in fp32.

    Args:
        mean: ``[cols]`` mean of each ``out_proj`` input column over the calibration tokens.
        removed: removed unit indices (their columns ``R = units[removed]``).
    """
    out = block.out_proj
    W = out.weight.detach().float()  # [hidden, cols]
    R = block.units[removed].flatten().to(W.device)
    bias = torch.zeros(W.shape[0], device=W.device) if out.bias is None else out.bias.detach().float()
    return bias + W[:, R] @ mean.to(W.device)[R]
