"""Invariants of the layer-wise engine and surgery on tiny random models."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimgpt
from slimgpt.pruning.engine import capture_inputs, forward_layer
from slimgpt.pruning.methods.slimgpt import SlimGPT
from slimgpt.pruning.structures import remove_channels, remove_heads
from slimgpt.sources import tiny_model

from helpers import replay_method
from helpers import slim_tiny as _slim

CALIB = torch.randint(0, 256, (12, 24), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def test_ratio_zero_is_identity(family):
    model = _slim(family)
    expected = model(IDS).logits
    report = slimgpt.prune(model, CALIB, 0.0, batch_size=5, progress=False)
    assert report.params_after == report.params_before
    torch.testing.assert_close(model(IDS).logits, expected, rtol=0, atol=0)


def test_replaying_captured_inputs_equals_the_full_forward(family):
    model = _slim(family)
    inps, batches = capture_inputs(model, IDS, batch_size=1, device=torch.device("cpu"))
    for layer in model.model.layers:
        forward_layer(layer, inps, batches)
    logits = model.lm_head(model.model.norm(inps))
    torch.testing.assert_close(logits, model(IDS).logits)


def test_slicing_heads_and_channels_equals_zero_masking(family):
    model = _slim(family)
    layer = model.model.layers[1]
    attn, mlp, hd = layer.self_attn, layer.mlp, layer.self_attn.head_dim
    with torch.no_grad():  # zero-mask: o_proj columns of heads 1, 2, 3 (all of kv head 0 but head 0) ...
        for h in (1, 2, 3):
            attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
        mlp.down_proj.weight[:, [0, 5, 7]] = 0  # ... and three FFN channels
    masked = model(IDS).logits
    remove_heads(attn, attn.kv_map, [1, 2, 3])
    remove_channels(mlp, [0, 5, 7])
    assert (attn.num_heads, attn.num_kv_heads, mlp.intermediate_size) == (5, 2, 125)
    torch.testing.assert_close(model(IDS).logits, masked)
    remove_heads(attn, attn.kv_map, [0])  # kv head 0 now has no query head: it goes too
    assert (attn.num_heads, attn.num_kv_heads, attn.kv_map) == (4, 1, [0, 0, 0, 0])


@pytest.mark.parametrize("granularity", ["kv_group", "query_head"])
def test_prune_hits_the_ratio_and_reports_widths(family, granularity):
    model = _slim(family, num_layers=4)
    report = slimgpt.prune(model, CALIB, 0.3, head_granularity=granularity, batch_size=4, progress=False)
    params = sum(p.numel() for p in model.parameters())
    assert report.params_after == params
    assert report.achieved_ratio == pytest.approx(0.3, abs=0.01)
    targets = [r.target_ratio for r in report.layers]
    assert targets == sorted(targets)  # log increase
    assert model.config.layer_num_heads == [r.heads[1] for r in report.layers]
    assert model.config.layer_intermediate_sizes == [layer.mlp.intermediate_size for layer in model.model.layers]
    assert torch.isfinite(model(IDS).logits).all()
    assert set(report.to_dict()) >= {"achieved_ratio", "layer_ratio", "layers", "seconds", "peak_memory_bytes"}


class _Recording(SlimGPT):
    """SlimGPT that records which units it removed."""

    def __init__(self):
        super().__init__()
        self.log = []

    def select(self, block, stats, num_remove):
        selection = super().select(block, stats, num_remove)
        self.log.append(selection.removed)
        return selection


def test_obs_compensation_beats_plain_removal_on_a_layer():
    """Same units removed; OBS-compensated weights reconstruct the dense layer's output far better."""
    dense, compensated, plain = _slim(), _slim(), _slim()
    recorder = _Recording()
    slimgpt.prune(compensated, CALIB, 0.3, "uniform", recorder, batch_size=4, progress=False)
    slimgpt.prune(plain, CALIB, 0.3, "uniform", replay_method(recorder.log), batch_size=4, progress=False)
    assert compensated.config.layer_intermediate_sizes == plain.config.layer_intermediate_sizes
    inps, batches = capture_inputs(dense, CALIB, batch_size=12, device=torch.device("cpu"))
    kwargs = batches[0][1]  # one batch holds every sample
    target = dense.model.layers[0](inps, **kwargs)
    err = {
        name: (model.model.layers[0](inps, **kwargs) - target).pow(2).sum().item()
        for name, model in (("obs", compensated), ("plain", plain))
    }
    assert err["obs"] < 0.8 * err["plain"]


