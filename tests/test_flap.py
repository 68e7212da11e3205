"""FLAP as released (``flap``: dense statistics, squared head scores, AL-AM global search, bias compensation)
against hand computations on tiny models, and its sequential variant (``flap_sequential``)."""

import pytest
import torch

import slimgpt
from slimgpt.pruning.methods.flap import FLAP, global_removal
from slimgpt.pruning.structures import (
    attention_block,
    channel_params,
    guaranteed_head_params,
    mlp_block,
)

from helpers import slim_tiny

CALIB = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
KINDS = ("attention", "mlp")

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- hand computations ---------------------------------------------------------------------------------------


def _hand_inputs(model, calibration) -> dict:
    """``{(layer, kind): [tokens, cols]}`` inputs of every o_proj / down_proj, one forward of the whole batch."""
    seen, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for kind, linear in zip(KINDS, (layer.self_attn.o_proj, layer.mlp.down_proj)):
            def hook(module, args, key=(i, kind)):
                seen[key] = args[0].detach().reshape(-1, args[0].shape[-1])
            handles.append(linear.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(calibration)
    for handle in handles:
        handle.remove()
    return seen


def _hand_scores(model, inputs) -> dict:
    """``{(layer, kind): [u]}`` FLAP's released scores, written out: WIFV per column, squared for attention,
    standardised over the layer (unbiased std), mean over a KV group's columns."""
    scores = {}
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        for kind, linear in zip(KINDS, (attn.o_proj, layer.mlp.down_proj)):
            X, W = inputs[(i, kind)], linear.weight.detach()
            wifv = X.var(0, unbiased=False) * (W**2).sum(0)
            if kind == "attention":
                z = (wifv**2 - (wifv**2).mean()) / (wifv**2).std()
                cols = attention_block(attn, attn.kv_map, "kv_group").units
                scores[(i, kind)] = torch.stack([z[c].mean() for c in cols])
            else:
                scores[(i, kind)] = (wifv - wifv.mean()) / wifv.std()
    return scores


def _unit_weights(model) -> dict:
    return {(i, kind): guaranteed_head_params(layer.self_attn, "kv_group", 1) if kind == "attention"
            else channel_params(layer.mlp) for i, layer in enumerate(model.model.layers) for kind in KINDS}


def _hand_plan(scores: dict, weights: dict, to_remove: float) -> dict:
    """Brute force: keep each block's best unit, then try every number of kept units in descending score order
    and keep the one whose removed weight is closest to ``to_remove``."""
    pinned = {key: int(s.argmax()) for key, s in scores.items()}
    cands = sorted(((float(s[u]), key, u) for key, s in scores.items() for u in range(len(s)) if u != pinned[key]),
                   key=lambda c: -c[0])
    total = sum(weights[key] for _, key, _ in cands)
    best = min(range(len(cands) + 1), key=lambda k: abs(total - sum(weights[key] for _, key, _ in cands[:k]) - to_remove))
    plan = {key: [] for key in scores}
    for _, key, u in cands[best:]:
        plan[key].append(u)
    return {key: sorted(r) for key, r in plan.items()}


def _prepared(model, ratio: float) -> tuple[FLAP, list]:
    method = FLAP()
    method.prepare(model, CALIB)
    params = sum(p.numel() for p in model.parameters())
    return method, method.plan(model, params * (1 - ratio), "kv_group", None)


# ---- tests ---------------------------------------------------------------------------------------------------


def test_head_score_is_the_standardised_squared_fluctuation_averaged_per_head(family):
    """Multi-head attention (kv_heads = heads): a unit is one head, as in the released code."""
    model = slim_tiny(family, kv_heads=8, num_layers=2)
    method, _ = _prepared(model, 0.2)
    expected = _hand_scores(model, _hand_inputs(model, CALIB))
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        got = method.scores(attention_block(attn, attn.kv_map, "kv_group", i))
        torch.testing.assert_close(got, expected[(i, "attention")], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(method.scores(mlp_block(layer.mlp, i)), expected[(i, "mlp")], rtol=1e-4, atol=1e-5)
    # squaring matters: the plain per-head sum (the sequential variant's score) ranks the heads differently
    X, W = _hand_inputs(model, CALIB)[(1, "attention")], model.model.layers[1].self_attn.o_proj.weight.detach()
    plain = (X.var(0, unbiased=False) * (W**2).sum(0)).reshape(8, -1).sum(1)
    assert plain.argsort().tolist() != expected[(1, "attention")].argsort().tolist()


def test_global_search_equals_a_brute_force_plan_on_dense_statistics():
    """The plan of a real prune equals the one computed by hand from a run of the *dense* model: had layer
    i+1's statistics been taken after pruning layer i (as flap_sequential does), the plan would differ."""
    dense, model = slim_tiny(num_layers=4), slim_tiny(num_layers=4)
    method = FLAP()
    report = slimgpt.prune(model, CALIB, 0.35, method=method, batch_size=3, progress=False)
    params = sum(p.numel() for p in dense.parameters()) + 2 * 64 * 4  # + the added o_proj/down_proj biases
    expected = _hand_plan(_hand_scores(dense, _hand_inputs(dense, CALIB)), _unit_weights(dense),
                          params - report.params_before * (1 - 0.35))
    assert method._plan == {key: r for key, r in expected.items()}
    assert [(r.kv_heads[0] - r.kv_heads[1], r.ffn[0] - r.ffn[1]) for r in report.layers] == \
        [(len(expected[(i, "attention")]), len(expected[(i, "mlp")])) for i in range(4)]
    assert len({r.ffn[1] for r in report.layers}) > 1  # the widths come from the search, not a schedule
    assert report.schedule == "planned by flap"


def test_statistics_of_layer_i_plus_1_are_those_of_the_dense_model():
    dense, model = slim_tiny(num_layers=3), slim_tiny(num_layers=3)
    inputs = _hand_inputs(dense, CALIB)
    seen = {}

    class Recording(FLAP):
        def select(self, block, stats, num_remove):
            seen[(block.layer, block.kind)] = self._stats[(block.layer, block.kind)]
            return super().select(block, stats, num_remove)

    method = Recording()
    report = slimgpt.prune(model, CALIB, 0.4, method=method, batch_size=3, progress=False)
    assert report.layers[0].params[1] < report.layers[0].params[0] and (1, "mlp") in seen
    # the pruned model's inputs to layer 1's kept channels differ from the dense ones: statistics taken on
    # them (as flap_sequential does) would differ
    kept = [c for c in range(128) if c not in method._plan[(1, "mlp")]]
    pruned_inputs = _hand_inputs(model, CALIB)[(1, "mlp")]
    assert not torch.allclose(pruned_inputs.var(0), inputs[(1, "mlp")][:, kept].var(0), rtol=1e-2)
    for key, stats in seen.items():
        torch.testing.assert_close(stats.mean, inputs[key].mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats.variance, inputs[key].var(0, unbiased=False), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4, 0.55])
def test_the_global_threshold_meets_the_parameter_budget(ratio):
    model = slim_tiny(num_layers=4)
    # the search ignores the schedule; "uniform" only keeps the engine's up-front schedule check quiet at 55%
    report = slimgpt.prune(model, CALIB, ratio, "uniform", method="flap", batch_size=4, progress=False)
    assert report.params_after == sum(p.numel() for p in model.parameters())
    largest = max(_unit_weights(slim_tiny(num_layers=4)).values())
    assert abs(report.params_before * (1 - ratio) - report.params_after) <= largest / 2
    assert all(r.achieved_ratio == pytest.approx(r.target_ratio, abs=1e-12) for r in report.layers)


def test_global_removal_keeps_the_highest_scores_and_each_blocks_best():
    scores = [torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0.5, 0.2]), torch.tensor([4.0, 2.0, 0.1])]
    # candidates (best of each block pinned): 1.0, 3.0 (w 10); 0.2 (w 1); 2.0, 0.1 (w 1)
    assert global_removal(scores, [10, 1, 1], 0) == [[], [], []]
    assert global_removal(scores, [10, 1, 1], 2) == [[], [1], [2]]
    assert global_removal(scores, [10, 1, 1], 12) == [[1], [1], [2]]
    assert global_removal(scores, [10, 1, 1], 23) == [[1, 2], [1], [1, 2]]
    with pytest.raises(ValueError, match="cannot remove 24 parameters"):
        global_removal(scores, [10, 1, 1], 24)


