import math

import pytest

from slimgpt.pruning.schedules import SCHEDULES, layer_ratios


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_weighted_mean_hits_target(schedule):
    weights = [1.0] * 10 + [2.0] * 6
    ratios = layer_ratios(schedule, 0.4, weights, first_ratio=0.1)
    assert sum(w * r for w, r in zip(weights, ratios)) / sum(weights) == pytest.approx(0.4)
    assert all(0 <= r < 1 for r in ratios)


def test_log_increase_is_the_paper_formula():
    ratios = layer_ratios("log_increase", 0.2004, [1.0] * 32, first_ratio=0.0625)
    assert ratios[0] == pytest.approx(0.0625)
    assert ratios[-1] == pytest.approx(0.25, abs=1e-3)  # the released 20% LLaMA-7B recipe
    r_last = ratios[-1]
    for i, r in enumerate(ratios):
        assert r == pytest.approx(0.0625 + (r_last - 0.0625) * math.log(i + 1) / math.log(32))


def test_decrease_mirrors_increase():
    inc = layer_ratios("linear_increase", 0.3, [1.0] * 8)
    assert layer_ratios("linear_decrease", 0.3, [1.0] * 8) == pytest.approx(inc[::-1])
    assert inc == sorted(inc)


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        layer_ratios("cosine", 0.3, [1.0] * 4)
    with pytest.raises(ValueError, match=">= 1"):
        layer_ratios("log_increase", 0.9, [1.0] * 4, first_ratio=0.0)
    with pytest.raises(ValueError, match="first_ratio"):
        layer_ratios("log_increase", 0.3, [1.0] * 4, first_ratio=0.5)
