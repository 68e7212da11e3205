"""slimgpt+ on tiny models: all options off is slimgpt bit for bit; each component does what it claims (the joint
split's estimated error never exceeds the fixed split's, sensitivity ratios meet the budget, the refits lower
the error against the dense model); the budget kernels on hand-made curves."""

import pytest
import torch

import slimgpt
from slimgpt.pruning import engine
from slimgpt.pruning.budget import LayerCurve, allocate, cumulative, ffn_sample_steps, lower_hull
from slimgpt.pruning.methods import make_method
from slimgpt.pruning.methods.slimgpt_plus import layer_curve, units_freed
from slimgpt.pruning.structures import count_params, layer_prunable_params

from helpers import slim_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

CALIB = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(0))
OFF = dict(head_score="cholesky", joint_split=False, layer_ratios="schedule", refit="none")


def _pruned(method: str, ratio: float = 0.3, num_layers: int = 3, **options):
    torch.manual_seed(0)
    model = slim_tiny(num_layers=num_layers)
    report = slimgpt.prune(model, CALIB, ratio, method=method, progress=False, **options)
    return model, report


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_all_options_off_is_slimgpt_bit_for_bit(granularity):
    plain, _ = _pruned("slimgpt", head_granularity=granularity)
    plus, _ = _pruned("slimgpt_plus", head_granularity=granularity, **OFF)
    ours, theirs = plain.state_dict(), plus.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_slimgpt_plus_changes_the_model():
    plain, _ = _pruned("slimgpt", head_granularity="query_head")
    plus, report = _pruned("slimgpt_plus", head_granularity="query_head")
    assert report.method == "slimgpt_plus" and report.method_options["layer_ratios"] == "sensitivity"
    assert [l.self_attn.num_heads for l in plain.model.layers] != [l.self_attn.num_heads for l in plus.model.layers]


@pytest.mark.parametrize("option, value, allowed", [
    ("joint_split", "yes", "true or false"), ("layer_ratios", "log", "schedule"), ("refit", "scale", "bias")])
def test_bad_options_are_refused(option, value, allowed):
    with pytest.raises(ValueError, match=f"{option} must be .*{allowed}.*{value!r}"):
        make_method("slimgpt_plus", {option: value})


def _layer_and_inputs(granularity: str = "query_head"):
    torch.manual_seed(0)
    model = slim_tiny(num_layers=1)
    inps, batches = engine.capture_inputs(model, CALIB, 4, torch.device("cpu"))
    return model.model.layers[0], inps, batches


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_joint_split_estimate_is_never_above_the_fixed_split(granularity):
    layer, inps, batches = _layer_and_inputs()
    method = make_method("slimgpt_plus")
    curve = layer_curve(layer, 0, inps, batches, granularity, method)
    assert curve.head_errors[0] == 0 and curve.ffn_counts[0] == 0 and curve.max_channels == 127
    assert all(b >= a for a, b in zip(curve.head_errors, curve.head_errors[1:]))  # errors only add up
    units = len(curve.head_errors)
    for ratio in (0.1, 0.25, 0.4, 0.6):
        budget = ratio * curve.params
        fixed = engine.head_units(ratio, units)
        fixed_error = curve.head_errors[fixed] + curve.ffn_error((budget - curve.head_freed[fixed]) / curve.channel_params)
        chosen, error = curve.split(budget)
        assert error <= fixed_error + 1e-9
    before = [p.clone() for p in layer.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))  # measuring changed nothing


def test_joint_split_picks_the_least_error_split_in_the_engine(monkeypatch):
    chosen = []
    layer_target = type(make_method("slimgpt_plus")).layer_target

    def spy(self, *args):
        result = layer_target(self, *args)
        chosen.append(result[1])
        return result

    monkeypatch.setattr(type(make_method("slimgpt_plus")), "layer_target", spy)
    model, report = _pruned("slimgpt_plus", head_granularity="query_head", joint_split=True)
    removed = [l.heads[0] - l.heads[1] for l in report.layers]
    assert removed == chosen  # the engine removed exactly the heads the split chose
    fixed = [engine.head_units(l.target_ratio, 8) for l in report.layers]
    assert removed != fixed
    for layer_report in report.layers:  # the FFN took the rest of the layer budget: ratio met to one channel
        before, after = layer_report.params
        assert abs((before - after) / before - layer_report.target_ratio) < 3 * 64 / before


