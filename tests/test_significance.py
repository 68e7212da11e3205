"""Paired tests on synthetic per-question results with known answers."""

import math
import random

import numpy as np
import pytest
from scipy import stats

from slimgpt.eval import significance as sig


def pairs_with(a_only: int, b_only: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """0/1 results of two models with the given counts of each (A, B) outcome."""
    cells = [(1, 0)] * a_only + [(0, 1)] * b_only + [(1, 1)] * both + [(0, 0)] * neither
    return [x for x, _ in cells], [y for _, y in cells]


@pytest.mark.parametrize("a_only, b_only, p", [
    (0, 10, 2 / 1024),                                     # every discordant question favours B
    (2, 10, 2 * (1 + 12 + 66) / 4096),                     # hand computation: 2 · P[Bin(12, 1/2) ≤ 2]
    (5, 5, 1.0), (0, 0, 1.0), (6, 5, 1.0),
])
def test_mcnemar_exact_matches_hand_computation(a_only, b_only, p):
    a, b = pairs_with(a_only, b_only, both=30, neither=7)  # concordant questions do not change the p-value
    result = sig.mcnemar_exact(a, b)
    assert result["p_value"] == pytest.approx(p)
    assert (result["a_only"], result["b_only"], result["n"]) == (a_only, b_only, a_only + b_only + 37)
    assert result["diff"] == pytest.approx((a_only - b_only) / result["n"])


@pytest.mark.parametrize("a_only, b_only", [(3, 17), (40, 61), (250, 310), (1, 0)])
def test_mcnemar_exact_agrees_with_scipy_binomtest(a_only, b_only):
    expected = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert sig.mcnemar_exact(*pairs_with(a_only, b_only))["p_value"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_false_positive_rate_under_the_null_stays_below_alpha():
    """Two models that are right independently with the same probability: at most ≈5% of tests reject."""
    rng = random.Random(0)
    rejections = sum(
        sig.mcnemar_exact([rng.random() < 0.6 for _ in range(300)], [rng.random() < 0.6 for _ in range(300)])
        ["p_value"] < 0.05 for _ in range(400))
    assert rejections / 400 <= 0.07


def test_paired_bootstrap_known_cases():
    same = [[1, 0, 1, 1, 0] * 20]
    result = sig.paired_bootstrap(same, same, n_boot=500)
    assert (result["diff"], result["ci_low"], result["ci_high"], result["p_value"]) == (0, 0, 0, 1.0)
    always = sig.paired_bootstrap([[1] * 50, [1] * 80], [[0] * 50, [0] * 80], n_boot=999)
    assert always["diff"] == 1.0 and always["p_value"] == pytest.approx(2 / 1000)  # the smallest it reports


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    """A known true difference of the average (two tasks, +0.10 and 0.00): the interval covers it and its
    half-width is ≈1.96 · the analytic standard error of the mean of paired differences."""
    rng = np.random.default_rng(1)
    tasks_a, tasks_b, variances = [], [], []
    for shift, n in ((0.10, 2000), (0.0, 1500)):
        b = rng.random(n) < 0.5
        a = np.where(rng.random(n) < 0.8, b, rng.random(n) < 0.5 + shift / 0.2)  # A copies B on 80%
        tasks_a.append(a.astype(int).tolist())
        tasks_b.append(b.astype(int).tolist())
        variances.append((a.astype(float) - b).var() / n)
    result = sig.paired_bootstrap(tasks_a, tasks_b, n_boot=4000, seed=3)
    half = (result["ci_high"] - result["ci_low"]) / 2
    assert half == pytest.approx(1.96 * math.sqrt(sum(variances)) / 2, rel=0.1)
    assert result["ci_low"] < result["diff"] < result["ci_high"] and result["p_value"] < 0.01
    assert sig.paired_bootstrap(tasks_a, tasks_b, n_boot=4000, seed=3) == result  # reproducible


def test_align_pairs_by_document_and_refuses_other_questions():
    a = {"doc_id": [0, 1, 2], "correct": [1, 0, 1], "doc_hash": ["x", "y", "z"]}
    b = {"doc_id": [2, 0, 1], "correct": [0, 1, 1], "doc_hash": ["z", "x", "y"]}
    assert sig.align(a, b) == ([1, 0, 1], [1, 1, 0])
    with pytest.raises(ValueError, match="piqa: the two models were scored on different questions"):
        sig.align(a, {"doc_id": [0, 1], "correct": [1, 1]}, "piqa")
    with pytest.raises(ValueError, match=r"documents \[1\] differ"):
        sig.align(a, {**b, "doc_hash": ["z", "x", "other"]})


def test_holm_adjusts_in_order():
    assert sig.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert sig.holm([0.5]) == [0.5]


def test_compare_flags_the_significant_task_only():
    def per(correct):
        return {"doc_id": list(range(len(correct))), "correct": correct}
    a_big, b_big = pairs_with(40, 10, both=100, neither=50)   # p ≈ 1.6e-5
    a_eq, b_eq = pairs_with(20, 20, both=100, neither=60)     # p = 1
    results = {"A": {"t1": per(a_big), "t2": per(a_eq)}, "B": {"t1": per(b_big), "t2": per(b_eq)}}
    [row] = sig.compare(results, ["t1", "t2"], [("A", "B")], n_boot=2000)
    assert row["tasks"]["t1"]["p_value"] < 1e-4 and row["tasks"]["t2"]["p_value"] == 1.0
    assert row["avg"]["diff"] == pytest.approx((30 / 200 + 0) / 2)
    assert row["significant"] == ["t1", "avg"] and row["holm_significant"] == ["t1", "avg"]
    with pytest.raises(ValueError, match=r"no per-question results for \[\('C', 't1'\)"):
        sig.compare(results, ["t1"], [("A", "C")])


def test_versus_chance_matches_scipy():
    correct = [1] * 140 + [0] * 360  # 28% on a four-choice task
    result = sig.versus_chance(correct, 0.25)
    assert result["p_value"] == pytest.approx(stats.binomtest(140, 500, 0.25, alternative="greater").pvalue)
    ci = stats.binomtest(140, 500).proportion_ci(method="wilson")
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert result["accuracy"] == 0.28 and sig.versus_chance([1] * 50, 0.5)["p_value"] == pytest.approx(0.5 ** 50)
    with pytest.raises(ValueError, match="chance must be in"):
        sig.versus_chance(correct, 1.0)
