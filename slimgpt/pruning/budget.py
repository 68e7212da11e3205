"""Pure kernels of slimgpt+'s budget decisions (docs/method.md#slimgpt-beyond-the-paper): a layer's OBS error as a
function of the parameters it loses, the best heads/FFN split of a layer budget, and the split of a model budget
over layers.

A layer's *error curve* comes from two greedy OBS runs on its calibration statistics: removing attention units
one by one from ``o_proj`` (cumulative error ``E_a(h)`` after ``h`` units, freeing ``A(h)`` parameters) and FFN
channels from ``down_proj`` (cumulative error ``E_f(c)`` after ``c`` channels, sampled every few channels and
interpolated linearly). Both errors are ``(2/N) Σ_t ‖Δy_t‖²`` of a change of the residual stream (each
``out_proj`` adds into it), so they are comparable: a layer budget ``P`` is best split as

    h* = argmin_h  E_a(h) + E_f(c(P - A(h)))       c(p) = the channels that free p parameters

over every feasible ``h`` (the fixed rule ``h = round(ratio · units)`` is one of the candidates, so the chosen
split's estimated error is never above it). The FFN curve is measured with the dense attention's statistics: it
ignores that removing heads also changes the FFN's input.
"""

from dataclasses import dataclass

import torch


@dataclass
class LayerCurve:
    """The OBS error curves of one layer.

    head_errors: ``[U]`` cumulative error after removing ``h = 0 .. U-1`` attention units (``head_errors[0] = 0``).
    head_freed: ``[U]`` parameters freed by those ``h`` units.
    ffn_counts: ``[K]`` increasing channel counts where ``E_f`` was measured (``ffn_counts[0] = 0``).
    ffn_errors: ``[K]`` cumulative error after removing ``ffn_counts[k]`` channels.
    channel_params: parameters freed per FFN channel.
    max_channels: most channels the layer may lose.
    params: prunable parameters of the layer.
    """

    head_errors: list[float]
    head_freed: list[int]
    ffn_counts: list[int]
    ffn_errors: list[float]
    channel_params: int
    max_channels: int
    params: int

    def ffn_error(self, channels: float) -> float:
        """``E_f(channels)``, linear between the measured counts (beyond the last one: its slope continued)."""
        counts, errors = self.ffn_counts, self.ffn_errors
        if channels <= 0:
            return 0.0
        for k in range(1, len(counts)):
            if channels <= counts[k] or k == len(counts) - 1:
                span = counts[k] - counts[k - 1]
                return errors[k - 1] + (errors[k] - errors[k - 1]) * (channels - counts[k - 1]) / span
        return errors[-1]

    def split(self, budget: float) -> tuple[int, float]:
        """``(h*, error)``: the attention units whose removal, with the FFN channels taking the rest of ``budget``
        parameters, has the least estimated error (ties: fewer units). ``(0, inf)`` if no split is feasible."""
        best = (0, float("inf"))
        for h, (error, freed) in enumerate(zip(self.head_errors, self.head_freed)):
            channels = max(budget - freed, 0.0) / self.channel_params
            if freed > budget + self.channel_params / 2 or channels > self.max_channels:
                continue
            total = error + self.ffn_error(channels)
            if total < best[1]:
                best = (h, total)
        return best

    def most(self) -> float:
        """The largest budget a split can meet (every unit but one and ``max_channels`` channels)."""
        return self.head_freed[-1] + self.max_channels * self.channel_params


def cumulative(step_errors: list[float]) -> list[float]:
    """``[0, e_0, e_0 + e_1, ...]``: the error after each greedy step, from the error of each step."""
    out = [0.0]
    for e in step_errors:
        out.append(out[-1] + float(e))
    return out


def lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex envelope of ``(x, y)`` points sorted by ``x`` (the first point is kept)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] is on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(curves: list[LayerCurve | None], to_remove: float, points: int = 64) -> list[float]:
    """Parameters to remove from each layer so that they add up to ``to_remove`` with the least total error.

    Each layer's curve ``P -> E(P) = min_h E_a(h) + E_f(...)`` is sampled at ``points`` budgets up to its
    :meth:`LayerCurve.most`, replaced by its lower convex envelope, and the envelopes' segments of all layers are
    taken in order of error per parameter (a Lagrangian allocation); the last one only partly, so the sum is
    exact. ``None`` curves (layers left out) get 0.

    Returns:
        per layer, parameters to remove (floats; the engine rounds to whole units).
    """
    segments = []  # (slope, layer, dx)
    for i, curve in enumerate(curves):
        if curve is None:
            continue
        top = curve.most()
        samples = [(top * k / points, curve.split(top * k / points)[1]) for k in range(points + 1)]
        hull = lower_hull([(x, y) for x, y in samples if y != float("inf")])
        segments += [((y2 - y1) / (x2 - x1), i, x2 - x1) for (x1, y1), (x2, y2) in zip(hull, hull[1:]) if x2 > x1]
    capacity = sum(dx for _, _, dx in segments)
    if not 0 <= to_remove <= capacity:
        raise ValueError(f"cannot remove {to_remove:,.0f} parameters: the layers' error curves reach at most "
                         f"{capacity:,.0f}")
    taken = [0.0] * len(curves)
    left = to_remove
    for slope, i, dx in sorted(segments, key=lambda s: (s[0], s[1])):
        step = min(dx, left)
        taken[i] += step
        left -= step
        if left <= 0:
            break
    return taken


def ffn_sample_steps(max_channels: int, samples: int = 48) -> list[int]:
    """Greedy step sizes that remove ``max_channels`` channels in about ``samples`` equal steps."""
    size = max(1, -(-max_channels // samples))
    full, rest = divmod(max_channels, size)
    return [size] * full + ([rest] if rest else [])


def token_weights(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``[..., 1]`` per-token weight ``1 / mean_j x_j²`` of residual-stream states ``x: [..., hidden]``: an error
    ``δ_t`` added to token ``t`` is seen by the next RMSNorm as ``δ_t / rms(x_t)``."""
    return 1.0 / (x.float().pow(2).mean(-1, keepdim=True) + eps)
