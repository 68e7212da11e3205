"""Balanced query-head pruning: single query heads go, but every kept kv head of a layer keeps the same number.

llama.cpp (and most attention kernels) compute grouped-query attention by broadcasting: with ``n_q`` query and
``n_kv`` key-value heads, query head ``h`` reads kv head ``h // (n_q / n_kv)``, so ``n_q`` must be a multiple of
``n_kv``. ``head_granularity="balanced_query_head"`` removes query heads one by one under that constraint
(docs/method.md#balanced-query-heads).

A **layout** ``(g, k)`` keeps ``g`` kv heads with ``k`` query heads each (a kv head goes when it keeps none).
A query head (q rows + o_proj columns) and a kv head (k rows + v rows) each hold ``2 · head_dim · hidden``
weights, so a layer's attention is ``n_q + n_kv`` equal **slots** (up to their biases) and layout ``(g, k)``
frees ``n_q + n_kv − g(k + 1)`` of them. The budget is met in slots: the achievable slot count nearest to
``ratio · (n_q + n_kv)``; every layout freeing exactly that many is a candidate, and the method picks the one
whose removal costs least (for SlimGPT: the OBS error, :func:`obs_prune_balanced`).

Everything here is a pure function of group sizes, scores or tensors.
"""

from dataclasses import dataclass

import torch

from .obs import ObsResult, inverse_of_alive, prepare_hessian, remove_columns, unit_scores, with_damping_retry


@dataclass(frozen=True)
class Layout:
    """``groups`` kv heads kept, each with ``heads`` query heads."""

    groups: int
    heads: int

    def slots_freed(self, sizes: list[int]) -> int:
        """Query heads plus kv heads removed from groups of ``sizes`` (query heads per kv head)."""
        return sum(sizes) + len(sizes) - self.groups * (self.heads + 1)

    def __str__(self) -> str:
        return f"{self.groups}x{self.heads}"


def all_layouts(sizes: list[int]) -> list[Layout]:
    """Every balanced layout reachable by removing query heads from groups of ``sizes`` (at least one head
    kept), ordered by ``(heads, groups)``."""
    return [Layout(g, k) for k in range(1, max(sizes, default=0) + 1)
            for g in range(1, sum(s >= k for s in sizes) + 1)]


def slots_to_free(ratio: float, sizes: list[int]) -> int:
    """The achievable slot count (0 or a layout's :meth:`Layout.slots_freed`) nearest to ``ratio · (n_q + n_kv)``;
    of two equally near, the smaller (the FFN takes the rest of the layer's budget)."""
    target = ratio * (sum(sizes) + len(sizes))
    achievable = {0} | {layout.slots_freed(sizes) for layout in all_layouts(sizes)}
    return min(achievable, key=lambda slots: (abs(slots - target), slots))


def layouts_freeing(sizes: list[int], slots: int) -> list[Layout]:
    """The layouts that free exactly ``slots`` slots from groups of ``sizes`` (one clear error if none does)."""
    found = [layout for layout in all_layouts(sizes) if layout.slots_freed(sizes) == slots]
    if not found:
        possible = sorted({layout.slots_freed(sizes) for layout in all_layouts(sizes)})
        raise ValueError(f"no balanced layout of query-head groups {sizes} frees {slots} head slots; "
                         f"possible: {possible}")
    return found


def group_sizes(groups: list[list[int]]) -> list[int]:
    return [len(group) for group in groups]


def check_balanced(groups: list[list[int]], removed: list[int], slots: int) -> None:
    """Raises ``ValueError`` unless removing query heads ``removed`` leaves every non-empty group of ``groups``
    (query-head indices per kv head) with the same number of heads and frees exactly ``slots`` slots."""
    gone = set(removed)
    kept = [sum(h not in gone for h in group) for group in groups]
    counts = {n for n in kept if n}
    freed = sum(group_sizes(groups)) + len(groups) - sum(kept) - sum(1 for n in kept if n)
    if len(counts) != 1 or freed != slots:
        raise ValueError(f"the selection keeps query heads {kept} per kv head and frees {freed} slots; a balanced "
                         f"selection keeps equal non-zero counts and frees {slots}")


def lowest_balanced(scores: torch.Tensor, groups: list[list[int]], layouts: list[Layout]) -> tuple[list[int], Layout]:
    """The query heads to remove when each head has an additive importance (higher = keep): for each layout
    ``(g, k)`` keep the ``g`` groups whose ``k`` best heads score highest; the layout keeping the most score wins
    (the first on ties). Exact for additive scores.

    Args:
        scores: ``[n_q]`` importance of each query head; groups: query-head indices per kv head.
    Returns:
        (removed heads ascending, the chosen layout).
    """
    best = None
    for layout in layouts:
        tops = []
        for group in groups:
            if len(group) >= layout.heads:
                order = torch.argsort(-scores[group], stable=True)[:layout.heads]  # ties: lower index kept
                tops.append((float(scores[group][order].sum()), [group[i] for i in order.tolist()]))
        tops.sort(key=lambda top: -top[0])
        kept = [h for _, heads in tops[:layout.groups] for h in heads]
        value = sum(value for value, _ in tops[:layout.groups])
        if best is None or value > best[0]:
            best = (value, kept, layout)
    _, kept, layout = best
    return sorted(set(range(scores.numel())) - set(kept)), layout


