"""slimgpt+ (ours, issue 15): SlimGPT's OBS pruning with the changes that measured better on GQA models
(docs/method.md#slimgpt-beyond-the-paper; the numbers: experiments/slimgpt_plus/README.md).

Every option off (``head_score="cholesky"``, ``joint_split=False``, ``layer_ratios="schedule"``,
``refit="none"``) is exactly ``slimgpt``. The options:

- ``head_score="exact"``: heads ranked by the exact OBS group error ``‖W_S U⁻¹‖²`` instead of the paper's
  grouped-Cholesky diagonal.
- ``joint_split``: the layer's budget is split between attention units and FFN channels by least estimated OBS
  error (:meth:`slimgpt.pruning.budget.LayerCurve.split`, curves measured on the layer's current inputs with the
  dense attention), instead of ``round(ratio · units)`` heads and the rest in channels (with
  ``head_granularity=balanced_query_head`` the engine's balanced slot rule stays: the curve ignores the balance).
- ``layer_ratios="sensitivity"``: before the layer loop, one pass of the dense model measures every layer's error
  curve and the model budget is spread over the layers by least total error
  (:func:`slimgpt.pruning.budget.allocate`), replacing the schedule's log formula; the total stays exact.
  Curve errors weigh each token by ``1 / rms(x_t)²`` of the layer's input (what the next RMSNorm sees), so that
  layers with large residual norms are not taken as more fragile.
- ``refit="bias"``: after each layer, ``down_proj``'s bias is refitted in closed form (least squares) so that the
  mean calibration output of the pruned layer equals the dense model's at that depth:
  ``b += mean_t (y_dense,t − y_t)``. It corrects the drift accumulated by all earlier layers, not only this one.
  ``refit="down_proj"``: the kept ``down_proj`` weight and its bias are refitted jointly by damped least squares
  to the same target by least squares damped towards the OBS-compensated weight,
  ``[W b] += (y_dense − y) Z̃ᵀ (Z̃ Z̃ᵀ + λ·mean(diag)·I)⁻¹`` with ``Z̃ = [z; 1]`` its calibration inputs. The engine gives every
  ``o_proj``/``down_proj`` a zero bias first (``adds_bias``), as for FLAP.
"""

from dataclasses import dataclass

import torch

from ..budget import LayerCurve, allocate, cumulative, ffn_sample_steps, token_weights
from ..obs import obs_prune
from ..stats import InputStats
from ..structures import (
    attention_block,
    channel_params,
    count_params,
    head_params,
    layer_prunable_params,
    mlp_block,
    removed_heads_of,
)
from .base import register
from .slimgpt import SlimGPT

LAYER_RATIOS = ("schedule", "sensitivity")
REFITS = ("none", "bias", "down_proj")


