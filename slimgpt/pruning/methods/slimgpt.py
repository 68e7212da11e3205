"""SlimGPT: Batched Greedy Pruning of heads and Dynamic Group Size for FFN channels, with OBS compensation."""

from dataclasses import dataclass

from ..balanced import group_sizes, layouts_freeing, obs_prune_balanced
from ..obs import HEAD_SCORES, dynamic_group_sizes, obs_prune
from ..stats import InputStats
from ..structures import Block
from .base import Method, Selection, register


@register
@dataclass
class SlimGPT(Method):
    """SlimGPT (Ling et al., NeurIPS 2024).

    Options (the dataclass fields):
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

    damp: float = 0.01
    head_score: str = "cholesky"
    ffn_max_group: int = 1024
    ffn_min_group: int = 64
    head_step: int = 1
    inverse_refresh: int = 8

    def __post_init__(self):
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or self.damp < 0:
            raise ValueError(f"damp must be a number >= 0, got {self.damp!r}")
        if self.head_score not in HEAD_SCORES:
            raise ValueError(f"head_score must be one of {HEAD_SCORES}, got {self.head_score!r}")
        dynamic_group_sizes(1, self.ffn_max_group, self.ffn_min_group)  # validates the bounds
        for key in ("head_step", "inverse_refresh"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")

    def steps(self, block: Block, num_remove: int) -> list[int]:
        """Units removed at each greedy step."""
        if block.kind == "attention":
            full, rest = divmod(num_remove, self.head_step)
            return [self.head_step] * full + ([rest] if rest else [])
        return dynamic_group_sizes(num_remove, self.ffn_max_group, self.ffn_min_group)

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        if block.groups is not None:
            return self.select_balanced(block, stats, num_remove)
        result = obs_prune(
            block.out_proj.weight, stats.hessian, block.units, self.steps(block, num_remove),
            score=self.head_score if block.kind == "attention" else "cholesky", damp=self.damp,
            refresh_every=self.inverse_refresh,
        )
        info = {"obs_error": result.error, "damp": result.damp, "steps": result.steps}
        return Selection(result.removed, weight=result.weight, info=info)

    def select_balanced(self, block: Block, stats: InputStats, num_slots: int) -> Selection:
        """Query heads freeing ``num_slots`` head slots in a balanced layout: every candidate layout pruned by
        greedy OBS (``obs_prune_balanced``), the one with the least OBS error kept."""
        layouts = layouts_freeing(group_sizes(block.groups), num_slots)
        result, layout = obs_prune_balanced(
            block.out_proj.weight, stats.hessian, block.units, block.groups, layouts, score=self.head_score,
            damp=self.damp, refresh_every=self.inverse_refresh, head_step=self.head_step,
        )
        info = {"obs_error": result.error, "damp": result.damp, "steps": result.steps, "layout": str(layout),
                "layouts": len(layouts)}
        return Selection(result.removed, weight=result.weight, info=info)
