"""FLAP as released (An et al., AAAI 2024; the released ``prune_flap`` with its defaults: WIFV metric, "AL-AM"
adaptive structure, bias compensation): ``flap``.

1. **Dense statistics.** Before the layer loop (:meth:`FLAP.prepare`) the *dense* model runs once over the
   calibration set; hooks on every ``o_proj`` and ``down_proj`` record their inputs' per-column mean and
   variance. No layer's statistics see any pruning (the released code also computes every layer's masks on
   dense activations and applies them only after its loop).
2. **Scores** (WIFV of an ``out_proj`` input column ``j``: ``s_j = Var(x_j) · ‖W_out[:, j]‖²``):

       attention:  z = standardise_layer(s²)   (squared, per column),  score(unit) = mean_{j ∈ unit} z_j
       FFN:        score(channel j) = standardise_layer(s)_j           (not squared)

   ``standardise_layer`` subtracts the mean and divides by the (Bessel-corrected) standard deviation over the
   columns of that layer's ``out_proj``, so scores of all layers and of heads and channels are comparable.
3. **Global structure search (AL-AM).** Every unit of every pruned layer weighs the parameters it frees (a
   KV group: its q/k/v rows and o_proj columns; a channel: its gate/up rows and down_proj column — for
   LLaMA-7B the released code's weights ``512/3`` and ``1``). Sorted by score, the units with the highest
   scores are kept until what is left to remove is closest to the parameter budget; all others go, wherever
   they are. The per-layer widths come out of this search, so the engine's schedule is not used
   (:meth:`FLAP.plan`; the report's per-layer targets are the planned widths).
4. **Bias compensation** with the dense calibration mean: ``b_out ← b_out + W_out[:, R] · mean(x_R)``.

Where this differs from the released code (each recorded here, none changes the algorithm):

- Every layer keeps its highest-scoring KV group and FFN channel (our modules cannot hold zero heads); the
  search runs over the other units. The released code masks and may empty a layer.
- The released code picks the closest cumulative sum and then removes the unit at that point too (``>``
  against a threshold equal to its score): one unit beyond the closest point. We stop at the closest point.
- Variance: the population variance over all calibration tokens. The released ``BiasGPT`` runs a per-sequence
  running update that leaves out the first sequence's deviations; its scale is a per-layer constant, which
  the standardisation removes. The released mean for the bias is stored in fp16; ours stays fp32.
- Units are KV groups (``head_granularity="kv_group"``): the released code is for multi-head attention, where
  a KV group is one head. ``query_head`` and ``balanced_query_head`` are refused before any statistics (a
  query head frees its KV head only with its whole group, so its parameter weight is not fixed).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..stats import InputStats
from ..structures import (
    Block,
    attention_block,
    channel_params,
    count_params,
    guaranteed_head_params,
    mlp_block,
)
from .base import Method, Selection, register
from .flap_sequential import check_bias_compensation, compensated_bias, fluctuation

#: calibration sequences per dense forward in :meth:`FLAP.prepare`
PREPARE_BATCH = 8


@register
@dataclass
class FLAP(Method):
    """FLAP as released: dense WIFV statistics, squared head scores, one global threshold (AL-AM) over
    standardised head and channel scores of all pruned layers, mean-input bias compensation.

    Args:
        bias_compensation: fold the removed columns' mean contribution into the ``out_proj`` bias.
    """

    name = "flap"
    plans_widths = True
    needs_inputs = False

    bias_compensation: bool = True

    def __post_init__(self):
        check_bias_compensation(self.bias_compensation)
        # set by prepare / plan: not options, so not dataclass fields
        self._stats: dict[tuple[int, str], InputStats] | None = None
        self._plan: dict[tuple[int, str], list[int]] | None = None

    @property
    def adds_bias(self) -> bool:
        return self.bias_compensation

    def check_granularity(self, granularity: str) -> None:
        """Only whole KV groups: the global search needs a fixed parameter weight per unit."""
        if granularity != "kv_group":
            raise ValueError(f"flap's global structure search prunes whole KV groups; head_granularity "
                             f"{granularity!r} is not supported (use kv_group, or flap_sequential)")

    def prepare(self, model, calibration: torch.Tensor) -> None:
        self._stats, self._plan = dense_statistics(model, calibration), None

    def plan(self, model, params_after: float, granularity: str,
             layer_range: tuple[int, int] | None) -> list[tuple[int, int]]:
        """AL-AM: per layer, ``(KV groups, FFN channels)`` to remove so that ``model`` keeps ``params_after``
        parameters (as close as whole units allow); layers outside ``layer_range`` keep every unit."""
        if self._stats is None:
            raise RuntimeError("flap: prepare(model, calibration) must run before plan (the engine does)")
        self.check_granularity(granularity)
        layers = model.model.layers
        start, end = layer_range if layer_range is not None else (0, len(layers))
        blocks, weights = [], []
        for i in range(start, end):
            attn, mlp = layers[i].self_attn, layers[i].mlp
            blocks += [attention_block(attn, attn.kv_map, "kv_group", i), mlp_block(mlp, i)]
            weights += [guaranteed_head_params(attn, "kv_group", 1), channel_params(mlp)]
        scores = [self.scores(block) for block in blocks]
        removed = global_removal(scores, weights, count_params(model) - params_after)
        self._plan = {(b.layer, b.kind): r for b, r in zip(blocks, removed)}
        return [(len(self._plan.get((i, "attention"), [])), len(self._plan.get((i, "mlp"), [])))
                for i in range(len(layers))]

    def scores(self, block: Block) -> torch.Tensor:
        """``[u]`` standardised score of each unit of ``block`` from the dense statistics (higher = keep)."""
        column = fluctuation(block, self._stats[(block.layer, block.kind)])  # [cols]
        if block.kind == "attention":
            return standardise(column.pow(2))[block.units.to(column.device)].mean(-1)
        return standardise(column)[block.units[:, 0].to(column.device)]

    def select(self, block: Block, stats: InputStats | None, num_remove: int) -> Selection:
        if self._plan is None:
            raise RuntimeError("flap: the engine must call plan(...) before the layer loop")
        removed = self._plan.get((block.layer, block.kind), [])
        if len(removed) != num_remove:
            raise RuntimeError(f"flap planned {len(removed)} {block.kind} units for layer {block.layer}, "
                               f"the engine asks for {num_remove}")
        selection = Selection(list(removed))
        if self.bias_compensation and removed:
            mean = self._stats[(block.layer, block.kind)].mean
            selection.bias = compensated_bias(block, mean, removed)
        return selection


def standardise(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean(x)) / std(x)`` over all of ``x: [n]`` (Bessel-corrected std, as ``torch.std``)."""
    return (x - x.mean()) / x.std()