def test_units_freed_counts_kv_heads_only_when_their_group_is_gone():
    layer, _, _ = _layer_and_inputs()
    attn = layer.self_attn  # 8 query heads in 2 kv groups of 4, head_dim 8, hidden 64
    per_q = 8 * 64 + 64 * 8  # q rows, o_proj columns
    per_kv = 2 * 8 * 64  # k and v rows
    assert units_freed(attn, "query_head", [0, 1, 2]) == 3 * per_q
    assert units_freed(attn, "query_head", [0, 1, 2, 3]) == 4 * per_q + per_kv
    assert units_freed(attn, "kv_group", [1]) == 4 * per_q + per_kv


def test_sensitivity_ratios_meet_the_budget_exactly():
    torch.manual_seed(0)
    model = slim_tiny(num_layers=3)
    total = count_params(model)
    report = slimgpt.prune(model, CALIB, 0.3, method="slimgpt_plus", progress=False, head_granularity="query_head",
                           layer_ratios="sensitivity")
    ratios = [l.target_ratio for l in report.layers]
    weights = [l.params[0] for l in report.layers]
    assert sum(r * w for r, w in zip(ratios, weights)) == pytest.approx(0.3 * total)
    assert len(set(round(r, 3) for r in ratios)) > 1  # not the uniform split
    assert abs(report.params_after - 0.7 * total) < 3 * 3 * 64  # within a channel or so per layer


@pytest.mark.parametrize("refit", ["bias", "down_proj"])
def test_refit_lowers_the_error_against_the_dense_model(monkeypatch, refit):
    cls = type(make_method("slimgpt_plus"))
    finish, errors = cls.finish_layer, []

    def measured(self, layer, index, inps):
        before = engine.relative_error(inps, self._dense)
        finish(self, layer, index, inps)
        errors.append((before, engine.relative_error(inps, self._dense)))

    monkeypatch.setattr(cls, "finish_layer", measured)
    model, report = _pruned("slimgpt_plus", track_error=True, refit=refit, head_granularity="query_head")
    assert len(errors) == 3 and all(after < before for before, after in errors)
    assert [after for _, after in errors] == pytest.approx([l.output_error for l in report.layers])
    assert all(l.mlp.down_proj.bias.abs().sum() > 0 for l in model.model.layers) and model.config.down_proj_bias


def test_budget_kernels_on_hand_made_curves():
    assert cumulative([1.0, 2.0]) == [0.0, 1.0, 3.0]
    assert ffn_sample_steps(100, 48) == [3] * 33 + [1] and sum(ffn_sample_steps(7, 48)) == 7
    assert lower_hull([(0, 0), (1, 5), (2, 1), (3, 9)]) == [(0, 0), (2, 1), (3, 9)]
    # heads are cheap per parameter, channels dear: the split removes heads first
    curve = LayerCurve(head_errors=[0.0, 1.0, 2.0, 30.0], head_freed=[0, 100, 200, 300], ffn_counts=[0, 10, 20],
                       ffn_errors=[0.0, 10.0, 40.0], channel_params=10, max_channels=20, params=1000)
    assert curve.ffn_error(5) == 5.0 and curve.ffn_error(15) == 25.0
    assert curve.split(200) == (2, 2.0) and curve.split(300) == (2, 12.0)
    assert curve.split(10_000) == (0, float("inf"))
    flat = LayerCurve([0.0, 1000.0], [0, 100], [0, 100], [0.0, 0.1], 1, 100, 200)
    taken = allocate([curve, None, flat], 250.0, points=20)
    assert sum(taken) == pytest.approx(250.0) and taken[1] == 0
    assert taken[2] == pytest.approx(100.0)  # the cheap layer is used up first
    with pytest.raises(ValueError, match="cannot remove 1,000,000 parameters"):
        allocate([curve], 1e6)


def test_engine_counts_a_planned_unit_count_without_channels():
    layer, _, _ = _layer_and_inputs()
    params = layer_prunable_params(layer)
    options = engine.EngineOptions()
    assert engine.ffn_channels(layer, 0.3, params, options, (2, None)) == engine.ffn_channels(
        layer, 0.3, params, options, None)
    assert engine.ffn_channels(layer, 0.3, params, options, (2, 5)) == 5
