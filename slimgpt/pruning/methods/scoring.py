"""Score-and-drop baselines: a method gives every unit of a block one score and the lowest-scoring units go.

Shared by ``magnitude``, ``wanda_sp``, ``flap``, ``random`` and ``llm_pruner``. A unit's score is always a
sum of per-column terms over its ``out_proj`` columns plus (for methods that look at them) per-row terms over
its coupled rows, so the helpers here reduce ``[cols]`` / ``[rows]`` vectors to ``[u]`` unit scores.
"""

import torch

from ..balanced import group_sizes, layouts_freeing, lowest_balanced
from ..stats import InputStats
from ..structures import Block
from .base import Method, Selection


def lowest(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` smallest of ``scores: [u]`` (ties: lower index first), sorted ascending."""
    if not 0 <= k < scores.numel():
        raise ValueError(f"cannot remove {k} of {scores.numel()} units (must keep at least one)")
    order = torch.argsort(scores, stable=True)
    return sorted(order[:k].tolist())


def unit_sum(per_column: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``per_column: [n]`` summed over each unit's indices ``index: [u, s]`` -> ``[u]``."""
    return per_column[index.to(per_column.device)].sum(-1)


def column_sq_norms(linear: torch.nn.Linear) -> torch.Tensor:
    """``[in]``: ``‖W[:, j]‖²`` of each input column (fp32)."""
    return linear.weight.detach().float().pow(2).sum(0)


def row_sq_norms(linear: torch.nn.Linear) -> torch.Tensor:
    """``[out]``: ``‖W[i, :]‖²`` of each output row (fp32)."""
    return linear.weight.detach().float().pow(2).sum(1)


class ScoredMethod(Method):
    """Removes the ``num_remove`` units with the lowest :meth:`scores`; ``out_proj`` is left as it is."""

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        """``[u]`` importance of each unit of ``block`` (higher = keep)."""
        raise NotImplementedError

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        scores = self.scores(block, stats)
        if block.groups is None:
            removed = lowest(scores, num_remove)
        else:  # balanced query heads: num_remove counts head slots
            layouts = layouts_freeing(group_sizes(block.groups), num_remove)
            removed, _ = lowest_balanced(scores, block.groups, layouts)
        kept = torch.ones(scores.numel(), dtype=torch.bool)
        kept[removed] = False
        info = {"min_kept_score": float(scores[kept].min())}
        if removed:
            info["max_removed_score"] = float(scores[removed].max())
        return Selection(removed, info=info)

    def _require_stats(self, stats: InputStats | None) -> InputStats:
        if stats is None:
            raise ValueError(f"method '{self.name}' needs input statistics (needs_inputs = True)")
        return stats
