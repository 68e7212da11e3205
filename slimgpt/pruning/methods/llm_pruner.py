"""LLM-Pruner (Ma, Fang, Wang, NeurIPS 2023), block-wise: Taylor importance of coupled groups from gradients.

Before the layer loop (:meth:`LLMPruner.prepare`) the *dense* model runs forward and backward on the
calibration samples (the paper's default: 10 samples × 64 tokens), loss = the language-modelling loss.
With ``g = ∂L/∂W`` (gradient of the mean loss over all samples) and the diagonal Fisher
``F = (1/N) Σ_n (∂L_n/∂W)²`` (per-sample gradients, the Hessian-diagonal approximation), each weight's
salience is

    element1:  s = W · g                        (first order)
    element2:  s = W · g − ½ · W² · F           (first + second order: ΔL ≈ gᵀδ + ½ δᵀHδ at δ = −W)
    vector:    s = W · g                        (first order, summed before the absolute value)

and, for each *structure vector* of a coupled module — an output row of q/k/v/gate/up, an input column of
o_proj/down_proj — ``element*`` takes ``Σ |s|`` over the vector and ``vector`` takes ``|Σ s|`` (as the
released code's ``param_*`` / ``vectorize`` modes; the paper's vector-wise importance is per structure, not
over the whole group). A unit's (head's, KV group's, channel's) importance is the **sum** over all its
structure vectors: its o_proj/down_proj columns and its coupled rows (LLM-Pruner's default aggregation).

GQA (``gqa_scores``). The released GQA path (``llama3.py``: torch-pruning groups rooted at ``k_proj`` with
``consecutive_groups = head_dim``) removes a key-value head with its own query heads ``j·g … j·g + g − 1``
(``g`` query heads per kv head), but scores it otherwise: its importance code folds every member vector
longer than the group's shortest one as ``v.view(-1, m).sum(0)`` (``m = kv_heads · head_dim``, the k/v
rows), so kv head ``j`` is scored with the q rows and o_proj columns of query heads
``j, j + kv_heads, j + 2·kv_heads, …`` (:func:`released_alignment`). ``gqa_scores="released"`` (default)
reproduces that; ``"aligned"`` scores a kv group with its own query heads (what this module did before; the
same where there is no GQA, for FFN channels and for ``query_head`` units). Checked against the released
code on SmolLM2-135M: identical kv-group and channel importances and the same units removed
(``benchmarks/results/llm_pruner_fidelity.md``).
Biases are not scored (the released code scores weights only). Importances are computed once, on the dense
model, and reduced to one number per row/column per module at once (``[out]`` or ``[in]`` per
``(layer index, module name)``), so the gradients are freed before the first layer is pruned.

Ratio semantics. LLM-Pruner's ``--pruning_ratio p`` removes the fraction ``p`` of the heads (KV heads under
GQA) and of the FFN channels *in every layer of its range* ``[block_*_layer_start, block_*_layer_end)``
(default: layers 4 .. n−3 dense-kept outside, e.g. 4..30 of LLaMA-7B's 32), i.e. it is a share of groups
inside the range. Our ``ratio`` is the share of the *total* parameters (embeddings included) removed. Run
LLM-Pruner here with ``schedule="uniform", layer_range=default_layer_range(n)``; then

    ratio ≈ p · Σ_{i ∈ range} P_i / P_total          (P_i: prunable parameters of layer i)

(:func:`ratio_from_pruning_ratio` converts). On SmolLM2-135M (30 layers, range 4..27) a total ratio of 20%
is ``p ≈ 0.32``, 50% is ``p ≈ 0.79``; the engine rounds heads to whole units and lets the FFN absorb the rest
of each layer's budget, LLM-Pruner rounds heads and channels separately.
"""

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..stats import InputStats
from ..structures import Block, layer_prunable_params
from .base import register
from .scoring import ScoredMethod, unit_sum

VARIANTS = ("element1", "element2", "vector")
GQA_SCORES = ("released", "aligned")
#: modules scored by output rows (pruned with a head / channel) and by input columns (the ``out_proj``s)
ROW_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
COLUMN_MODULES = ("self_attn.o_proj", "mlp.down_proj")


@register
@dataclass
class LLMPruner(ScoredMethod):
    """LLM-Pruner's block-wise Taylor importance.

    Options (the dataclass fields):
        variant: "element1" (default, the paper's main setting), "element2" or "vector" (see module doc).
        gqa_scores: how a key-value group's score takes its query heads under GQA (see module doc):
            "released" (default: as the released ``llama3.py`` computes it, query heads ``j, j + kv, …``) or
            "aligned" (the group's own query heads ``j·g … j·g + g − 1``).
    """

    name = "llm_pruner"
    needs_inputs = False

    variant: str = "element1"
    gqa_scores: str = "released"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown llm_pruner variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.gqa_scores not in GQA_SCORES:
            raise ValueError(f"unknown llm_pruner gqa_scores {self.gqa_scores!r}; choose one of {', '.join(GQA_SCORES)}")
        self._layers, self._importance = None, None  # set by prepare: not options, so not dataclass fields

    def prepare(self, model, calibration: torch.Tensor) -> None:
        layers = model.model.layers
        linears = {(i, name): layer.get_submodule(name) for i, layer in enumerate(layers)
                   for name in ROW_MODULES + COLUMN_MODULES}
        self._layers, self._importance = layers, taylor_importance(model, calibration, linears, self.variant)

    def scores(self, block: Block, stats: InputStats | None) -> torch.Tensor:
        if self._importance is None:
            raise RuntimeError("llm_pruner: prepare(model, calibration) must run before scoring (the engine does)")
        importance, layer = self._importance, self._layers[block.layer]
        names = {id(module): name for name, module in layer.named_modules()}
        members = [(importance[(block.layer, names[id(linear)])], index)
                   for linear, index in [(block.out_proj, block.units), *block.coupled]]
        if self.gqa_scores == "released":
            members = released_alignment(members)
        return sum(unit_sum(vector, index) for vector, index in members)


