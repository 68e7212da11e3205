"""Edge cases of the engine's kernels that issue 12 §4 found untested: the default (grouped-Cholesky) head score
on multi-column units, greedy removal with that score against brute force, the damping retry that succeeds,
slicing a whole kv head against masking it (logits), and input statistics accumulated over uneven batches."""

import pytest
import torch

from slimgpt.pruning.obs import CholeskyError, inverse_of_alive, obs_prune, prepare_hessian, unit_scores
from slimgpt.pruning.stats import InputStats
from slimgpt.pruning.structures import attention_block, remove_heads, removed_heads_of

from helpers import slim_tiny

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def problem(rows: int, cols: int, seed: int, tokens: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight ``[rows, cols]`` and the Hessian ``2 XᵀX / N`` of correlated inputs ``X: [tokens, cols]``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g,
                                                                                 dtype=torch.float64)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return W.float(), (2 * X.T @ X / tokens).float()


def schur_diagonal(block: torch.Tensor) -> torch.Tensor:
    """``U_ii²`` of ``block = Uᵀ U`` (U upper) without a Cholesky: the variance of column i given the columns
    before it in the unit, ``1 / ((block[:i+1, :i+1])⁻¹)_ii``."""
    block = block.double()
    return torch.stack([1 / torch.linalg.inv(block[: i + 1, : i + 1])[i, i] for i in range(block.shape[0])])


def cholesky_score_by_hand(W: torch.Tensor, Hinv: torch.Tensor, unit: torch.Tensor) -> float:
    """The paper's head score ``Σ_i ‖W[:, i]‖² / U_ii²`` of one unit, in float64."""
    norms = W.double()[:, unit].pow(2).sum(dim=0)
    return float((norms / schur_diagonal(Hinv[unit][:, unit])).sum())


# ------------------------------------------------------------------------------- the default head score


def test_default_score_of_two_column_units_by_hand():
    """Numbers worked on paper: unit (0, 1) has Hinv block [[4, 2], [2, 5]], so U_00² = 4 and U_11² = 5 - 2²/4 = 4;
    its columns' squared norms are 10 and 20: 10/4 + 20/4 = 7.5. Unit (2, 3): [[2, 1], [1, 3]] gives 2 and 2.5;
    norms 4 and 5: 4/2 + 5/2.5 = 4."""
    W = torch.tensor([[1.0, 2.0, 0.0, 1.0], [3.0, 4.0, 2.0, 2.0]])
    Hinv = torch.tensor([[4.0, 2.0, 0.5, 0.0], [2.0, 5.0, 0.0, 0.5], [0.5, 0.0, 2.0, 1.0], [0.0, 0.5, 1.0, 3.0]])
    units = torch.tensor([[0, 1], [2, 3]])
    torch.testing.assert_close(unit_scores(W, Hinv, units), torch.tensor([7.5, 4.0]))
    # the other scores differ on these units, so the default is the grouped-Cholesky one
    assert unit_scores(W, Hinv, units, "diagonal")[0] == pytest.approx(10 / 4 + 20 / 5)


def test_default_score_of_three_column_units_equals_the_hand_computation():
    W, H = problem(rows=5, cols=12, seed=7)
    Wp, Hp = prepare_hessian(W, H, 0.01)
    Hinv = inverse_of_alive(Hp, torch.ones(12, dtype=torch.bool))
    units = torch.tensor([[0, 1, 2], [5, 3, 4], [6, 9, 7], [11, 10, 8]])  # not in column order: order matters
    expected = torch.tensor([cholesky_score_by_hand(Wp, Hinv, unit) for unit in units], dtype=torch.float64)
    torch.testing.assert_close(unit_scores(Wp, Hinv, units).double(), expected, rtol=1e-4, atol=0)
    assert not torch.allclose(unit_scores(Wp, Hinv, units, "exact").double(), expected, rtol=1e-2)


# ------------------------------------------------------------------------------- greedy with the default score


def brute_force_greedy(W: torch.Tensor, H: torch.Tensor, units: torch.Tensor, steps: list[int]) -> list[int]:
    """Greedy removal recomputed from scratch in float64 at every step: the compensated weight of the units
    removed so far (one joint OBS update of the original weight), the inverse Hessian of the alive columns by
    direct inversion, and every alive unit's default score by hand; each step takes the lowest ``k``."""
    W64, H64 = W.double(), H.double()
    Hinv = torch.linalg.inv(H64)
    chosen: list[int] = []
    for k in steps:
        gone = units[chosen].flatten() if chosen else torch.empty(0, dtype=torch.long)
        current = W64.clone()
        if chosen:
            current -= W64[:, gone] @ torch.linalg.solve(Hinv[gone][:, gone], Hinv[gone, :])
            current[:, gone] = 0
        alive = torch.tensor([c for c in range(W.shape[1]) if c not in set(gone.tolist())])
        Hinv_alive = torch.zeros_like(H64)
        Hinv_alive[alive[:, None], alive[None, :]] = torch.linalg.inv(H64[alive][:, alive])
        scores = {u: cholesky_score_by_hand(current, Hinv_alive, units[u]) for u in range(len(units))
                  if u not in chosen}
        chosen += sorted(scores, key=scores.get)[:k]
    return chosen