@register
@dataclass
class SlimGPTPlus(SlimGPT):
    """SlimGPT with the exact head score, a per-layer joint heads/FFN split, sensitivity-driven layer ratios and
    a closed-form bias refit (each an option; all off = ``slimgpt``). The inherited options are SlimGPT's."""

    name = "slimgpt_plus"

    head_score: str = "exact"
    joint_split: bool = True
    layer_ratios: str = "sensitivity"
    refit: str = "none"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.joint_split, bool):
            raise ValueError(f"joint_split must be true or false, got {self.joint_split!r}")
        if self.layer_ratios not in LAYER_RATIOS:
            raise ValueError(f"layer_ratios must be one of {LAYER_RATIOS}, got {self.layer_ratios!r}")
        if self.refit not in REFITS:
            raise ValueError(f"refit must be one of {REFITS}, got {self.refit!r}")
        # state while pruning (not options): calibration, planned ratios, the dense model's hidden states
        self._calibration: torch.Tensor | None = None
        self._ratios: list[float] | None = None
        self._dense: torch.Tensor | None = None
        self._inputs: tuple[torch.Tensor, list] | None = None  # the current layer's inputs and batches (refit)

    @property
    def adds_bias(self) -> bool:
        return self.refit != "none"

    def prepare(self, model, calibration: torch.Tensor) -> None:
        self._calibration, self._ratios, self._dense = calibration, None, None

    def plan(self, model, params_after: float, granularity: str,
             layer_range: tuple[int, int] | None) -> None:
        """With ``layer_ratios="sensitivity"``: measures the dense layers' error curves and keeps the per-layer
        ratios (used by :meth:`layer_target`); the engine's unit counts stay its own (returns None)."""
        if self.layer_ratios == "sensitivity":
            if self._calibration is None:
                raise RuntimeError("slimgpt_plus: prepare(model, calibration) must run before plan (the engine does)")
            self._ratios = sensitivity_ratios(model, self._calibration, params_after, granularity, layer_range, self)
        return None

    def layer_target(self, layer, index: int, ratio: float, inps: torch.Tensor, batches: list,
                     engine) -> tuple[float, int | None]:
        from ..engine import forward_layer  # the engine imports the methods

        if self._ratios is not None:
            ratio = self._ratios[index]
        if self.refit != "none":
            if self._dense is None:
                self._dense = inps.clone()  # layer 0's inputs: the embeddings, the same for both models
            forward_layer(layer, self._dense, batches)  # the dense layer, before it is pruned
            self._inputs = (inps.clone(), batches) if self.refit == "down_proj" else None
        if not self.joint_split or ratio <= 0 or engine.head_granularity == "balanced_query_head":
            return ratio, None  # balanced layouts keep the engine's slot rule (the curve ignores the balance)
        curve = layer_curve(layer, index, inps, batches, engine.head_granularity, self, engine.width_multiple)
        units, error = curve.split(ratio * layer_prunable_params(layer))
        return ratio, (units if error != float("inf") else None)

    @torch.no_grad()
    def finish_layer(self, layer, index: int, inps: torch.Tensor) -> None:
        if self.refit == "bias":
            shift = (self._dense.float() - inps.float()).mean(dim=(0, 1))  # [hidden]
            down = layer.mlp.down_proj
            down.bias.add_(shift.to(down.bias.dtype))
            inps.add_(shift.to(inps.dtype))
        elif self.refit == "down_proj":
            x, batches = self._inputs
            refit_down_proj(layer, x, batches, inps, self._dense, self.damp)
            self._inputs = None


@torch.no_grad()
def refit_down_proj(layer, x: torch.Tensor, batches: list, y: torch.Tensor, y_dense: torch.Tensor,
                    damp: float) -> None:
    """Least-squares refit of ``down_proj`` (weight and bias) of the pruned ``layer`` so that its outputs on
    inputs ``x: [n, L, hidden]`` approach ``y_dense``; ``y: [n, L, hidden]`` (its outputs) is updated in place.

    With ``z`` the inputs of ``down_proj`` and ``Z̃ = [z; 1]`` over all calibration tokens:
    ``[W b] += (y_dense − y) Z̃ᵀ (Z̃ Z̃ᵀ + λ·mean(diag)·I)⁻¹`` (ridge regression of the output error on ``Z̃``, so
    the damping pulls towards the current weight, not towards zero; fp32)."""
    from ..engine import _input_of  # the engine imports the methods

    down = layer.mlp.down_proj
    zs = [_input_of(down, lambda: layer(x[rows], **kwargs)).float() for rows, kwargs in batches]
    z = torch.cat([t.reshape(-1, t.shape[-1]) for t in zs])  # [tokens, c]
    z1 = torch.cat([z, torch.ones(z.shape[0], 1, device=z.device)], dim=1)  # [tokens, c + 1]
    W_old = torch.cat([down.weight.float(), down.bias.float()[:, None]], dim=1)  # [hidden, c + 1]
    residual = (y_dense.float() - y.float()).reshape(-1, y.shape[-1])  # T − Z̃ᵀ[W b]_old: [tokens, hidden]
    gram = z1.T @ z1  # [c + 1, c + 1]
    gram.diagonal().add_(damp * gram.diagonal().mean())
    W_new = W_old + torch.linalg.solve(gram, z1.T @ residual).T  # [hidden, c + 1]; damped towards the old weight
    down.weight.copy_(W_new[:, :-1].to(down.weight.dtype))
    down.bias.copy_(W_new[:, -1].to(down.bias.dtype))
    y.add_((z1 @ (W_new - W_old).T).reshape(y.shape).to(y.dtype))


