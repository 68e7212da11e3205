"""Layer-ratio schedules: how a model-level pruning budget is spread over the decoder layers (§3.2).

Incremental Pruning Ratio (the paper's default, ``log_increase``):
    r_i = r_0 + (r_{n-1} - r_0) · log(i + 1) / log(n),   i = 0 .. n-1
with the first-layer ratio ``r_0`` a hyperparameter and ``r_{n-1}`` solved so that the parameter-weighted
mean of ``r_i`` equals the target. (The released code hard-codes ``log(32)``; we use ``log(n)``.)
Decreasing schedules mirror the increasing ones (the paper's Table 6 ablation): layer ``i`` gets the ratio
the increasing schedule gives layer ``n-1-i``.
"""

import math
from dataclasses import dataclass

SCHEDULES = ("uniform", "log_increase", "linear_increase", "log_decrease", "linear_decrease")

#: Default ``r_0`` as a fraction of the mean layer ratio: the released 20% LLaMA-7B recipe (r_0 = 0.0625
#: for a mean of 0.2) scaled to any target.
DEFAULT_FIRST_RATIO_SCALE = 0.0625 / 0.2


def _shape(schedule: str, n: int) -> list[float]:
    """The schedule's profile ``f_i`` in [0, 1] (0 at the least-pruned layer)."""
    if schedule.startswith("log"):
        f = [math.log(i + 1) / math.log(n) if n > 1 else 0.0 for i in range(n)]
    else:
        f = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    return f[::-1] if schedule.endswith("decrease") else f


@dataclass(frozen=True)
class Schedule:
    """A layer-ratio schedule: its ``name`` (one of :data:`SCHEDULES`) and ``first_ratio``, the ratio of the
    least-pruned layer (layer 0 for increasing schedules, the last layer for decreasing ones; ``None`` =
    ``DEFAULT_FIRST_RATIO_SCALE`` × the mean; ignored by ``uniform``)."""

    name: str = "log_increase"
    first_ratio: float | None = None

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        r0 = self.first_ratio
        if r0 is not None and (isinstance(r0, bool) or not isinstance(r0, (int, float)) or not 0.0 <= r0 < 1.0):
            raise ValueError(f"first_ratio must be null or a number in [0, 1), got {r0!r}")


def layer_ratios(
    schedule: "str | Schedule", mean_ratio: float, weights: list[float], first_ratio: float | None = None
) -> list[float]:
    """Per-layer pruning ratios whose ``weights``-weighted mean is ``mean_ratio``.

    Args:
        schedule: a :class:`Schedule`, or the name of one (then ``first_ratio`` is its first ratio).
        mean_ratio: target weighted mean of the layer ratios (fraction of prunable parameters removed).
        weights: prunable parameter count of each layer (length ``n``).
    Returns:
        ``n`` ratios in ``[0, 1)``. Raises ``ValueError`` naming the offending value otherwise. Over a single
        layer every schedule is uniform.
    """
    if not isinstance(schedule, Schedule):
        schedule = Schedule(schedule, first_ratio)
    if not 0.0 <= mean_ratio < 1.0:
        raise ValueError(f"mean layer ratio {mean_ratio:.4f} must be in [0, 1)")
    n = len(weights)
    if schedule.name == "uniform" or mean_ratio == 0.0 or n == 1:
        return [mean_ratio] * n
    r0 = DEFAULT_FIRST_RATIO_SCALE * mean_ratio if schedule.first_ratio is None else schedule.first_ratio
    if not 0.0 <= r0 <= mean_ratio:
        raise ValueError(f"first_ratio={r0} must be in [0, mean layer ratio {mean_ratio:.4f}]")
    f = _shape(schedule.name, n)
    F = sum(w * fi for w, fi in zip(weights, f)) / sum(weights)
    r_last = r0 + (mean_ratio - r0) / F
    ratios = [r0 + (r_last - r0) * fi for fi in f]
    if max(ratios) >= 1.0:
        raise ValueError(
            f"schedule '{schedule.name}' needs a layer ratio of {max(ratios):.3f} >= 1 to reach the target; "
            f"raise first_ratio (now {r0:.4f}) or lower the ratio"
        )
    return ratios
