"""Baseline pruners (magnitude, wanda_sp, flap_sequential, random, llm_pruner) on tiny models: each removes the
units its score ranks lowest (checked against the score computed here from its definition), hits the ratio with every
schedule and head granularity, and gives a model that saves and loads."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimgpt
from slimgpt.pruning import SCHEDULES
from slimgpt.pruning.engine import capture_inputs
from slimgpt.pruning.methods import METHODS
from slimgpt.pruning.methods.flap_sequential import FLAPSequential
from slimgpt.pruning.methods.llm_pruner import LLMPruner, default_layer_range, ratio_from_pruning_ratio
from slimgpt.pruning.stats import InputStats
from slimgpt.pruning.structures import add_output_biases, attention_block, mlp_block

from helpers import replay_method
from helpers import slim_tiny as _slim

BASELINES = ["magnitude", "wanda_sp", "flap_sequential", "random", "llm_pruner"]  # flap: tests/test_flap.py
CALIB = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
ROW = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the scores, written out from their definitions -------------------------------------------------------


def _hand_taylor(model, calibration, variant):
    """``{(layer, name): W·g-type salience [out, in]}`` from a plain ``.backward()`` on the whole batch (g) and
    one per sample (Fisher diagonal), on the dense model."""
    model.zero_grad()
    model(input_ids=calibration, labels=calibration).loss.backward()
    named = {(i, n): m.weight for i, layer in enumerate(model.model.layers)
             for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    grad = {k: w.grad.clone() for k, w in named.items()}
    fisher = {k: torch.zeros_like(w) for k, w in named.items()}
    for sample in calibration:
        model.zero_grad()
        model(input_ids=sample[None], labels=sample[None]).loss.backward()
        for k, w in named.items():
            fisher[k] += w.grad**2 / len(calibration)
    model.zero_grad()
    salience = {}
    for k, w in named.items():
        s = w.detach() * grad[k]
        salience[k] = s - 0.5 * w.detach() ** 2 * fisher[k] if variant == "element2" else s
    return salience


def _taylor_unit(salience, vectors, variant):
    """Sum over structure vectors (each a 1-D slice of the salience) of ``Σ|s|`` or ``|Σ s|``."""
    return sum(v.sum().abs() if variant == "vector" else v.abs().sum() for v in vectors)


def _direct_scores(snap, context):
    """``[u]`` scores of a recorded block, straight from each method's formula."""
    W, units, method = snap["W"], snap["units"], snap["method"]
    if method == "magnitude":
        return torch.stack([
            torch.cat([W[:, cols].flatten()] + [Wc[rows[u]].flatten() for Wc, rows in snap["coupled"]]).norm()
            for u, cols in enumerate(units)
        ])
    if method == "wanda_sp":
        return torch.stack([(W[:, cols].abs() * snap["sq_sum"][cols].sqrt()).sum() for cols in units])
    if method == "flap_sequential":
        var = snap["sq_sum"] / snap["tokens"] - (snap["sum"] / snap["tokens"]) ** 2
        return torch.stack([(var[cols] * (W[:, cols] ** 2).sum(0)).sum() for cols in units])
    if method == "llm_pruner":
        sal, layer = context, snap["layer"]
        out = "self_attn.o_proj" if snap["kind"] == "attention" else "mlp.down_proj"
        q_of = _released_q_rows(snap)  # the default gqa_scores="released"
        return torch.stack([
            _taylor_unit(sal, [sal[(layer, out)][:, j] for j in q_of(u, cols)]
                         + [sal[(layer, name)][r] for name, rows in snap["coupled_names"]
                            for r in (q_of(u, rows[u]) if name == "self_attn.q_proj" else rows[u])],
                         "element1")
            for u, cols in enumerate(units)
        ])
    raise AssertionError(method)


def _released_q_rows(snap):
    """``(u, own) -> q rows / o columns`` that the released LLM-Pruner scores kv group ``u`` with: those of
    query heads ``u, u + kv, u + 2·kv, …`` (its own heads ``own`` for query-head units and MHA)."""
    k_rows = dict(snap["coupled_names"]).get("self_attn.k_proj")
    if k_rows is None or k_rows.shape[1] == snap["units"].shape[1]:
        return lambda u, own: own
    kv, hd = k_rows.shape
    group = snap["units"].shape[1] // hd
    return lambda u, own: [(u + kv * i) * hd + d for i in range(group) for d in range(hd)]


