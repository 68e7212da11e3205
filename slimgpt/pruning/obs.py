"""Optimal Brain Surgeon kernels for structured (column-group) pruning: pure fp32 tensor functions.

Notation follows SlimGPT (Ling et al. 2024) and SparseGPT/GPTQ. A linear layer ``y = W x`` with
``W: [rows, cols]`` is pruned by removing *input columns*; a *unit* is a group of columns removed together
(an attention head = ``head_dim`` columns of ``o_proj``; a GQA key-value group = ``group * head_dim``
columns; an FFN channel = one column of ``down_proj``). ``H = (2/N) Σ X Xᵀ: [cols, cols]`` is the layer-input
Hessian of the reconstruction loss ``‖W X - Ŵ X‖²``.

Removing a column set ``S`` with the OBS update (eq. 3 of the paper, the group form of OBS):
    ΔW = -W[:, S] (Hinv_SS)⁻¹ Hinv[S, :]          error  ΔE = tr(W_S (Hinv_SS)⁻¹ W_Sᵀ)
where ``Hinv`` is the inverse Hessian of the columns still alive. Batched Greedy Pruning (§3.1) scores every
unit through one batched Cholesky factorisation of its diagonal ``Hinv`` block ``Hinv_SS = Uᵀ U`` (upper, the
GPTQ convention): the paper's score keeps the diagonal terms ``Σ_i ‖W[:, i]‖² / U_ii²``; the exact group
error is ``‖W_S U⁻¹‖²_F`` (an option here, not in the paper). The plain diagonal score
``Σ_i ‖W[:, i]‖² / Hinv_ii`` (each column's single-column OBS error, summed: no grouped Cholesky) is the paper's
Table 5 ablation.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

HEAD_SCORES = ("cholesky", "exact", "diagonal")


class CholeskyError(RuntimeError):
    """A Hessian stayed indefinite after every damping retry."""


@dataclass
class ObsResult:
    """Outcome of :func:`obs_prune`.

    weight: ``[rows, cols]`` compensated weight; removed columns are exactly zero.
    removed: unit indices in removal order.
    error: sum of the OBS error estimates ``ΔE`` of the removal steps (``tr(W_S (Hinv_SS)⁻¹ W_Sᵀ)``).
    damp: relative damping finally used (larger than asked if a Cholesky failed and was retried).
    steps: number of greedy steps (Hessian inversions).
    """

    weight: torch.Tensor
    removed: list[int]
    error: float
    damp: float
    steps: int
    step_errors: list[float] = field(default_factory=list)


def prepare_hessian(weight: torch.Tensor, hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead columns and damping, as SparseGPT.

    Args:
        weight: ``[rows, cols]``; hessian: ``[cols, cols]``. Both are copied to fp32.
        damp: λ, relative to the mean diagonal: ``H += λ · mean(diag H) · I``.
    Returns:
        ``(W, H)`` in fp32 where dead columns (``H_jj == 0``: the input is always zero) have ``H_jj = 1`` and
        ``W[:, j] = 0`` (their weight never affects the output).
    """
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    return W, H