def test_bias_compensation_is_the_dense_mean_contribution_and_keeps_the_output_mean():
    """Layer 0's attention sees the dense embeddings in both models, and kept heads are untouched, so with
    ``b = W[:, R] · mean(x_R)`` the mean of o_proj's output over the calibration tokens is exactly the dense one."""
    dense, model = slim_tiny(num_layers=2), slim_tiny(num_layers=2)
    method = FLAP()
    slimgpt.prune(model, CALIB, 0.45, "uniform", method=method, batch_size=4, progress=False)
    inputs = _hand_inputs(dense, CALIB)
    for i in range(2):
        for kind, out in zip(KINDS, (dense.model.layers[i].self_attn.o_proj, dense.model.layers[i].mlp.down_proj)):
            units = (attention_block(dense.model.layers[i].self_attn, dense.model.layers[i].self_attn.kv_map, "kv_group").units
                     if kind == "attention" else torch.arange(out.in_features)[:, None])
            R = units[method._plan[(i, kind)]].flatten()
            pruned = model.model.layers[i].self_attn.o_proj if kind == "attention" else model.model.layers[i].mlp.down_proj
            torch.testing.assert_close(pruned.bias.detach(), out.weight.detach()[:, R] @ inputs[(i, kind)][:, R].mean(0),
                                       rtol=1e-5, atol=1e-6)
    assert method._plan[(0, "attention")]
    ours = _hand_inputs(model, CALIB)[(0, "attention")] @ model.model.layers[0].self_attn.o_proj.weight.detach().T
    ours = ours + model.model.layers[0].self_attn.o_proj.bias.detach()
    target = inputs[(0, "attention")] @ dense.model.layers[0].self_attn.o_proj.weight.detach().T
    torch.testing.assert_close(ours.mean(0), target.mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, target, atol=1e-3)  # heads were really removed