def global_removal(scores: list[torch.Tensor], weights: list[int], to_remove: float) -> list[list[int]]:
    """The AL-AM search: which units of each block to remove.

    Args:
        scores: per block, ``[u]`` unit scores, comparable across blocks (higher = keep).
        weights: per block, the parameters one of its units frees.
        to_remove: parameters to remove in all.
    Returns:
        per block, the removed unit indices (ascending). Each block keeps its best unit; of the other units,
        the highest-scoring are kept (ties: lower block, then lower unit first) until the weight of the rest
        is closest to ``to_remove``.
    """
    flat = torch.cat([s.detach().float().cpu() for s in scores])  # [U] every unit of every block
    block_of = torch.cat([torch.full((s.numel(),), b) for b, s in enumerate(scores)])
    unit_of = torch.cat([torch.arange(s.numel()) for s in scores])
    weight = torch.cat([torch.full((s.numel(),), float(w), dtype=torch.float64) for s, w in zip(scores, weights)])
    offsets = [0] + torch.cumsum(torch.tensor([s.numel() for s in scores]), 0).tolist()[:-1]
    free = torch.ones(flat.numel(), dtype=torch.bool)
    free[[offset + int(torch.argmax(s)) for offset, s in zip(offsets, scores)]] = False  # each block's best stays
    candidates = free.nonzero().squeeze(1)
    removable = float(weight[candidates].sum())
    if not 0 <= to_remove <= removable:
        raise ValueError(f"cannot remove {to_remove:,.0f} parameters: the global search can remove between 0 "
                         f"and {removable:,.0f} (every layer keeps one KV group and one FFN channel)")
    order = candidates[torch.argsort(flat[candidates], descending=True, stable=True)]
    kept = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(weight[order], 0)])  # [M + 1]
    num_kept = int(torch.argmin((removable - kept - to_remove).abs()))
    removed: list[list[int]] = [[] for _ in scores]
    for i in order[num_kept:].tolist():
        removed[int(block_of[i])].append(int(unit_of[i]))
    return [sorted(r) for r in removed]


@torch.no_grad()
def dense_statistics(model, calibration: torch.Tensor) -> dict[tuple[int, str], InputStats]:
    """Mean and variance of the inputs of every layer's ``o_proj`` and ``down_proj`` on the dense model.

    Args:
        calibration: ``LongTensor[N, L]``, run in batches of :data:`PREPARE_BATCH` on the model's device.
    Returns:
        ``{(layer, "attention" | "mlp"): InputStats}`` (no Hessians).
    """
    device = next(model.parameters()).device
    stats, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for kind, linear in (("attention", layer.self_attn.o_proj), ("mlp", layer.mlp.down_proj)):
            stats[(i, kind)] = InputStats(linear.in_features, device, hessian=False)
            handles.append(linear.register_forward_pre_hook(_recorder(stats[(i, kind)])))
    try:
        for batch in calibration.split(PREPARE_BATCH):
            model(batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _recorder(stats: InputStats):
    def hook(module: nn.Module, args: tuple) -> None:
        stats.add_batch(args[0])

    return hook
