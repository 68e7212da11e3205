"""SlimGPT: Batched Greedy Pruning of heads and Dynamic Group Size for FFN channels, with OBS compensation."""

from ..obs import HEAD_SCORES, dynamic_group_sizes, obs_prune
from ..stats import InputStats
from ..structures import Block
from .base import Method, Selection, register


@register
class SlimGPT(Method):
    """SlimGPT (Ling et al., NeurIPS 2024).

    Args:
        damp: relative Hessian damping λ (``H += λ·mean(diag H)·I``); the released code's default 0.01.
        head_score: how heads (KV groups) are ranked, see :func:`slimgpt.pruning.obs.unit_scores`:
            ``"cholesky"`` (the paper's grouped-Cholesky score), ``"exact"`` (the exact OBS group error
            ``‖W_S U⁻¹‖²``; ours, not in the paper) or ``"diagonal"`` (per-column ``‖W_i‖² / Hinv_ii``
            summed, no grouped Cholesky: the paper's Table 5 ablation). FFN channels are single columns, for which
            the three agree.
        ffn_max_group, ffn_min_group: Dynamic Group Size bounds (the released code: 1024 and 64); equal values
            give a fixed group size.
        head_step: heads removed per greedy step (the paper: 1).
        inverse_refresh: recompute the inverse Hessian from scratch every this many greedy steps, downdating
            it in between (1 = the released code's recompute every step; same result up to round-off, a test
            checks it, and ``O(cols²·group)`` instead of ``O(cols³)`` per step).
    """

    name = "slimgpt"
    needs_hessian = True

    def __init__(
        self,
        damp: float = 0.01,
        head_score: str = "cholesky",
        ffn_max_group: int = 1024,
        ffn_min_group: int = 64,
        head_step: int = 1,
        inverse_refresh: int = 8,
    ):
        if damp < 0:
            raise ValueError(f"damp must be >= 0, got {damp}")
        if head_step < 1:
            raise ValueError(f"head_step must be >= 1, got {head_step}")
        if head_score not in HEAD_SCORES:
            raise ValueError(f"head_score must be one of {HEAD_SCORES}, got {head_score!r}")
        dynamic_group_sizes(1, ffn_max_group, ffn_min_group)  # validates the bounds
        self.damp = damp
        self.head_score = head_score
        self.ffn_max_group, self.ffn_min_group = ffn_max_group, ffn_min_group
        self.head_step = head_step
        if inverse_refresh < 1:
            raise ValueError(f"inverse_refresh must be >= 1, got {inverse_refresh}")
        self.inverse_refresh = inverse_refresh

    def steps(self, block: Block, num_remove: int) -> list[int]:
        """Units removed at each greedy step."""
        if block.kind == "attention":
            full, rest = divmod(num_remove, self.head_step)
            return [self.head_step] * full + ([rest] if rest else [])
        return dynamic_group_sizes(num_remove, self.ffn_max_group, self.ffn_min_group)

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        result = obs_prune(
            block.out_proj.weight, stats.hessian, block.units, self.steps(block, num_remove),
            score=self.head_score if block.kind == "attention" else "cholesky", damp=self.damp,
            refresh_every=self.inverse_refresh,
        )
        info = {"obs_error": result.error, "damp": result.damp, "steps": result.steps}
        return Selection(result.removed, weight=result.weight, info=info)