def test_save_load_pruned_model_both_paths(tmp_path, family):
    import subprocess
    import sys

    model = _slim(family)
    slimgpt.prune(model, CALIB, 0.35, head_granularity="query_head", batch_size=6, progress=False)
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.layer_kv_map == model.config.layer_kv_map
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)
    torch.save(IDS, tmp_path / "ids.pt")
    code = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained(r'{tmp_path}', trust_remote_code=True)\n"
        "assert 'slimgpt' not in sys.modules\n"
        f"torch.save(m(torch.load(r'{tmp_path}/ids.pt')).logits, r'{tmp_path}/out.pt')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)


def test_generation_with_kv_cache_matches_full_forward():
    model = _slim()
    slimgpt.prune(model, CALIB, 0.35, head_granularity="query_head", batch_size=6, progress=False)
    out = model.generate(IDS[:1, :8], max_new_tokens=6, do_sample=False, pad_token_id=258)
    assert out.shape == (1, 14)
    greedy = IDS[:1, :8]
    for _ in range(6):  # no cache: argmax of the full forward
        greedy = torch.cat([greedy, model(greedy).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, greedy)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=1.0), r"ratio must be in \[0, 1\)"),
        (dict(ratio=-0.1), r"ratio must be in \[0, 1\)"),
        (dict(ratio=0.9), "removes every head|>= 1|exceeds"),
        (dict(ratio=0.2, schedule="cosine"), "unknown schedule 'cosine'"),
        (dict(ratio=0.2, method="obs2"), "unknown pruning method 'obs2'"),
        (dict(ratio=0.2, dampp=0.1), r"unknown option\(s\) dampp for method 'slimgpt'; its options are: damp"),
        (dict(ratio=0.2, head_granularity="head"), "unknown head_granularity 'head'"),
        (dict(ratio=0.2, calibration=torch.randint(0, 256, (2, 600))), "exceeds the model's context 512"),
        (dict(ratio=0.2, calibration=torch.full((2, 8), 999)), r"token ids must be in \[0, 259\)"),
        (dict(ratio=0.2, calibration=torch.rand(2, 8)), "LongTensor"),
    ],
)
def test_bad_input_fails_before_any_change(kwargs, match):
    model = _slim()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs.setdefault("calibration", CALIB)
    kwargs.setdefault("progress", False)
    with pytest.raises(ValueError, match=match):
        slimgpt.prune(model, **kwargs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_dense_hf_model_is_refused_with_a_hint():
    with pytest.raises(TypeError, match="as_slim"):
        slimgpt.prune(tiny_model(), CALIB, 0.2)


def test_layer_range_prunes_only_inside_and_hits_the_ratio():
    model = _slim(num_layers=4)
    report = slimgpt.prune(model, CALIB, 0.2, schedule="uniform", layer_range=(1, 3), batch_size=6, progress=False)
    assert [r.params[0] == r.params[1] for r in report.layers] == [True, False, False, True]
    assert report.achieved_ratio == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError, match="layer_range"):
        slimgpt.prune(_slim(num_layers=4), CALIB, 0.2, layer_range=(3, 9))


def test_track_error_is_zero_before_the_first_pruned_layer_and_grows_after():
    model = _slim(num_layers=4)
    report = slimgpt.prune(model, CALIB, 0.1, schedule="uniform", layer_range=(1, 2), track_error=True,
                           batch_size=6, progress=False)
    errors = [r.output_error for r in report.layers]
    assert errors[0] == 0.0 and all(e > 0 for e in errors[1:])


