"""Prunable structures of a decoder layer and the surgery that physically removes them.

A :class:`Block` names, for one layer, the matrix pruned by input columns (``o_proj`` / ``down_proj``, the one
OBS compensates), its *units* (groups of columns removed together) and the *coupled rows* that go with each
unit (q/k/v rows of a head, gate/up rows of a channel: they need no compensation, docs/method.md#what-is-pruned).
Surgery builds new, smaller ``nn.Linear`` modules; scoring never happens here.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..modeling.modeling_slimgpt import SlimGPTAttention, SlimGPTDecoderLayer, SlimGPTMLP
from .balanced import group_sizes, layouts_freeing

HEAD_GRANULARITIES = ("kv_group", "query_head", "balanced_query_head")
#: granularities whose units are single query heads
QUERY_HEAD_UNITS = ("query_head", "balanced_query_head")


@dataclass
class Block:
    """One prunable structure of a layer.

    kind: "attention" or "mlp".
    out_proj: the linear pruned by input columns, ``weight: [hidden, cols]``.
    units: ``[u, s]`` column indices of ``out_proj`` per unit (a head: ``head_dim`` columns; a KV group:
        ``group * head_dim``; a channel: 1).
    coupled: ``(linear, rows)`` pairs, ``rows: [u, s_r]`` output rows of ``linear`` deleted with each unit.
    layer: index of the decoder layer (methods with whole-model statistics look theirs up by it).
    groups: for ``head_granularity="balanced_query_head"`` only: the units (query heads) of each kv head. A
        selection from such a block must leave every kept kv head the same number of query heads, and its
        ``num_remove`` counts head *slots* (query heads + kv heads removed, :mod:`slimgpt.pruning.balanced`).
    """

    kind: str
    out_proj: nn.Linear
    units: torch.Tensor
    coupled: list[tuple[nn.Linear, torch.Tensor]]
    layer: int = -1
    groups: list[list[int]] | None = None

    @property
    def num_units(self) -> int:
        return self.units.shape[0]


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """``[len(heads), head_dim]`` row (or column) indices of the given heads."""
    return torch.tensor(heads, dtype=torch.long)[:, None] * head_dim + torch.arange(head_dim)


def kv_groups(kv_map: list[int]) -> list[list[int]]:
    """Query heads of each kv head: ``groups[k] = [h for h if kv_map[h] == k]``."""
    groups: list[list[int]] = [[] for _ in range(max(kv_map) + 1)]
    for head, kv in enumerate(kv_map):
        groups[kv].append(head)
    return groups


def attention_block(attn: SlimGPTAttention, kv_map: list[int], granularity: str, layer: int = -1) -> Block:
    """The attention heads of a layer as units.

    ``granularity="kv_group"``: a unit is one key-value head with all its query heads (needs equal group
    sizes); ``"query_head"``: a unit is one query head (its kv head goes when no query head reads it);
    ``"balanced_query_head"``: query heads as units, removed so that every kept kv head keeps the same number
    (``Block.groups``; docs/method.md#balanced-query-heads).
    """
    hd = attn.head_dim
    if granularity in QUERY_HEAD_UNITS:
        units = _head_rows(list(range(len(kv_map))), hd)  # [n_q, hd]
        groups = kv_groups(kv_map) if granularity == "balanced_query_head" else None
        return Block("attention", attn.o_proj, units, [(attn.q_proj, units)], layer, groups)
    if granularity != "kv_group":
        raise ValueError(f"unknown head granularity '{granularity}'; choose one of {', '.join(HEAD_GRANULARITIES)}")
    groups = kv_groups(kv_map)
    if len({len(g) for g in groups}) != 1:
        raise ValueError(f"kv_group pruning needs equal GQA groups, got sizes {[len(g) for g in groups]}")
    units = torch.stack([_head_rows(g, hd).flatten() for g in groups])  # [kv_heads, group * hd]
    kv_rows = _head_rows(list(range(len(groups))), hd)
    coupled = [(attn.q_proj, units), (attn.k_proj, kv_rows), (attn.v_proj, kv_rows)]
    return Block("attention", attn.o_proj, units, coupled, layer)


def mlp_block(mlp: SlimGPTMLP, layer: int = -1) -> Block:
    """The FFN channels of a layer as units (one ``down_proj`` column + one gate row + one up row each)."""
    units = torch.arange(mlp.down_proj.in_features)[:, None]
    return Block("mlp", mlp.down_proj, units, [(mlp.gate_proj, units), (mlp.up_proj, units)], layer)


def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` keeping output ``rows`` and input ``cols`` of ``linear`` (same dtype/device)."""
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        rows = rows.to(weight.device)
        weight = weight.index_select(0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.clone(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return new


def _kept(total: int, removed: list[int]) -> torch.Tensor:
    drop = set(removed)
    return torch.tensor([i for i in range(total) if i not in drop], dtype=torch.long)


def remove_heads(attn: SlimGPTAttention, kv_map: list[int], removed_heads: list[int]) -> list[int]:
    """Deletes query heads (q rows, o_proj columns) and every kv head no kept query head reads.

    Returns the new kv map (kept query head -> index of its kept kv head).
    """
    hd = attn.head_dim
    kept = _kept(len(kv_map), removed_heads).tolist()
    if not kept:
        raise ValueError("refusing to remove every attention head of a layer")
    kept_kv = sorted({kv_map[h] for h in kept})
    new_map = [kept_kv.index(kv_map[h]) for h in kept]
    q_idx, kv_idx = _head_rows(kept, hd).flatten(), _head_rows(kept_kv, hd).flatten()
    attn.q_proj = slice_linear(attn.q_proj, rows=q_idx)
    attn.k_proj = slice_linear(attn.k_proj, rows=kv_idx)
    attn.v_proj = slice_linear(attn.v_proj, rows=kv_idx)
    attn.o_proj = slice_linear(attn.o_proj, cols=q_idx)
    attn.set_heads(new_map, len(kept_kv))
    return new_map


def remove_channels(mlp: SlimGPTMLP, removed: list[int]) -> None:
    """Deletes FFN channels (gate/up rows, down_proj columns)."""
    kept = _kept(mlp.intermediate_size, removed)
    if kept.numel() == 0:
        raise ValueError("refusing to remove every FFN channel of a layer")
    mlp.gate_proj = slice_linear(mlp.gate_proj, rows=kept)
    mlp.up_proj = slice_linear(mlp.up_proj, rows=kept)
    mlp.down_proj = slice_linear(mlp.down_proj, cols=kept)
    mlp.intermediate_size = kept.numel()


def removed_heads_of(block_units: str, kv_map: list[int], removed_units: list[int]) -> list[int]:
    """Query heads deleted when ``removed_units`` of an attention block of the given granularity go."""
    if block_units in QUERY_HEAD_UNITS:
        return sorted(removed_units)
    drop = set(removed_units)
    return [h for h, kv in enumerate(kv_map) if kv in drop]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_prunable_params(layer: SlimGPTDecoderLayer) -> int:
    """Parameters that structured pruning can remove in a layer (attention + MLP, not the norms)."""
    return count_params(layer.self_attn) + count_params(layer.mlp)


def channel_params(mlp: SlimGPTMLP) -> int:
    """Parameters removed with one FFN channel (gate row, up row, down column, their biases)."""
    hidden = mlp.hidden_size
    bias = sum(1 for p in (mlp.gate_proj.bias, mlp.up_proj.bias) if p is not None)
    return 3 * hidden + bias


def head_params(attn: SlimGPTAttention) -> tuple[int, int]:
    """Parameters removed with one query head (its q rows and bias, its o_proj columns) and with one kv head
    (its k and v rows and biases)."""
    hd = attn.head_dim

    def rows(linear: nn.Linear) -> int:
        return hd * linear.in_features + (hd if linear.bias is not None else 0)

    return rows(attn.q_proj) + attn.o_proj.out_features * hd, rows(attn.k_proj) + rows(attn.v_proj)


def guaranteed_head_params(attn: SlimGPTAttention, granularity: str, num_units: int) -> int:
    """Parameters certainly freed when ``num_units`` attention units of ``granularity`` go.

    A kv group frees its query heads and its kv head. Single query heads free a kv head only when none of its
    query heads is left, which depends on *which* heads go: at least ``num_kv - (num_heads - num_units)`` do.
    Balanced query heads: ``num_units`` counts head slots; every layout freeing that many
    (``balanced.layouts_freeing``) removes known heads, and the least of their parameters is returned.
    """
    per_q, per_kv = head_params(attn)
    heads, kv_heads = attn.num_heads, attn.num_kv_heads
    if granularity == "kv_group":
        return num_units * (heads // kv_heads * per_q + per_kv)
    if granularity == "balanced_query_head":
        if num_units == 0:
            return 0
        sizes = group_sizes(kv_groups(list(attn.kv_map)))
        return min((heads - g.groups * g.heads) * per_q + (kv_heads - g.groups) * per_kv
                   for g in layouts_freeing(sizes, num_units))
    return num_units * per_q + max(0, kv_heads - (heads - num_units)) * per_kv


def add_output_biases(model) -> None:
    """Gives every ``o_proj`` and ``down_proj`` a (zero) bias and records it in the config, for methods that
    compensate removed units through a bias (FLAP). A no-op where the biases exist."""
    for layer in model.model.layers:
        for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
            if linear.bias is None:
                w = linear.weight
                linear.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    model.config.o_proj_bias = model.config.down_proj_bias = True
