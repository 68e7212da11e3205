"""The one-pass layer loop against the three-pass one: same units, same next-layer inputs up to reassociation.

The one-pass loop (``passes="one"``) computes attention and gate/up once and applies the compensated
``o_proj``/``down_proj`` to the kept columns of their stored inputs; the three-pass loop recomputes the pruned
layer. Both must remove the same unit indices in every block and give next-layer inputs and logits equal up
to fp32 reassociation: ``TOL`` (measured largest differences on these models: 4e-6 on the logits and 1.3e-6
on a layer's outputs, SlimGPT with kv groups; many method/granularity pairs are bit-identical).
"""

import dataclasses
import math

import pytest
import torch

import slimgpt
from slimgpt.pruning import METHODS, PruneReport, engine
from slimgpt.pruning.options import EngineOptions

from helpers import slim_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

#: fp32 reassociation: the kept heads' attention and the kept channels' gate/up are computed inside a wider
#: matmul in one pass and a narrower one in three
TOL = {"rtol": 1e-5, "atol": 1e-5}
CALIB = torch.randint(0, 256, (7, 16), generator=torch.Generator().manual_seed(0))  # batches of 3, 3, 1
IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


@dataclasses.dataclass
class Run:
    """What one prune left: the removed units per block, the engine's inputs after each layer, the logits."""

    report: PruneReport
    removed: list[list[int]]
    layer_outputs: list[torch.Tensor]
    logits: torch.Tensor


def prune_recorded(monkeypatch, family: str, passes: str, attn: str = "sdpa", **options) -> Run:
    """Prunes a fresh tiny model with ``passes``, recording every block's removed units and ``inps`` after
    every layer (the engine's own buffer: the next layer's inputs)."""
    removed, outputs = [], []
    choose, prune_layer = engine.choose_units, engine.prune_layer

    def record_choice(*args):
        units, info = choose(*args)
        removed.append(sorted(units))
        return units, info

    def record_layer(layer, index, ratio, inps, *args):
        result = prune_layer(layer, index, ratio, inps, *args)
        outputs.append(inps.clone())
        return result

    monkeypatch.setattr(engine, "choose_units", record_choice)
    monkeypatch.setattr(engine, "prune_layer", record_layer)
    model = slim_tiny(family, num_layers=3)
    model.config._attn_implementation = attn
    report = slimgpt.prune(model, CALIB, 0.35, schedule="uniform", batch_size=3, progress=False, passes=passes,
                           **options)
    monkeypatch.undo()
    with torch.no_grad():
        logits = model(IDS).logits
    return Run(report, removed, outputs, logits)