def test_uneven_last_batch_replays_with_its_own_mask_under_eager_attention():
    """Captured batches of 5, 5, 2 are replayed as captured (a 3, 3, ... re-split crashed under eager attention)."""
    model = _slim()
    model.config._attn_implementation = "eager"
    reference = _slim()
    reference.config._attn_implementation = "eager"
    calibration = CALIB[:12]
    report = slimgpt.prune(model, calibration, 0.3, schedule="uniform", batch_size=5, track_error=True,
                           progress=False)
    assert report.achieved_ratio == pytest.approx(0.3, abs=0.02)
    inps, batches = capture_inputs(reference, calibration, batch_size=5, device=torch.device("cpu"))
    assert [b.stop - b.start for b, _ in batches] == [5, 5, 2]
    for layer in reference.model.layers:
        forward_layer(layer, inps, batches)
    torch.testing.assert_close(reference.lm_head(reference.model.norm(inps)), reference(calibration).logits,
                               rtol=1e-4, atol=1e-5)


def test_a_one_layer_range_accepts_every_schedule():
    for schedule in ("log_increase", "linear_decrease"):
        report = slimgpt.prune(_slim(num_layers=4), CALIB, 0.1, schedule=schedule, layer_range=(2, 3),
                               batch_size=6, progress=False)
        assert [r.params[0] != r.params[1] for r in report.layers] == [False, False, True, False]


def test_query_head_plans_the_engine_cannot_meet_are_refused_up_front():
    """One query head and one FFN channel always stay: a ratio beyond that is refused before any change, and
    a ratio just inside it is met."""
    model = _slim(num_layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer 0 would need a ratio of 0.990.*head_granularity=query_head"):
        slimgpt.prune(model, CALIB, 0.99, schedule="uniform", ratio_of="layers", head_granularity="query_head",
                      progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = slimgpt.prune(model, CALIB, 0.9, schedule="uniform", ratio_of="layers",
                           head_granularity="query_head", batch_size=6, progress=False)
    assert report.layer_ratio == pytest.approx(0.9, abs=0.01)


def test_ratio_of_layers_is_a_share_of_the_pruned_layers():
    model = _slim(num_layers=4)
    report = slimgpt.prune(model, CALIB, 0.5, schedule="uniform", ratio_of="layers", layer_range=(1, 3),
                           batch_size=6, progress=False)
    inside = [r for r in report.layers if r.layer in (1, 2)]
    removed = sum(r.params[0] - r.params[1] for r in inside) / sum(r.params[0] for r in inside)
    assert removed == pytest.approx(0.5, abs=0.02) and report.ratio_of == "layers"


def test_pruning_a_pruned_model_again_says_so(caplog):
    model = _slim(num_layers=2)
    slimgpt.prune(model, CALIB, 0.0, progress=False)
    assert "pruned before" not in caplog.text
    slimgpt.prune(model, CALIB, 0.2, batch_size=6, progress=False)
    assert "pruned before" not in caplog.text
    slimgpt.prune(model, CALIB, 0.1, batch_size=6, progress=False)
    assert "this model was pruned before" in caplog.text


def test_calibration_windows_need_context():
    with pytest.raises(ValueError, match="calibration seq_len must be >= 2"):
        slimgpt.prune(_slim(num_layers=2), CALIB[:, :1], 0.2, progress=False)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_width_multiple_gives_aligned_ffn_widths_and_keeps_the_budget(family):
    model = _slim(family, num_layers=4)
    ffn = model.config.intermediate_size
    report = slimgpt.prune(model, CALIB, 0.3, width_multiple=16, batch_size=6, progress=False)
    widths = model.config.layer_intermediate_sizes
    assert all(w % 16 == 0 for w in widths) and any(w < ffn for w in widths)
    assert report.achieved_ratio == pytest.approx(0.3, abs=0.03) and report.engine["width_multiple"] == 16
    assert torch.isfinite(model(IDS).logits).all()


def test_ffn_channels_to_remove_rounds_to_the_nearest_aligned_width():
    from slimgpt.pruning.engine import ffn_channels_to_remove

    assert ffn_channels_to_remove(100 * 3, 1536, 3) == 100                # the paper: nearest channel
    assert ffn_channels_to_remove(100 * 3, 1536, 3, multiple=32) == 96    # keeps 1440 = 45 × 32
    assert ffn_channels_to_remove(1530 * 3, 1536, 3, multiple=32) == 1504  # at least one multiple stays
    assert ffn_channels_to_remove(0, 1530, 3, multiple=32) == 0           # a layer left alone stays as it is
    with pytest.raises(ValueError, match="width_multiple must be a positive int"):
        slimgpt.prune(_slim(num_layers=2), CALIB, 0.2, width_multiple=0, progress=False)