def units_freed(attn, granularity: str, removed_units: list[int]) -> int:
    """Parameters freed when ``removed_units`` (attention units of ``granularity``) go: their query heads, and
    every kv head none of whose query heads is left."""
    per_q, per_kv = head_params(attn)
    kv_map = list(attn.kv_map)
    heads = set(removed_heads_of(granularity, kv_map, removed_units))
    kv_freed = sum(1 for kv in set(kv_map) if all(h in heads for h, k in enumerate(kv_map) if k == kv))
    return len(heads) * per_q + kv_freed * per_kv


@torch.no_grad()
def layer_curve(layer, index: int, inps: torch.Tensor, batches: list, granularity: str, method: SlimGPT,
                width_multiple: int = 1) -> LayerCurve:
    """The OBS error curves of one dense layer on inputs ``inps: [n, L, hidden]`` (see
    :mod:`slimgpt.pruning.budget`): one forward of the layer accumulates token-weighted Hessians of ``o_proj``'s
    and ``down_proj``'s inputs; greedy OBS removes every attention unit but one (one per step) and every FFN
    channel but the last ``width_multiple`` (about 48 steps). Nothing of the layer changes."""
    attn, mlp = layer.self_attn, layer.mlp
    o_stats = InputStats(attn.o_proj.in_features, inps.device)
    d_stats = InputStats(mlp.down_proj.in_features, inps.device)
    scale = {}

    def recorder(stats: InputStats):
        return lambda module, args: stats.add_batch(args[0] * scale["w"])

    handles = [attn.o_proj.register_forward_pre_hook(recorder(o_stats)),
               mlp.down_proj.register_forward_pre_hook(recorder(d_stats))]
    try:
        for rows, kwargs in batches:
            scale["w"] = token_weights(inps[rows]).sqrt().to(inps.dtype)  # [b, L, 1]
            layer(inps[rows], **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    block = attention_block(attn, list(attn.kv_map), granularity, index)
    heads = obs_prune(attn.o_proj.weight, o_stats.hessian, block.units, [1] * (block.num_units - 1),
                      score=method.head_score, damp=method.damp, refresh_every=method.inverse_refresh)
    width = mlp.intermediate_size
    max_channels = width - (width_multiple if width > width_multiple else 1)
    steps = ffn_sample_steps(max_channels)
    ffn = obs_prune(mlp.down_proj.weight, d_stats.hessian, mlp_block(mlp, index).units, steps, score="cholesky",
                    damp=method.damp, refresh_every=0)  # an estimate: downdates only (no O(cols³) refresh)
    return LayerCurve(
        head_errors=cumulative(heads.step_errors),
        head_freed=[units_freed(attn, granularity, heads.removed[:h]) for h in range(block.num_units)],
        ffn_counts=[0] + [sum(steps[: k + 1]) for k in range(len(steps))], ffn_errors=cumulative(ffn.step_errors),
        channel_params=channel_params(mlp), max_channels=max_channels, params=layer_prunable_params(layer),
    )


@torch.no_grad()
def sensitivity_ratios(model, calibration: torch.Tensor, params_after: float, granularity: str,
                       layer_range: tuple[int, int] | None, method: SlimGPT) -> list[float]:
    """Per-layer ratios from the dense model's error curves: one pass over the layers (each curve measured on the
    dense model's inputs to that layer, :func:`layer_curve`), then :func:`slimgpt.pruning.budget.allocate` of
    ``count_params(model) - params_after`` parameters. Layers outside ``layer_range`` get 0."""
    from ..engine import capture_inputs, forward_layer  # the engine imports the methods

    layers = model.model.layers
    start, end = layer_range if layer_range is not None else (0, len(layers))
    device = next(model.parameters()).device
    inps, batches = capture_inputs(model, calibration, 8, device)
    curves = []
    for i, layer in enumerate(layers):
        unit = "query_head" if granularity == "balanced_query_head" else granularity  # the curve: an estimate
        curves.append(layer_curve(layer, i, inps, batches, unit, method) if start <= i < end else None)
        if i + 1 < end:
            forward_layer(layer, inps, batches)
    taken = allocate(curves, count_params(model) - params_after)
    return [t / layer_prunable_params(layer) for t, layer in zip(taken, layers)]