def inverse_of_alive(H: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """``(H_RR)⁻¹`` of the alive columns R, embedded in a ``[cols, cols]`` matrix.

    Pruned rows/columns are replaced by identity ones before inverting, so the result has identity rows and
    columns there and exactly ``(H_RR)⁻¹`` elsewhere: no drift from repeated downdates.
    Raises ``torch.linalg.LinAlgError`` if ``H_RR`` is not positive definite.
    """
    Hp = H.clone()
    dead = ~alive
    Hp[dead, :] = 0.0
    Hp[:, dead] = 0.0
    Hp[dead, dead] = 1.0
    L = torch.linalg.cholesky(Hp)
    return torch.cholesky_inverse(L)


def unit_scores(W: torch.Tensor, Hinv: torch.Tensor, units: torch.Tensor, score: str = "cholesky") -> torch.Tensor:
    """OBS error estimate of removing each unit alone (Batched Greedy Pruning, grouped Cholesky).

    Args:
        W: ``[rows, cols]``; Hinv: ``[cols, cols]`` inverse Hessian of the alive columns.
        units: ``[u, s]`` column indices of each candidate unit.
        score: ``"cholesky"``, the paper's ``Σ_i ‖W_i‖² / U_ii²`` with ``Hinv_SS = Uᵀ U`` (one batched Cholesky
            of every unit's diagonal block); ``"exact"``, the exact group error ``‖W_S U⁻¹‖²_F`` (ours);
            ``"diagonal"``, ``Σ_i ‖W_i‖² / Hinv_ii``, the per-column OBS errors summed (the paper's ablation
            without grouped Cholesky: it ignores the correlation of the columns inside a unit).
    Returns:
        ``[u]`` scores (lower = cheaper to remove). For single-column units the three scores are equal.
    """
    if score not in HEAD_SCORES:
        raise ValueError(f"score must be one of {HEAD_SCORES}, got {score!r}")
    W_units = W[:, units].permute(1, 0, 2)  # [u, rows, s]
    if score == "diagonal":
        return (W_units.pow(2).sum(dim=1) / torch.diagonal(Hinv)[units]).sum(dim=1)
    blocks = Hinv[units[:, :, None], units[:, None, :]]  # [u, s, s] diagonal blocks Hinv_SS
    U = torch.linalg.cholesky(blocks, upper=True)  # one batched call: Hinv_SS = Uᵀ U
    if score == "exact":
        scaled = torch.linalg.solve_triangular(U, W_units, upper=True, left=False)  # W_S U⁻¹
        return scaled.pow(2).sum(dim=(1, 2))
    diag = torch.diagonal(U, dim1=-2, dim2=-1)  # [u, s]
    return (W_units.pow(2).sum(dim=1) / diag.pow(2)).sum(dim=1)


def remove_columns(
    W: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Removes columns ``S = cols`` jointly with the OBS compensation of all other alive columns.

    ``W ← W - W[:, S] (Hinv_SS)⁻¹ Hinv[S, :]`` and the inverse-Hessian downdate (Schur complement)
    ``Hinv ← Hinv - Hinv[:, S] (Hinv_SS)⁻¹ Hinv[S, :]``, which is exactly ``(H_RR)⁻¹`` of the remaining alive
    columns R (rows/columns of removed columns become zero). Returns ``(W, Hinv, ΔE)`` with ``W[:, S] = 0``
    and ``ΔE = tr(W_S (Hinv_SS)⁻¹ W_Sᵀ)``. Columns removed earlier are untouched (their ``Hinv`` rows are 0).
    Cost ``O(cols² · |S|)`` instead of a fresh ``O(cols³)`` inversion.
    """
    L = torch.linalg.cholesky(Hinv[cols][:, cols])  # Hinv_SS = L Lᵀ
    Hinv_S = Hinv[cols, :]  # [s, cols]
    solved = torch.cholesky_solve(Hinv_S, L)  # (Hinv_SS)⁻¹ Hinv[S, :]: [s, cols]
    W_S = W[:, cols]  # [rows, s]
    coef = torch.cholesky_solve(W_S.T, L).T  # W_S (Hinv_SS)⁻¹: [rows, s]
    W = W - W_S @ solved
    W[:, cols] = 0.0
    Hinv = Hinv - Hinv_S.T @ solved
    Hinv[cols, :] = 0.0
    Hinv[:, cols] = 0.0
    return W, Hinv, float((coef * W_S).sum())


def obs_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    units: torch.Tensor,
    step_sizes: list[int],
    *,
    score: str = "cholesky",
    damp: float = 0.01,
    max_retries: int = 4,
    refresh_every: int = 8,
) -> ObsResult:
    """Greedy OBS removal of ``sum(step_sizes)`` units, ``step_sizes[t]`` units at step ``t``.

    Each step scores every alive unit (:func:`unit_scores`) and removes the lowest-scoring ``step_sizes[t]``
    units jointly (:func:`remove_columns`, which also downdates ``Hinv`` to the new alive set). ``Hinv`` is
    recomputed from ``H`` (pruned rows/columns set to identity) every ``refresh_every`` steps (0: never) to bound
    round-off; ``refresh_every=1`` is the released code's recompute-every-step.
    Heads use steps of 1 (Batched Greedy Pruning); FFN channels use Dynamic Group Size steps.
    A Cholesky failure is retried with the damping multiplied by 10 (reported in ``ObsResult.damp``).

    Args:
        weight: ``[rows, cols]`` (any dtype; computed in fp32). hessian: ``[cols, cols]``.
        units: ``[u, s]`` LongTensor, column indices of each unit (disjoint).
        score: how units are ranked at each step (:func:`unit_scores`); the removal itself is always exact OBS.
    """
    if sum(step_sizes) > units.shape[0]:
        raise ValueError(f"cannot remove {sum(step_sizes)} of {units.shape[0]} units")
    return with_damping_retry(
        lambda d: _greedy(weight, hessian, units, step_sizes, score, d, refresh_every), damp, max_retries)


def with_damping_retry(run: Callable[[float], ObsResult], damp: float, max_retries: int = 4) -> ObsResult:
    """``run(damp)``, retried with the damping multiplied by 10 (``1e-4`` from 0) while a Cholesky fails."""
    for attempt in range(max_retries + 1):
        try:
            return run(damp)
        except torch.linalg.LinAlgError:
            if attempt == max_retries:
                raise CholeskyError(f"Hessian not positive definite even with damp={damp:g}") from None
            damp = damp * 10 if damp > 0 else 1e-4
    raise AssertionError("unreachable")


def _greedy(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    units: torch.Tensor,
    step_sizes: list[int],
    score: str,
    damp: float,
    refresh_every: int,
) -> ObsResult:
    """The greedy loop of :func:`obs_prune` on the *alive* columns only.

    After each step the removed columns are dropped from ``W`` and ``Hinv`` (``[rows, alive]``,
    ``[alive, alive]``; ``pos`` maps each unit's columns to their current positions), so a step costs
    ``O(alive²)`` and a refresh inverts ``H_RR`` (``O(alive³)``) instead of the full ``cols × cols`` matrix with
    identity rows (one thread, 1,536 × 8,960 ``down_proj``, 84% of the channels removed in 81 steps: 234 s before,
60 s now, the same channels removed). The
    alive block of the full-size ``Hinv`` and the compact one are the same matrix, ``(H_RR)⁻¹``; only the
    round-off of the refreshes differs (a Cholesky of a smaller matrix).
    """
    W_full, H = prepare_hessian(weight, hessian, damp)
    units = units.to(W_full.device)
    keep = torch.arange(W_full.shape[1], device=W_full.device)  # original index of each alive column
    pos = units.clone()  # current position of every unit's columns (stale for removed units)
    alive_units = torch.ones(units.shape[0], dtype=torch.bool, device=W_full.device)
    removed: list[int] = []
    step_errors: list[float] = []
    W, Hinv = W_full, inverse_of_alive(H, torch.ones_like(keep, dtype=torch.bool))
    for step, k in enumerate(step_sizes):
        if refresh_every and step and step % refresh_every == 0:  # bound the downdates' round-off
            Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H[keep][:, keep]))
        candidates = torch.nonzero(alive_units).flatten()
        scores = unit_scores(W, Hinv, pos[candidates], score)
        chosen = candidates[torch.topk(scores, k, largest=False).indices]
        W, Hinv, err = remove_columns(W, Hinv, pos[chosen].flatten())
        stay = torch.ones(keep.numel(), dtype=torch.bool, device=W.device)
        stay[pos[chosen].flatten()] = False
        new_pos = torch.cumsum(stay, 0) - 1  # old position -> new position (for the columns that stay)
        W, Hinv, keep, pos = W[:, stay], Hinv[stay][:, stay], keep[stay], new_pos[pos]
        alive_units[chosen] = False
        removed.extend(chosen.tolist())
        step_errors.append(err)
    out = torch.zeros_like(W_full)
    out[:, keep] = W
    return ObsResult(out, removed, float(sum(step_errors)), damp, len(step_sizes), step_errors)


def dynamic_group_sizes(num_remove: int, max_group: int = 1024, min_group: int = 64) -> list[int]:
    """Dynamic Group Size schedule of the released SlimGPT code (§3.1): large groups first, then smaller.

    ``bs = (num_remove - 512) // 2``; each step removes ``min(remaining, max(bs, min_group), max_group)``
    units, then ``bs = (bs - 512) // 2``. ``min_group == max_group`` gives a fixed group size.
    """
    if min_group < 1 or max_group < min_group:
        raise ValueError(f"need 1 <= min_group <= max_group, got min_group={min_group}, max_group={max_group}")
    sizes, remaining, bs = [], num_remove, (num_remove - 512) // 2
    while remaining > 0:
        size = min(remaining, max(bs, min_group), max_group)
        sizes.append(size)
        remaining -= size
        bs = (bs - 512) // 2
    return sizes
