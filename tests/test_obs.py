"""OBS kernels against brute force on small matrices."""

import pytest
import torch

from slimgpt.pruning.obs import dynamic_group_sizes, inverse_of_alive, obs_prune, prepare_hessian, unit_scores


def _problem(rows=6, cols=12, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g, dtype=torch.float64)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X / tokens
    return W.float(), H.float(), X


def _true_error(W, W_new, H):
    """Layer reconstruction error tr(ΔW H ΔWᵀ) = (2/N)‖(W - Ŵ) X‖²."""
    dW = (W - W_new).double()
    return float(torch.einsum("rc,cd,rd->", dW, H.double(), dW))


def test_reported_error_is_the_true_output_error():
    W, H, _ = _problem()
    units = torch.arange(12).view(4, 3)
    res = obs_prune(W, H, units, [2], damp=0.0)
    assert len(res.removed) == 2
    assert torch.all(res.weight[:, units[res.removed].flatten()] == 0)
    assert res.error == pytest.approx(_true_error(W, res.weight, H), rel=1e-3)


def test_obs_beats_plain_removal():
    W, H, _ = _problem(seed=1)
    units = torch.arange(12).view(6, 2)
    res = obs_prune(W, H, units, [3], damp=0.0)
    masked = W.clone()
    masked[:, units[res.removed].flatten()] = 0
    assert _true_error(W, res.weight, H) < 0.9 * _true_error(W, masked, H)


@pytest.mark.parametrize("group", [1, 3])
def test_exact_scores_match_brute_force(group):
    W, H, _ = _problem(cols=12, seed=2)
    units = torch.arange(12).view(-1, group)
    Wp, Hp = prepare_hessian(W, H, 0.0)
    Hinv = inverse_of_alive(Hp, torch.ones(12, dtype=torch.bool))
    scores = unit_scores(Wp, Hinv, units, "exact")
    brute = [_true_error(W, obs_prune(W, H, units[[u]], [1], damp=0.0).weight, H) for u in range(units.shape[0])]
    torch.testing.assert_close(scores.double(), torch.tensor(brute, dtype=torch.float64), rtol=2e-3, atol=1e-6)
    if group == 1:  # a single column: the paper's score and the plain diagonal one are exact
        torch.testing.assert_close(unit_scores(Wp, Hinv, units), scores)
        torch.testing.assert_close(unit_scores(Wp, Hinv, units, "diagonal"), scores)


def test_diagonal_score_sums_single_column_errors():
    """The ablation score of a 3-column unit is the sum of its columns' brute-force single-column OBS errors;
    the grouped-Cholesky score is never below it (each U_ii² is a Schur complement of Hinv_ii)."""
    W, H, _ = _problem(cols=12, seed=4)
    units = torch.arange(12).view(4, 3)
    Wp, Hp = prepare_hessian(W, H, 0.0)
    Hinv = inverse_of_alive(Hp, torch.ones(12, dtype=torch.bool))
    single = torch.arange(12).view(12, 1)
    col_err = [_true_error(W, obs_prune(W, H, single[[c]], [1], damp=0.0).weight, H) for c in range(12)]
    expected = torch.tensor(col_err, dtype=torch.float64).view(4, 3).sum(dim=1)
    diagonal = unit_scores(Wp, Hinv, units, "diagonal")
    torch.testing.assert_close(diagonal.double(), expected, rtol=2e-3, atol=1e-6)
    assert torch.all(unit_scores(Wp, Hinv, units, "cholesky") >= diagonal * (1 - 1e-5))
    with pytest.raises(ValueError, match="score must be one of"):
        unit_scores(Wp, Hinv, units, "plain")


def test_greedy_choice_equals_brute_force_greedy():
    """Each greedy step picks the unit whose joint OBS removal (with the ones already gone) costs least."""
    W, H, _ = _problem(cols=16, seed=3)
    units = torch.arange(16).view(8, 2)
    res = obs_prune(W, H, units, [1, 1, 1], score="exact", damp=0.0)
    chosen: list[int] = []
    for _ in range(3):
        costs = {
            u: _true_error(W, obs_prune(W, H, units[chosen + [u]], [len(chosen) + 1], damp=0.0).weight, H)
            for u in range(8) if u not in chosen
        }
        chosen.append(min(costs, key=costs.get))
    assert res.removed == chosen


def test_damping_retry_on_indefinite_hessian():
    W = torch.randn(4, 6)
    H = -torch.eye(6)  # negative definite: the first Cholesky fails, more damping cannot help
    with pytest.raises(RuntimeError, match="damp"):
        obs_prune(W, H, torch.arange(6).view(6, 1), [1], damp=0.01, max_retries=1)


def test_dead_columns_are_zeroed():
    W, H, _ = _problem(seed=4)
    H[3, :] = 0
    H[:, 3] = 0
    res = obs_prune(W, H, torch.arange(12).view(12, 1), [1], damp=0.01)
    assert res.removed == [3]  # a dead input costs nothing to remove
    assert torch.all(res.weight[:, 3] == 0)


def test_dynamic_group_sizes_follow_the_released_schedule():
    assert dynamic_group_sizes(5504)[:4] == [1024, 992, 240, 64]
    assert sum(dynamic_group_sizes(5504)) == 5504
    assert dynamic_group_sizes(100) == [64, 36]
    assert dynamic_group_sizes(100, 8, 8) == [8] * 12 + [4]
    with pytest.raises(ValueError, match="min_group"):
        dynamic_group_sizes(10, 4, 8)


def test_downdated_inverse_equals_recomputing_it_every_step():
    W, H, _ = _problem(rows=8, cols=48, tokens=400, seed=5)
    units = torch.arange(48).view(48, 1)
    steps = [8, 8, 4, 4, 2, 2]
    fresh = obs_prune(W, H, units, steps, refresh_every=1)
    downdated = obs_prune(W, H, units, steps, refresh_every=0)
    assert downdated.removed == fresh.removed
    torch.testing.assert_close(downdated.weight, fresh.weight, rtol=1e-4, atol=1e-5)
    assert downdated.error == pytest.approx(fresh.error, rel=1e-4)


@pytest.mark.parametrize("unit_cols", [1, 3])
def test_alive_only_loop_matches_one_joint_removal(unit_cols):
    """The greedy loop drops removed columns after every step (positions remapped, refreshes on ``H_RR``): the
    final weight must equal one joint OBS removal of the chosen units from the dense problem, whatever the
    refresh period, and the units kept in place must be the original columns."""
    W, H, _ = _problem(rows=5, cols=24, seed=7)
    units = torch.arange(24).view(-1, unit_cols).flip(0)  # units not in column order: positions must be remapped
    steps = [2, 1, 3, 1] if unit_cols == 1 else [1, 2, 1]
    runs = [obs_prune(W, H, units, steps, damp=0.01, refresh_every=r) for r in (0, 1, 2)]
    for res in runs[1:]:
        assert res.removed == runs[0].removed
        torch.testing.assert_close(res.weight, runs[0].weight, rtol=1e-4, atol=1e-5)
    chosen = runs[0].removed
    joint = obs_prune(W, H, units[chosen], [len(chosen)], damp=0.01)
    torch.testing.assert_close(runs[0].weight, joint.weight, rtol=1e-4, atol=1e-4)
    assert runs[0].error == pytest.approx(joint.error, rel=1e-4)
