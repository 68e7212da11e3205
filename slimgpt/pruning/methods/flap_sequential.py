"""FLAP's layer-wise variant (FLAP's "UL-UM" setting) run through the sequential engine: ``flap_sequential``.

Score (WIFV, "weighted input feature variance") of an ``out_proj`` input column ``j`` and of a unit:

    s_j = Var(x_j) · ‖W_out[:, j]‖²,      score(u) = Σ_{j ∈ cols(u)} s_j

with ``Var(x_j)`` the variance of feature ``j`` over all calibration tokens (population variance). A removed
column's input is then replaced by its calibration mean, folded into the output bias (``compensated_bias``),
so ``adds_bias = True``. ``bias_compensation=False`` removes the same units without it (an ablation).

How it differs from FLAP as released (``flap``, :mod:`.flap`): the statistics of layer ``i`` are taken on the
inputs of the *already pruned* layers ``0..i-1`` (the engine's sequential loop, as for every other method
here), the head score sums ``s_j`` without squaring it (the released code sums ``s_j²``), and the engine's
schedule decides each layer's width instead of FLAP's global structure search.
"""

from dataclasses import dataclass

import torch

from ..stats import InputStats
from ..structures import Block
from .base import Selection, register
from .scoring import ScoredMethod, column_sq_norms, unit_sum


@register
@dataclass
class FLAPSequential(ScoredMethod):
    """Fluctuation metric (input variance × squared column norm) with mean-input bias compensation, one layer
    at a time on the pruned model's inputs, widths from the schedule.

    Args:
        bias_compensation: fold the removed columns' mean contribution into the ``out_proj`` bias.
    """

    name = "flap_sequential"

    bias_compensation: bool = True

    def __post_init__(self):
        check_bias_compensation(self.bias_compensation)

    @property
    def adds_bias(self) -> bool:
        return self.bias_compensation

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        stats = self._require_stats(stats)
        return unit_sum(fluctuation(block, stats), block.units)

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        selection = super().select(block, stats, num_remove)
        if self.bias_compensation and selection.removed:
            selection.bias = compensated_bias(block, stats.mean, selection.removed)
        return selection


def check_bias_compensation(value) -> None:
    """One clear error for a non-bool ``bias_compensation`` option."""
    if not isinstance(value, bool):
        raise ValueError(f"bias_compensation must be a bool, got {value!r}")


def fluctuation(block: Block, stats: InputStats) -> torch.Tensor:
    """``[cols]`` WIFV of each ``out_proj`` input column: ``Var(x_j) · ‖W_out[:, j]‖²`` (fp32)."""
    return stats.variance.to(block.out_proj.weight.device) * column_sq_norms(block.out_proj)


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