def test_greedy_with_the_default_score_equals_brute_force():
    W, H = problem(rows=6, cols=20, seed=15)
    units = torch.arange(20).view(10, 2)
    steps = [2, 1, 1, 1]
    result = obs_prune(W, H, units, steps, damp=0.0)
    brute = brute_force_greedy(W, H, units, steps)
    assert sorted(result.removed[:2]) == sorted(brute[:2]) and result.removed[2:] == brute[2:]
    # on this problem the three scores choose differently, so a run with another score would not pass
    for other in ("exact", "diagonal"):
        assert obs_prune(W, H, units, steps, score=other, damp=0.0).removed[2:] != brute[2:]


# ------------------------------------------------------------------------------- the damping retry


def indefinite_hessian(cols: int = 6, negative: float = -0.05) -> torch.Tensor:
    """A symmetric ``[cols, cols]`` matrix with eigenvalues 1 (cols - 1 times) and ``negative``: damping of 1% of
    its mean diagonal leaves it indefinite, 10% makes it positive definite."""
    Q, _ = torch.linalg.qr(torch.randn(cols, cols, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    eigenvalues = torch.tensor([1.0] * (cols - 1) + [negative], dtype=torch.float64)
    return ((Q * eigenvalues) @ Q.T).float()


def test_the_damping_retry_succeeds_with_ten_times_the_damping():
    H = indefinite_hessian()
    mean_diag = float(torch.diagonal(H).mean())
    assert 0.01 * mean_diag < 0.05 < 0.1 * mean_diag  # the premise: the first damping is too small, the next not
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    units = torch.arange(6).view(3, 2)
    with pytest.raises(CholeskyError, match="damp=0.01"):
        obs_prune(W, H, units, [1], damp=0.01, max_retries=0)
    retried = obs_prune(W, H, units, [1, 1], damp=0.01, max_retries=1)
    direct = obs_prune(W, H, units, [1, 1], damp=0.1)
    assert retried.damp == pytest.approx(0.1)
    assert retried.removed == direct.removed and retried.error == direct.error
    torch.testing.assert_close(retried.weight, direct.weight, rtol=0, atol=0)
    assert torch.isfinite(retried.weight).all()


# ------------------------------------------------------------------------------- slicing a whole kv head


def test_deleting_every_query_head_of_a_kv_group_equals_masking_its_heads(family):
    """Query-head pruning that takes every query head of kv group 1 also deletes kv head 1 (its k/v rows) and
    renumbers the kv heads after it. The reference is the dense model with those heads masked: a head's share of
    the output is its ``o_proj`` columns times its attention output ``softmax(q kᵀ) v``, so zeroing the columns
    (or the v rows with their bias) removes it exactly; zeroing its q and k rows is no mask (attention over
    equal scores is uniform, not zero), which the test checks on the way."""
    model = slim_tiny(family, heads=8, kv_heads=4)
    layer = model.model.layers[1]
    attn, hd = layer.self_attn, layer.self_attn.head_dim
    kv_map = list(attn.kv_map)
    units = [h for h, kv in enumerate(kv_map) if kv == 1]
    assert units == [2, 3] and attention_block(attn, kv_map, "query_head").num_units == 8
    heads = removed_heads_of("query_head", kv_map, units)
    q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])
    kv_rows = torch.arange(1 * hd, 2 * hd)
    with torch.no_grad():
        dense = model(IDS).logits
        for linear, rows in ((attn.q_proj, q_rows), (attn.k_proj, kv_rows), (attn.v_proj, kv_rows)):
            linear.weight[rows] = 0
            if linear.bias is not None:
                linear.bias[rows] = 0
            if linear is attn.k_proj:
                scores_zeroed = model(IDS).logits  # q and k rows zeroed: the heads still contribute
        masked = model(IDS).logits
        attn.o_proj.weight[:, q_rows] = 0
    torch.testing.assert_close(model(IDS).logits, masked, rtol=0, atol=0)  # zero v: the heads gave exactly 0
    assert not torch.allclose(scores_zeroed, masked, atol=1e-4) and not torch.allclose(dense, masked, atol=1e-4)
    remove_heads(attn, kv_map, heads)
    assert (attn.num_heads, attn.num_kv_heads, list(attn.kv_map)) == (6, 3, [0, 0, 1, 1, 2, 2])
    assert attn.k_proj.out_features == attn.v_proj.out_features == 3 * hd
    torch.testing.assert_close(model(IDS).logits, masked)


# ------------------------------------------------------------------------------- input statistics


def test_input_stats_over_uneven_batches_equal_one_computation_over_all_tokens():
    g = torch.Generator().manual_seed(5)
    cols, seq = 7, 11
    batches = [3.0 + torch.randn(b, seq, cols, generator=g) * torch.arange(1, cols + 1) for b in (3, 1, 5)]
    batches.append(3.0 + torch.randn(seq, cols, generator=g))  # a single sequence given as [seq, cols]
    stats = InputStats(cols, "cpu")
    for x in batches:
        stats.add_batch(x)
    X = torch.cat([x.reshape(-1, cols) for x in batches]).double()  # [tokens, cols]
    sequences = 3 + 1 + 5 + 1
    assert (stats.sequences, stats.tokens) == (sequences, X.shape[0])
    torch.testing.assert_close(stats.hessian.double(), 2 * X.T @ X / sequences, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.mean.double(), X.mean(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.variance.double(), X.var(dim=0, unbiased=False), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(stats.norm.double(), X.norm(dim=0), rtol=1e-5, atol=1e-5)
    without = InputStats(cols, "cpu", hessian=False)
    without.add_batch(batches[0])
    assert without.hessian is None and without.sequences == 3
