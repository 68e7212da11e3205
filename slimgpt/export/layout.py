"""How each decoder layer of a (pruned) SlimGPT model is laid out in llama.cpp's ``deci`` architecture.

llama.cpp computes grouped-query attention by broadcasting: with ``n_head`` query heads and ``n_head_kv``
key-value heads in a layer, query head ``h`` reads kv head ``h // (n_head / n_head_kv)``, and ``n_head``
must be a multiple of ``n_head_kv``. A pruned layer whose query heads are grouped differently is rewritten
here into that form *exactly*, or refused:

* balanced groups in another order: the query heads are reordered (q rows and o_proj columns move
  together; free);
* uneven groups (``head_granularity=query_head``): refused unless ``regroup=True``, which gives every kv head
  as many copies as its largest group needs and fills the empty slots with dead query heads (zero q rows,
  zero o_proj columns: they attend, but their output is multiplied by zero);
* an FFN narrower than ``pad_ffn`` channels (or of zero channels, which llama.cpp would treat as "drop this
  layer's output") gets zero gate/up rows and down columns up to the next multiple (exact: silu(0)·0 = 0).

Nothing here touches tensors: a :class:`LayerLayout` says which source head fills each written slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

#: FFN width written for a layer with no FFN channels (one Q8_0 / Q4_0 block).
ZERO_FFN_WIDTH = 32


class UnsupportedLayoutError(ValueError):
    """A pruned layout that llama.cpp cannot run as is (the message names the layer and the fix)."""


@dataclass(frozen=True)
class LayerLayout:
    """One layer as written: slot ``i`` of each list holds a source head index or ``None`` (a zero head).

    ``q_heads[h]`` is the source query head written as query head ``h`` (None: a dead head); ``kv_heads[j]``
    the source kv head written as kv head ``j`` (a source head may appear more than once); ``ffn`` the
    written FFN width (source channels first, zero channels after). Query head ``h`` reads written kv head
    ``h // (len(q_heads) // len(kv_heads))``.
    """

    q_heads: tuple[int | None, ...]
    kv_heads: tuple[int, ...]
    ffn: int

    @property
    def group(self) -> int:
        """Query heads per written kv head (0 for an attention-free layer)."""
        return len(self.q_heads) // len(self.kv_heads) if self.kv_heads else 0


def plan_layer(
    index: int, kv_map: list[int], num_kv_heads: int, ffn: int, *, regroup: bool = False, pad_ffn: int = 1,
) -> LayerLayout:
    """The written layout of layer ``index``.

    Args:
        index: the layer index (for messages).
        kv_map: for each source query head, its source kv head (``config.layer_kv_map[index]``).
        num_kv_heads: source kv heads of the layer.
        ffn: source FFN channels (0 allowed).
        regroup: make uneven query groups expressible (kv head copies + dead query heads) instead of refusing.
        pad_ffn: the written FFN width is rounded up to a multiple of this (>= 1).
    Raises:
        UnsupportedLayoutError: uneven groups without ``regroup``, or no heads in layer 0.
    """
    if pad_ffn < 1:
        raise ValueError(f"pad_ffn must be >= 1, got {pad_ffn}")
    width = max(ceil(ffn / pad_ffn) * pad_ffn, ZERO_FFN_WIDTH if ffn == 0 else 0)
    if not kv_map:
        if index == 0:
            raise UnsupportedLayoutError(
                "layer 0 has no attention heads; llama.cpp derives the head size from layer 0 and cannot load "
                "it: prune with layer_range starting at 1 or keep at least one head group in layer 0")
        return LayerLayout((), (), width)
    members = [[h for h, kv in enumerate(kv_map) if kv == j] for j in range(num_kv_heads)]
    sizes = sorted({len(m) for m in members})
    if len(sizes) > 1 and not regroup:
        raise UnsupportedLayoutError(
            f"layer {index}: query heads per kv head are uneven ({[len(m) for m in members]}); llama.cpp needs "
            "every kv head of a layer to serve the same number of query heads. Prune with "
            "head_granularity=kv_group (or balanced_query_head), or export with regroup=True "
            "(--regroup: exact, adds kv-head copies and dead query heads; the KV-cache cost is printed)")
    group = _best_group([len(m) for m in members])
    q_heads: list[int | None] = []
    kv_heads: list[int] = []
    for j, heads in enumerate(members):
        for start in range(0, len(heads), group):
            chunk = heads[start:start + group]
            kv_heads.append(j)
            q_heads.extend(chunk + [None] * (group - len(chunk)))
    return LayerLayout(tuple(q_heads), tuple(kv_heads), width)


def _best_group(counts: list[int]) -> int:
    """The group size (query slots per written kv head) with the fewest written weights, then kv heads.

    A kv head serving ``c`` query heads needs ``ceil(c / g)`` copies of ``g`` slots: q/o weights grow with the
    slots, k/v weights and the KV cache with the copies. Balanced groups give ``g = c`` (nothing added).
    """
    def cost(group: int) -> tuple[int, int]:
        copies = sum(ceil(c / group) for c in counts)
        return copies * group + copies, copies

    return min(range(1, max(counts) + 1), key=cost)


def kv_cache_mib(kv_heads: list[int], head_dim: int, n_ctx: int = 4096, bytes_per_value: int = 2) -> float:
    """KV-cache size in MiB for ``kv_heads[i]`` kv heads in layer ``i`` (keys + values, F16 by default)."""
    return 2 * sum(kv_heads) * head_dim * n_ctx * bytes_per_value / 2**20