def released_alignment(members: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The released code's alignment of a group's importance vectors (torch-pruning's ``TaylorImportance``).

    ``members``: ``(vector [n_m], index [u, s_m])`` per member of a block: the importance of every row/column
    of the module and the unit's indices into it. The released code folds every vector longer than the
    shortest one (length ``m``) as ``vector.view(-1, m).sum(0)`` (a vector whose length is not a multiple of
    ``m`` is dropped) and indexes all by the shortest member's unit indices. Under GQA (kv_group units) the
    shortest members are k/v (``m = kv_heads · head_dim``), so kv group ``j`` is scored with k/v head ``j``
    plus the q rows / o columns of query heads ``j, j + kv_heads, j + 2·kv_heads, …`` — while the pruning
    removes query heads ``j·g … j·g + g − 1``. Where all members have one length (MLP, MHA, query_head
    units) the members are returned unchanged.
    """
    m = min(vector.numel() for vector, _ in members)
    base = next(index for vector, index in members if vector.numel() == m)  # [u, s]
    aligned = []
    for vector, index in members:
        if vector.numel() == m:
            aligned.append((vector, index))
        elif vector.numel() % m == 0:
            aligned.append((vector.view(-1, m).sum(0), base))
    return aligned


def taylor_importance(
    model: nn.Module, calibration: torch.Tensor, linears: dict[tuple[int, str], nn.Linear], variant: str
) -> dict[tuple[int, str], torch.Tensor]:
    """Importance of every structure vector of ``linears`` (keys ``(layer, module name)``).

    Args:
        calibration: ``LongTensor[N, L]``; one forward/backward per sample on ``model``'s device.
        linears: modules named in :data:`ROW_MODULES` (scored per output row) or :data:`COLUMN_MODULES`
            (per input column).
    Returns:
        ``[out]`` (row modules) or ``[in]`` (column modules) fp32 importances, same keys.
    """
    g, F = gradient_moments(model, calibration, {k: m.weight for k, m in linears.items()}, variant == "element2")
    importance = {}
    for key, linear in linears.items():
        dim = 1 if key[1] in ROW_MODULES else 0  # reduce over a row's inputs / a column's outputs
        importance[key] = reduce_salience(linear.weight.detach().float(), g.pop(key), F.pop(key, None), variant, dim)
    return importance


def reduce_salience(W: torch.Tensor, g: torch.Tensor, F: torch.Tensor | None, variant: str, dim: int) -> torch.Tensor:
    """Per-structure-vector importance of one weight matrix ``W, g, F: [out, in]`` reduced over ``dim``."""
    s = W * g
    if variant == "element2":
        s = s - 0.5 * W.pow(2) * F
    return s.sum(dim).abs() if variant == "vector" else s.abs().sum(dim)


def gradient_moments(
    model: nn.Module, calibration: torch.Tensor, weights: dict, fisher: bool
) -> tuple[dict, dict]:
    """Mean gradient ``g`` of the LM loss over the samples and (if ``fisher``) ``F = mean_n g_n²``.

    One sample per backward (``F`` needs per-sample gradients); all samples have the same length, so the
    mean of the per-sample mean losses is the mean loss of the whole batch. Only ``weights`` get gradients
    (``torch.autograd.grad``: no ``.grad`` is left behind); the model is in eval mode (no dropout).
    Returns dicts of fp32 tensors shaped like ``weights``.
    """
    keys, params = list(weights), [weights[k] for k in weights]
    flags = [p.requires_grad for p in params]
    g = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in zip(keys, params)}
    F = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in zip(keys, params)} if fisher else {}
    device, n = params[0].device, calibration.shape[0]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        for ids in tqdm(calibration, desc="llm_pruner gradients", leave=False, disable=n < 4):
            ids = ids[None].to(device)
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite LM loss {loss.item()} on a calibration sample")
                grads = torch.autograd.grad(loss, params)
            for k, grad in zip(keys, grads):
                grad = grad.float()
                g[k].add_(grad, alpha=1 / n)
                if fisher:
                    F[k].addcmul_(grad, grad, value=1 / n)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return g, F


def default_layer_range(num_layers: int) -> tuple[int, int]:
    """LLM-Pruner's default block-wise range: the first 4 and the last 2 layers stay dense (4..30 of 32)."""
    if num_layers < 7:
        raise ValueError(f"LLM-Pruner's default layer range needs at least 7 layers, got {num_layers}")
    return 4, num_layers - 2


def ratio_from_pruning_ratio(model, pruning_ratio: float, layer_range: tuple[int, int]) -> float:
    """Our total-parameter ``ratio`` for LLM-Pruner's ``--pruning_ratio`` (share of groups in ``layer_range``)."""
    if not 0 <= pruning_ratio < 1:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio!r}")
    start, end = layer_range
    inside = sum(layer_prunable_params(layer) for layer in model.model.layers[start:end])
    return pruning_ratio * inside / sum(p.numel() for p in model.parameters())