def test_without_bias_compensation_no_bias_is_added_and_the_budget_still_holds():
    largest = max(_unit_weights(slim_tiny(num_layers=3)).values())
    for compensate in (True, False):
        model = slim_tiny(num_layers=3)
        report = slimgpt.prune(model, CALIB, 0.3, method=FLAP(bias_compensation=compensate), batch_size=4,
                               progress=False)
        assert (model.model.layers[0].mlp.down_proj.bias is not None) == compensate
        assert model.config.o_proj_bias == compensate
        assert abs(report.params_before * 0.7 - report.params_after) <= largest / 2


def test_sequential_variant_follows_the_schedule_on_pruned_inputs():
    flap, sequential = slim_tiny(num_layers=4), slim_tiny(num_layers=4)
    planned = slimgpt.prune(flap, CALIB, 0.3, method="flap", batch_size=4, progress=False)
    layered = slimgpt.prune(sequential, CALIB, 0.3, "log_increase", method="flap_sequential", batch_size=4,
                            progress=False)
    assert layered.schedule == "log_increase" and layered.method == "flap_sequential"
    targets = [r.target_ratio for r in layered.layers]
    assert targets == sorted(targets) and targets[0] < targets[-1]  # log_increase: deeper layers lose more
    assert layered.achieved_ratio == pytest.approx(0.3, abs=0.012)
    assert sequential.model.layers[0].mlp.down_proj.bias is not None
    assert [r.ffn[1] for r in layered.layers] != [r.ffn[1] for r in planned.layers]


def test_flap_refuses_query_head_units_and_a_plan_before_prepare():
    with pytest.raises(ValueError, match="head_granularity 'query_head' is not supported"):
        slimgpt.prune(slim_tiny(num_layers=2), CALIB, 0.2, method="flap", head_granularity="query_head",
                      progress=False)
    with pytest.raises(RuntimeError, match="prepare"):
        FLAP().plan(slim_tiny(num_layers=2), 1000, "kv_group", None)


def test_flap_refuses_aligned_widths_before_any_weight_changes_and_at_config_time():
    from slimgpt.pruning.options import EngineOptions
    from slimgpt.runner.specs import PrunerSpec

    model = slim_tiny(num_layers=2)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="plans every layer's width itself; width_multiple=32"):
        slimgpt.prune(model, CALIB, 0.2, method="flap", width_multiple=32, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="width_multiple=32"):
        PrunerSpec(method="flap", ratio=0.2, engine=EngineOptions(width_multiple=32))
    PrunerSpec(method="flap_sequential", ratio=0.2, engine=EngineOptions(width_multiple=32))  # follows the schedule


def test_the_schedule_does_not_constrain_flap_whose_global_plan_replaces_it():
    """A schedule that cannot reach the ratio (a layer would need a ratio >= 1) stops the schedule-following
    methods up front, but not FLAP: its global search sets every layer's width, and the schedule is not used."""
    with pytest.raises(ValueError, match="linear_increase"):
        slimgpt.prune(slim_tiny(num_layers=2), CALIB, 0.6, method="flap_sequential", schedule="linear_increase",
                      ratio_of="layers", progress=False)
    report = slimgpt.prune(slim_tiny(num_layers=2), CALIB, 0.6, schedule="linear_increase", method="flap",
                           ratio_of="layers", batch_size=4, progress=False)
    assert report.schedule == "planned by flap"
    assert sum(r.params[0] - r.params[1] for r in report.layers) / sum(r.params[0] for r in report.layers) \
        == pytest.approx(0.6, abs=0.02)


def test_layer_range_limits_the_search_to_the_pruned_layers():
    model = slim_tiny(num_layers=4)
    report = slimgpt.prune(model, CALIB, 0.2, method="flap", layer_range=(1, 3), batch_size=4, progress=False)
    assert [r.params[0] == r.params[1] for r in report.layers] == [True, False, False, True]
    assert report.achieved_ratio == pytest.approx(0.2, abs=0.01)


def test_flap_pruned_model_saves_and_loads_with_equal_logits(tmp_path, family):
    from transformers import AutoModelForCausalLM

    model = slim_tiny(family, num_layers=3)
    slimgpt.prune(model, CALIB, 0.35, "uniform", method="flap", batch_size=4, progress=False)
    ids = CALIB[:2]
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.o_proj_bias and loaded.config.layer_intermediate_sizes == model.config.layer_intermediate_sizes
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