def obs_prune_balanced(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    units: torch.Tensor,
    groups: list[list[int]],
    layouts: list[Layout],
    *,
    score: str = "cholesky",
    damp: float = 0.01,
    refresh_every: int = 8,
    head_step: int = 1,
) -> tuple[ObsResult, Layout]:
    """OBS removal of query heads down to one of ``layouts``: each layout by :func:`balanced_greedy`, the one
    with the least total OBS error wins (the error of a final set does not depend on the removal order, so
    the layouts compare exactly).

    Args:
        weight: ``[rows, cols]`` o_proj weight; hessian: ``[cols, cols]``; units: ``[n_q, head_dim]`` columns of
        each query head; groups: query-head indices per kv head; score: the head score (``unit_scores``).
    Returns:
        (the winning layout's :class:`~slimgpt.pruning.obs.ObsResult`, that layout).
    """
    results = [(with_damping_retry(lambda d, layout=layout: balanced_greedy(
        weight, hessian, units, groups, layout, score, d, refresh_every, head_step), damp), layout)
        for layout in layouts]
    return min(results, key=lambda pair: pair[0].error)


def balanced_greedy(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    units: torch.Tensor,
    groups: list[list[int]],
    layout: Layout,
    score: str,
    damp: float,
    refresh_every: int,
    head_step: int,
) -> ObsResult:
    """Greedy OBS removal down to ``layout``, every step an exact joint OBS update (``remove_columns``, which
    also downdates ``Hinv``; recomputed from ``H`` every ``refresh_every`` steps as in ``obs_prune``); the
    steps are chosen by :func:`next_heads`. Returns an ``ObsResult`` whose ``removed`` are query-head indices
    in removal order."""
    W, H = prepare_hessian(weight, hessian, damp)
    units = units.to(W.device)
    alive = torch.ones(W.shape[1], dtype=torch.bool, device=W.device)
    members = [list(group) for group in groups]
    removed: list[int] = []
    step_errors: list[float] = []
    Hinv = inverse_of_alive(H, alive)
    while True:
        if refresh_every and step_errors and len(step_errors) % refresh_every == 0:  # bound the round-off
            Hinv = inverse_of_alive(H, alive)
        heads = next_heads(W, Hinv, units, members, layout, score, head_step)
        if not heads:
            break
        cols = units[heads].flatten()
        W, Hinv, err = remove_columns(W, Hinv, cols)
        alive[cols] = False
        members = [[h for h in group if h not in heads] for group in members]
        removed.extend(heads)
        step_errors.append(err)
    return ObsResult(W, removed, float(sum(step_errors)), damp, len(step_errors), step_errors)


def next_heads(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    units: torch.Tensor,
    members: list[list[int]],
    layout: Layout,
    score: str,
    head_step: int,
) -> list[int]:
    """The query heads the next greedy step removes on the way to ``layout`` ``(g, k)`` (empty: done).

    1. While more than ``g`` groups have heads: a whole group — one smaller than ``k`` first (it cannot be
       kept), else the group whose columns score lowest as one unit (``unit_scores`` of ``[1, |group|·hd]``).
    2. Then single heads: the ``head_step`` lowest-scoring heads of groups still above ``k``, each group giving
       up at most its excess.

    Groups go first so that a group's fate is decided on all of its heads at once (scoring single heads first
    strips heads from groups that are then dropped anyway, or kept).

    Args:
        W: ``[rows, cols]`` current weight; Hinv: ``[cols, cols]`` inverse Hessian of the alive columns;
        units: ``[n_q, head_dim]`` columns per query head; members: alive query heads per kv head.
    """
    live = [group for group in members if group]
    if len(live) > layout.groups:
        small = [group for group in live if len(group) < layout.heads]
        if small:
            return list(small[0])
        scores = [float(unit_scores(W, Hinv, units[group].reshape(1, -1), score)[0]) for group in live]
        return list(live[min(range(len(live)), key=scores.__getitem__)])
    excess = {h: len(group) - layout.heads for group in members for h in group}
    candidates = [h for h, extra in excess.items() if extra > 0]
    if not candidates:
        return []
    owner = {h: i for i, group in enumerate(members) for h in group}
    left = {owner[h]: excess[h] for h in candidates}
    chosen = []
    for index in torch.argsort(unit_scores(W, Hinv, units[candidates], score), stable=True).tolist():
        head = candidates[index]
        if left[owner[head]] > 0 and len(chosen) < head_step:
            chosen.append(head)
            left[owner[head]] -= 1
    return sorted(chosen)