def _recording(name, **options):
    """The registered method ``name`` with a ``select`` that snapshots what it saw and what it removed."""
    cls = METHODS[name]

    class Recording(cls):
        def select(self, block, stats, num_remove):
            layer = self._layers[block.layer]
            names = {id(m): n for n, m in layer.named_modules()}
            snap = {
                "method": name, "kind": block.kind, "layer": block.layer, "units": block.units.clone(),
                "W": block.out_proj.weight.detach().clone(),
                "coupled": [(lin.weight.detach().clone(), rows.clone()) for lin, rows in block.coupled],
                "coupled_names": [(names[id(lin)], rows.clone()) for lin, rows in block.coupled],
            }
            if stats is not None:
                snap.update(sum=stats.sum.clone(), sq_sum=stats.sq_sum.clone(), tokens=stats.tokens)
            selection = super().select(block, stats, num_remove)
            self.log.append((snap, selection.removed))
            return selection

    method = Recording(**options)
    method.log = []
    return method


# ---- tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
@pytest.mark.parametrize("name", ["magnitude", "wanda_sp", "flap_sequential", "llm_pruner"])
def test_each_method_removes_the_units_its_score_ranks_lowest(name, granularity):
    model = _slim()
    context = _hand_taylor(_slim(), CALIB, "element1") if name == "llm_pruner" else None
    method = _recording(name)
    method._layers = model.model.layers
    slimgpt.prune(model, CALIB, 0.3, "log_increase", method, head_granularity=granularity, batch_size=3, progress=False)
    assert {snap["kind"] for snap, _ in method.log} == {"attention", "mlp"}
    for snap, removed in method.log:
        scores = _direct_scores(snap, context)
        kept = [u for u in range(len(scores)) if u not in removed]
        assert removed and kept
        slack = 1e-4 * scores.abs().max()
        assert scores[removed].max() <= scores[kept].min() + slack, (snap["kind"], snap["layer"])


def test_random_is_seeded_and_per_block():
    def removed(seed):
        method = _recording("random", seed=seed)
        method._layers = (model := _slim()).model.layers
        slimgpt.prune(model, CALIB, 0.3, "uniform", method, batch_size=4, progress=False)
        return [r for _, r in method.log]

    assert removed(0) == removed(0)
    assert removed(0) != removed(1)
    mlp = [r for r in removed(0)][1::2]
    assert len({tuple(r) for r in mlp}) > 1  # not the same channels in every layer


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", BASELINES)
def test_every_schedule_and_granularity_reaches_the_ratio(name, schedule, granularity):
    model = _slim(num_layers=4)
    report = slimgpt.prune(model, CALIB[:4], 0.3, schedule=schedule, method=name, head_granularity=granularity,
                           batch_size=4, progress=False)
    assert report.params_after == sum(p.numel() for p in model.parameters())
    # FLAP's added output biases (2·hidden per layer) count as parameters after pruning
    assert report.achieved_ratio == pytest.approx(0.3, abs=0.012)
    assert report.method == name
    assert torch.isfinite(model(IDS).logits).all()
    json.dumps(report.to_dict())  # the report (options included) stays plain data


@pytest.mark.parametrize("name", BASELINES)
def test_pruned_model_saves_and_loads_with_equal_logits(tmp_path, family, name):
    model = _slim(family)
    slimgpt.prune(model, CALIB, 0.35, method=name, head_granularity="query_head", batch_size=4, progress=False)
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.layer_intermediate_sizes == model.config.layer_intermediate_sizes
    assert loaded.config.o_proj_bias == (name == "flap_sequential")
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)


def test_flap_bias_equals_the_mean_contribution_and_lowers_the_block_error():
    """For removed columns R, ``err(no bias) − err(bias) = tokens · ‖W_R · mean(x_R)‖²`` (exactly: the mean
    is the best constant), so the bias strictly lowers the down_proj output error."""
    model = _slim()
    add_output_biases(model)
    layer = model.model.layers[1]
    seen = []
    handle = layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(CALIB)
    handle.remove()
    X = torch.cat(seen).reshape(-1, layer.mlp.intermediate_size)  # [tokens, ffn]
    stats = InputStats(X.shape[1], "cpu", hessian=False)
    stats.add_batch(X[None])
    block = mlp_block(layer.mlp, 1)
    selection = FLAPSequential().select(block, stats, 40)
    W, R = block.out_proj.weight.detach(), torch.tensor(selection.removed)
    kept = torch.tensor([j for j in range(X.shape[1]) if j not in set(selection.removed)])
    dense, plain = X @ W.T, X[:, kept] @ W[:, kept].T
    err_plain = (plain - dense).pow(2).sum()
    err_bias = (plain + selection.bias - dense).pow(2).sum()
    gain = X.shape[0] * (W[:, R] @ X[:, R].mean(0)).pow(2).sum()
    assert err_bias < err_plain
    torch.testing.assert_close(err_plain - err_bias, gain, rtol=1e-3, atol=1e-6)