def assert_same_pruning(one: Run, three: Run) -> None:
    needs_inputs = METHODS[one.report.method].needs_inputs  # without inputs: one pass of the pruned layer
    assert (one.report.passes, three.report.passes) == ("one", "three" if needs_inputs else "one")
    assert (one.report.buffer_device is not None) == needs_inputs and three.report.buffer_device is None
    assert one.removed == three.removed
    widths = [(r.heads, r.kv_heads, r.ffn) for r in three.report.layers]
    assert [(r.heads, r.kv_heads, r.ffn) for r in one.report.layers] == widths
    assert len(one.layer_outputs) == len(three.layer_outputs) == 3
    for got, expected in zip(one.layer_outputs, three.layer_outputs):
        torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(one.logits, three.logits, **TOL)
    for a, b in zip(one.report.layers, three.report.layers):
        assert (a.output_error is None) == (b.output_error is None)
        if a.output_error is not None:
            assert a.output_error == pytest.approx(b.output_error, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("track_error", [False, True], ids=["plain", "track_error"])
@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_pass_chooses_the_same_units_and_outputs(monkeypatch, family, method, granularity, track_error):
    if (method, granularity) == ("flap", "query_head"):
        pytest.skip("FLAP's global search prunes whole KV groups only (refused up front)")
    options = dict(method=method, head_granularity=granularity, track_error=track_error)
    one = prune_recorded(monkeypatch, family, "one", **options)
    three = prune_recorded(monkeypatch, family, "three", **options)
    assert len(three.removed) <= 6 and any(three.removed)  # at most 2 blocks x 3 layers (FLAP plans its own)
    assert_same_pruning(one, three)


def test_uneven_last_batch_under_eager_attention(monkeypatch, family):
    """7 samples in batches of 3, 3, 1: each batch replays its own mask (eager attention uses it)."""
    one = prune_recorded(monkeypatch, family, "one", attn="eager")
    three = prune_recorded(monkeypatch, family, "three", attn="eager")
    assert_same_pruning(one, three)


def test_one_pass_keeps_dense_layers_exact(monkeypatch, family):
    """Layers outside ``layer_range`` are forwarded unpruned: bit-identical in both loops."""
    one = prune_recorded(monkeypatch, family, "one", layer_range=(1, 2), ratio_of="layers")
    three = prune_recorded(monkeypatch, family, "three", layer_range=(1, 2), ratio_of="layers")
    assert_same_pruning(one, three)
    torch.testing.assert_close(one.layer_outputs[0], three.layer_outputs[0], rtol=0, atol=0)


def test_auto_picks_one_pass_when_the_buffers_fit_and_three_when_not(monkeypatch):
    model = slim_tiny("llama", num_layers=3)
    inps = torch.zeros(7, 16, 64)
    need = engine.activation_bytes(inps, model.model.layers)
    assert need == 7 * 16 * (8 * 8 + 128) * 4  # n · L · (heads · head_dim + ffn) fp32 values
    method, cpu = METHODS["slimgpt"](), torch.device("cpu")
    monkeypatch.setattr(engine, "_free_bytes", lambda device: 2 * need)
    assert engine.plan_buffers("auto", method, inps, model.model.layers, cpu) == cpu
    monkeypatch.setattr(engine, "_free_bytes", lambda device: 2 * need - 1)
    assert engine.plan_buffers("auto", method, inps, model.model.layers, cpu) is None
    assert engine.plan_buffers("one", method, inps, model.model.layers, cpu) == cpu
    assert engine.plan_buffers("three", method, inps, model.model.layers, cpu) is None
    assert engine.plan_buffers("one", METHODS["magnitude"](), inps, model.model.layers, cpu) is None


def test_report_splits_each_layer_time():
    report = slimgpt.prune(slim_tiny("llama", num_layers=3), CALIB, 0.35, batch_size=3, progress=False)
    assert report.passes == "one" and report.buffer_device == "cpu"
    for layer in report.layers:
        parts = (layer.stats_seconds, layer.select_seconds, layer.output_seconds)
        assert all(p > 0 for p in parts) and sum(parts) <= layer.seconds
    assert "stats" in report.table() and "one pass per layer" in report.table()


def test_passes_option_is_checked():
    with pytest.raises(ValueError, match="unknown passes 'two'; choose one of auto, one, three"):
        EngineOptions(passes="two")


def test_hessian_is_one_product_per_batch_and_unchanged():
    """The upper-triangle block product on a CPU gives the full product's Hessian, bit for bit, symmetric."""
    from slimgpt.pruning.stats import GRAM_BLOCK, InputStats

    cols = 2 * GRAM_BLOCK + 88  # three block rows, the last one short
    batches = [torch.randn(b, 32, cols, generator=torch.Generator().manual_seed(b)) for b in (3, 3, 2)]
    stats, H, seen = InputStats(cols, "cpu"), torch.zeros(cols, cols), 0
    for x in batches:  # the running mean of SparseGPT's add_batch, as a full product
        stats.add_batch(x)
        X = math.sqrt(2 / (seen + x.shape[0])) * x.reshape(-1, cols)
        H.mul_(seen / (seen + x.shape[0])).addmm_(X.T, X)
        seen += x.shape[0]
    torch.testing.assert_close(stats.hessian, H, rtol=0, atol=0)
    assert torch.equal(stats.hessian, stats.hessian.T)


def test_statistics_refuse_non_finite_activations_only():
    from slimgpt.pruning.stats import InputStats

    huge = torch.full((1, 2, 3), 3e38)  # finite, but its column sums overflow to inf
    InputStats(3, "cpu").add_batch(huge)
    for bad in (float("nan"), float("inf")):
        x = torch.ones(1, 2, 3)
        x[0, 1, 2] = bad
        with pytest.raises(FloatingPointError, match="non-finite"):
            InputStats(3, "cpu").add_batch(x)
