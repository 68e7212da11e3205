"""The cost model of benchmarks/prune_scaling.py on synthetic data: FLOP counts, the non-negative fit, the
fit of the phases recovering known coefficients, and the extrapolation arithmetic."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).parent.parent / "benchmarks" / "prune_scaling.py"
_spec = importlib.util.spec_from_file_location("prune_scaling", _PATH)
scaling = sys.modules.setdefault("prune_scaling", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(scaling)

SMALL = scaling.Shape("small", 4, 64, 4, 2, 160, 1000)
MID = scaling.Shape("mid", 8, 128, 8, 2, 352, 1000)
BIG = scaling.Shape("big", 16, 256, 8, 2, 704, 1000)


def test_cost_features_scale_as_the_model_says():
    base = scaling.cost_features(MID, samples=4, seq_len=32, ratio=0.5)
    twice = scaling.cost_features(MID, samples=8, seq_len=32, ratio=0.5)
    for key in ("fwd", "head", "hess", "out"):
        assert twice[key] == pytest.approx(2 * base[key])  # linear in tokens
    assert twice["obs"] == base["obs"]  # the solves do not see the tokens
    assert base["hess"] == 2 * 128 * MID.layers * (128 ** 2 + 352 ** 2)
    assert scaling.cost_features(MID, 4, 32, 0.0)["out"] == pytest.approx(2 * base["out"])
    # q, o: 128²; k, v: 128 × (2 kv heads × 16); gate, up, down: 128 × 352
    assert MID.layer_params == 2 * 128 ** 2 + 2 * 128 * 32 + 3 * 128 * 352


def test_obs_flops_count_inverse_refreshes_and_downdates():
    one = scaling.Shape("one", 1, 8, 2, 1, 2000, 10)
    # one layer at ratio 0.5: 1000 channels in the Dynamic Group Size steps 244, 64 × 11, 52 = 13 steps, each on
    # the channels still alive; inverses at steps 0 and 8
    alive = [2000 - 244 - 64 * t for t in range(-1, 12)]
    alive[0] = 2000
    steps = [244] + [64] * 11 + [52]
    downdates = sum(a ** 2 * g for a, g in zip(alive, steps))
    assert scaling.obs_flops(one, 0.5) == 8 ** 3 + alive[0] ** 3 + alive[8] ** 3 + downdates
    assert scaling.obs_flops(one, 0.5, refresh=1) == 8 ** 3 + sum(a ** 3 for a in alive) + downdates
    assert scaling.obs_flops(MID, 0.5) > scaling.obs_flops(MID, 0.2) > 0


def test_fit_nonnegative_recovers_coefficients_and_clamps_at_zero():
    rng = np.random.default_rng(0)
    x = rng.uniform(1e9, 1e12, size=(6, 2))
    coef = np.array([3e-11, 7e-12])
    assert np.allclose(scaling.fit_nonnegative(x, x @ coef), coef, rtol=1e-9)
    y = x @ np.array([3e-11, 0.0]) - 1e-13 * x[:, 1]  # the best unconstrained second coefficient is negative
    fitted = scaling.fit_nonnegative(x, y)
    assert fitted[1] == 0.0 and fitted[0] > 0
    with pytest.raises(ValueError, match=r"features \(1, 2\) and seconds \(1,\)"):
        scaling.fit_nonnegative(x[:1], y[:1])


def _rows(truth, shapes):
    rows = []
    for shape in shapes:
        for ratio in (0.2, 0.5):
            p = truth.phases(shape, 16, 64, ratio)
            rows.append({"model": shape.name, "ratio": ratio, "samples": 16, "seq_len": 64, "forward_s": p["forward"],
                         **{f"{k}_s": p[k] for k in ("stats", "select", "output")}})
    return rows


def test_fit_cost_model_recovers_a_known_model_and_predicts_a_larger_one():
    truth = scaling.CostModel(fwd=2e-11, hess=5e-11, obs=1e-9, out=4e-11, dense=2.5e-11)
    shapes = {s.name: s for s in (SMALL, MID)}
    fitted = scaling.fit_cost_model(_rows(truth, shapes.values()), shapes)
    for ratio in (0.2, 0.5):
        want, got = truth.phases(BIG, 16, 64, ratio), fitted.phases(BIG, 16, 64, ratio)
        assert got["prune"] == pytest.approx(want["prune"], rel=1e-6)
        assert got["forward"] == pytest.approx(want["forward"], rel=1e-6)
    assert fitted.obs == pytest.approx(1e-9)


def test_rows_measured_at_other_speeds_fit_one_model_at_the_reference_peak():
    """A row measured while the machine ran 3x faster (its matmul peak 3x the reference) took a third of the
    seconds: brought to the reference peak, the rows give back the model; without it, they do not."""
    truth = scaling.CostModel(fwd=2e-11, hess=5e-11, obs=1e-9, out=4e-11, dense=2.5e-11)
    shapes = {s.name: s for s in (SMALL, MID)}
    rows = _rows(truth, shapes.values())
    for i, row in enumerate(rows):
        factor = 3.0 if i % 2 else 1.0
        row.update({k: v / factor for k, v in row.items() if k.endswith("_s")}, cpu_matmul_flops=30e9 * factor)
    fitted = scaling.fit_cost_model(rows, shapes, reference_peak=30e9)
    assert fitted.phases(BIG, 16, 64, 0.5)["prune"] == pytest.approx(truth.phases(BIG, 16, 64, 0.5)["prune"], rel=1e-6)
    unscaled = scaling.fit_cost_model(rows, shapes)
    assert unscaled.phases(BIG, 16, 64, 0.5)["prune"] != pytest.approx(truth.phases(BIG, 16, 64, 0.5)["prune"], rel=0.05)
    assert scaling.speed(rows[1], 30e9) == 3.0 and scaling.speed(rows[1], None) == 1.0


def test_gpu_seconds_scale_with_the_assumed_peaks():
    model = scaling.CostModel(fwd=2e-11, hess=5e-11, obs=1e-9, out=4e-11, dense=2.5e-11)
    slow = scaling.Device("slow", 24, fp16=1e14, fp32=1e13)
    fast = scaling.Device("fast", 24, fp16=2e14, fp32=2e13)
    a = scaling.gpu_seconds(model, 5e10, slow, BIG, 16, 64, 0.2)
    b = scaling.gpu_seconds(model, 5e10, fast, BIG, 16, 64, 0.2)
    assert b["prune"] == pytest.approx(a["prune"] / 2)
    x = scaling.cost_features(BIG, 16, 64, 0.2)
    assert a["select"] == pytest.approx(1e-9 * x["obs"] * 5e10 / 1e13)  # the CPU's fraction of peak, kept


def test_host_memory_fit_recovers_the_fixed_part():
    base = 1.5 * 2**30
    rows = []
    for shape in (SMALL, MID):
        m = scaling.memory_bytes(shape, 16, 64, 4, 4)
        rows.append({"model": shape.name, "samples": 16, "seq_len": 64,
                     "prune_peak_rss_mb": (base + m["model"] + m["layer"] + m["buffers"]) / 2**20})
    assert scaling.host_memory_fit(rows, {"small": SMALL, "mid": MID}) == pytest.approx(base)