def test_flap_bias_compensation_lowers_the_layer_output_error():
    dense, compensated, plain = _slim(), _slim(), _slim()
    method = _recording("flap_sequential")
    method._layers = compensated.model.layers
    slimgpt.prune(compensated, CALIB, 0.4, "uniform", method, batch_size=4, progress=False)
    slimgpt.prune(plain, CALIB, 0.4, "uniform", replay_method([r for _, r in method.log]), batch_size=4, progress=False)
    assert compensated.config.layer_intermediate_sizes == plain.config.layer_intermediate_sizes
    inps, batches = capture_inputs(dense, CALIB, batch_size=len(CALIB), device=torch.device("cpu"))
    kwargs = batches[0][1]  # one batch holds every sample
    with torch.no_grad():
        target = dense.model.layers[0](inps, **kwargs)
        err = {name: (m.model.layers[0](inps, **kwargs) - target).pow(2).sum().item()
               for name, m in (("bias", compensated), ("plain", plain))}
    assert err["bias"] < err["plain"]


@pytest.mark.parametrize("variant, gqa_scores", [("element1", "released"), ("element2", "released"),
                                                 ("vector", "released"), ("element1", "aligned")])
def test_llm_pruner_importance_equals_a_hand_computation(family, variant, gqa_scores):
    model = _slim(family, num_layers=2)
    salience = _hand_taylor(model, CALIB[:3], variant)
    method = LLMPruner(variant, gqa_scores)
    method.prepare(model, CALIB[:3])
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    layer = model.model.layers[1]
    attn = attention_block(layer.self_attn, layer.self_attn.kv_map, "kv_group", 1)
    hd = layer.self_attn.head_dim
    # kv group k removes query heads 4k..4k+3 and kv head k; the released code scores it with query heads
    # k, k+2, k+4, k+6 (its importance fold, docs/method.md#llm-pruner), "aligned" with its own
    q_heads = [range(0, 4), range(4, 8)] if gqa_scores == "aligned" else [range(0, 8, 2), range(1, 8, 2)]
    expected = torch.stack([
        _taylor_unit(salience, [salience[(1, "self_attn.o_proj")][:, j] for h in q_heads[k] for j in range(h * hd, (h + 1) * hd)]
                     + [salience[(1, "self_attn.q_proj")][i] for h in q_heads[k] for i in range(h * hd, (h + 1) * hd)]
                     + [salience[(1, n)][i] for n in ("self_attn.k_proj", "self_attn.v_proj")
                        for i in range(k * hd, (k + 1) * hd)], variant)
        for k in range(2)
    ])
    torch.testing.assert_close(method.scores(attn, None), expected, rtol=1e-4, atol=1e-7)
    channels = torch.stack([
        _taylor_unit(salience, [salience[(1, "mlp.down_proj")][:, c], salience[(1, "mlp.gate_proj")][c],
                                salience[(1, "mlp.up_proj")][c]], variant)
        for c in range(layer.mlp.intermediate_size)
    ])
    torch.testing.assert_close(method.scores(mlp_block(layer.mlp, 1), None), channels, rtol=1e-4, atol=1e-7)


def test_llm_pruner_ratio_conversion_and_default_range():
    model = _slim(num_layers=8)
    assert default_layer_range(32) == (4, 30) and default_layer_range(8) == (4, 6)
    ratio = ratio_from_pruning_ratio(model, 0.5, (4, 6))
    report = slimgpt.prune(model, CALIB, ratio, schedule="uniform", method="llm_pruner",
                           layer_range=default_layer_range(8), batch_size=4, progress=False)
    pruned = [r for r in report.layers if r.params[0] != r.params[1]]
    assert [r.layer for r in pruned] == [4, 5]
    assert all(r.achieved_ratio == pytest.approx(0.5, abs=0.02) for r in pruned)
    assert report.achieved_ratio == pytest.approx(ratio, abs=0.005)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("llm_pruner", {"variant": "element3"}, "unknown llm_pruner variant 'element3'"),
        ("llm_pruner", {"gqa_scores": "mean"}, "unknown llm_pruner gqa_scores 'mean'; choose one of released, aligned"),
        ("flap", {"bias_compensation": "yes"}, "bias_compensation must be a bool"),
        ("random", {"seed": -1}, "seed must be a non-negative int"),
        ("magnitude", {"p": 2}, r"unknown option\(s\) p for method 'magnitude'"),
    ],
)
def test_bad_options_fail_clearly(name, options, match):
    with pytest.raises(ValueError, match=match):
        slimgpt.prune(_slim(), CALIB, 0.2, method=name, progress=False, **options)
