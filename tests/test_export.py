"""GGUF export: llama.cpp runs dense and pruned tiny models with PyTorch's logits, or the export refuses.

Pruned layouts are made by deterministic surgery (the engine's own ``remove_heads``/``remove_channels``) so that
each test knows which layer is uneven, narrow or empty; one test runs the real pruning engine.
"""

import os
import sys

import gguf
import numpy as np
import pytest
import torch
from torch import nn

import slimgpt
from slimgpt.export import UnsupportedLayoutError, kv_cache_mib, plan_layouts, to_gguf
from slimgpt.export.layout import plan_layer
from slimgpt.pruning.engine import sync_config
from slimgpt.pruning.structures import add_output_biases, remove_channels, remove_heads
from slimgpt.sources import tiny_model, tiny_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. Pruned models run in llama.cpp!"


@pytest.fixture
def runtime():
    """llama.cpp's runtime (part of the dev install); tests that run a GGUF skip only where it is absent."""
    pytest.importorskip("llama_cpp")
    from slimgpt.export.llamacpp import LlamaCppModel

    return LlamaCppModel


def _model(family: str, **kwargs):
    return slimgpt.as_slim(tiny_model(family, **kwargs))


def _drop_heads(model, layer: int, heads: list[int]) -> None:
    attn = model.model.layers[layer].self_attn
    remove_heads(attn, attn.kv_map, heads)
    sync_config(model)


def _drop_channels(model, layer: int, count: int) -> None:
    remove_channels(model.model.layers[layer].mlp, list(range(0, 2 * count, 2)))
    sync_config(model)


def _empty_ffn(model, layer: int) -> None:
    """Gives ``layer`` an FFN of zero channels (its output is its down_proj bias, or zero)."""
    mlp = model.model.layers[layer].mlp
    hidden = mlp.hidden_size
    mlp.gate_proj, mlp.up_proj = nn.Linear(hidden, 0, bias=False), nn.Linear(hidden, 0, bias=False)
    down = nn.Linear(0, hidden, bias=mlp.down_proj.bias is not None)
    if mlp.down_proj.bias is not None:
        down.bias = mlp.down_proj.bias
    mlp.down_proj, mlp.intermediate_size = down, 0


def _random_output_biases(model) -> None:
    add_output_biases(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.normal_(0, 0.1)
            layer.mlp.down_proj.bias.normal_(0, 0.1)


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _gguf_logits(runtime, path, ids: list[int]) -> np.ndarray:
    with runtime(path, n_ctx=256) as llm:
        return llm.logits(ids)


def _max_error(runtime, model, tmp_path, **export) -> float:
    """Max |llama.cpp - PyTorch| logit over every position of TEXT, for an F32 export of ``model``."""
    tokenizer = tiny_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    path = tmp_path / "m.gguf"
    to_gguf(model, tokenizer, path, "f32", **export)
    return float(np.abs(_gguf_logits(runtime, path, ids) - _torch_logits(model, ids)).max())


def test_dense_model_gives_pytorch_logits(runtime, tmp_path, family):
    assert _max_error(runtime, _model(family), tmp_path) <= 1e-3


def test_kv_group_pruned_model_with_output_biases_gives_pytorch_logits(runtime, tmp_path, family):
    model = _model(family)
    _random_output_biases(model)
    _drop_heads(model, 1, [2, 3])  # layer 1 keeps kv head 0 with its two query heads
    _drop_heads(model, 3, [0, 1])
    _drop_channels(model, 0, 40)
    _drop_channels(model, 2, 7)  # an FFN width that is no multiple of anything
    assert model.config.layer_num_heads == [4, 2, 4, 2]
    assert _max_error(runtime, model, tmp_path) <= 1e-3


def test_engine_pruned_model_gives_pytorch_logits(runtime, tmp_path):
    model = _model("llama", num_layers=3)
    calibration = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    slimgpt.prune(model, calibration, 0.3, schedule="uniform", head_granularity="kv_group", progress=False)
    assert min(model.config.layer_intermediate_sizes) < 96
    assert _max_error(runtime, model, tmp_path) <= 1e-3


def test_balanced_query_head_pruned_model_gives_pytorch_logits(runtime, tmp_path, family):
    """The engine's balanced query-head granularity (single heads and whole groups go, every kept kv head keeps
    as many query heads) is written as is: no regrouping, no extra kv heads."""
    model = _model(family, heads=9, kv_heads=3, hidden=72, num_layers=3)
    calibration = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    slimgpt.prune(model, calibration, 0.35, head_granularity="balanced_query_head", progress=False)
    heads, kv_heads = model.config.layer_num_heads, model.config.layer_num_key_value_heads
    assert heads[0] > heads[-1] and any(h % 3 for h in heads) and min(kv_heads) < 3
    layouts = plan_layouts(model)
    assert [len(layout.kv_heads) for layout in layouts] == kv_heads
    assert all(None not in layout.q_heads for layout in layouts)
    assert _max_error(runtime, model, tmp_path) <= 1e-3


def test_uneven_query_groups_are_refused_naming_the_layer(tmp_path):
    model = _model("llama")
    _drop_heads(model, 2, [0])  # kv head 0 keeps one query head, kv head 1 two
    with pytest.raises(UnsupportedLayoutError, match=r"layer 2: .*uneven \(\[1, 2\]\).*--regroup"):
        to_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf", "f32")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_uneven_query_groups_regrouped_exactly(runtime, tmp_path, family):
    model = _model(family, heads=8, kv_heads=2, hidden=128)
    _drop_heads(model, 1, [0, 1, 2])  # groups [1, 4]: cheapest as groups of 2, one extra kv copy
    _drop_heads(model, 2, [7])  # groups [4, 3]: one zero query head, no extra kv head
    layouts = plan_layouts(model, regroup=True)
    assert layouts[1].q_heads == (0, None, 1, 2, 3, 4) and layouts[1].kv_heads == (0, 1, 1)
    assert layouts[2].q_heads == (0, 1, 2, 3, 4, 5, 6, None) and layouts[2].kv_heads == (0, 1)
    assert _max_error(runtime, model, tmp_path, regroup=True) <= 1e-3
    summary = to_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf", "f16", regroup=True)
    assert summary.kv_heads == [2, 3, 2, 2] and "MiB for the regrouped kv heads" in summary.describe()
    assert kv_cache_mib(summary.kv_heads, 16) - kv_cache_mib([2, 2, 2, 2], 16) == 0.25  # k+v, 4096 × F16


def test_zero_width_ffn_layer_is_written_as_32_zero_channels(runtime, tmp_path, family):
    model = _model(family)
    _random_output_biases(model)
    _empty_ffn(model, 2)
    assert [layout.ffn for layout in plan_layouts(model)] == [96, 96, 32, 96]
    assert _max_error(runtime, model, tmp_path) <= 1e-3


def test_attention_free_layer_equals_a_layer_with_zero_output_projection(runtime, tmp_path):
    reference = _model("llama")
    with torch.no_grad():
        reference.model.layers[2].self_attn.o_proj.weight.zero_()
    model = _model("llama")
    attn = model.model.layers[2].self_attn
    attn.q_proj, attn.k_proj, attn.v_proj = (nn.Linear(64, 0, bias=False) for _ in range(3))
    attn.o_proj = nn.Linear(0, 64, bias=False)
    attn.kv_map, attn.num_heads, attn.num_kv_heads = [], 0, 0  # no forward in PyTorch: the reference runs instead
    tokenizer = tiny_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    to_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    error = np.abs(_gguf_logits(runtime, tmp_path / "m.gguf", ids) - _torch_logits(reference, ids)).max()
    assert error <= 1e-3


def test_no_heads_in_layer_0_is_refused():
    with pytest.raises(UnsupportedLayoutError, match="layer 0 has no attention heads"):
        plan_layer(0, [], 0, 96)


def test_balanced_groups_in_another_order_are_reordered_not_refused():
    layout = plan_layer(3, [1, 0, 1, 0], 2, 100, pad_ffn=32)
    assert layout.q_heads == (1, 3, 0, 2) and layout.kv_heads == (0, 1) and layout.ffn == 128


def test_padded_and_unpadded_ffn_give_equal_logits(runtime, tmp_path, family):
    model = _model(family)
    _drop_channels(model, 1, 21)  # width 75
    tokenizer = tiny_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    to_gguf(model, tokenizer, tmp_path / "plain.gguf", "f32")
    to_gguf(model, tokenizer, tmp_path / "padded.gguf", "f32", pad_ffn=32)
    widths = gguf.GGUFReader(tmp_path / "padded.gguf").fields["deci.feed_forward_length"].contents()
    assert widths == [96, 96, 96, 96]
    plain, padded = (_gguf_logits(runtime, tmp_path / f"{n}.gguf", ids) for n in ("plain", "padded"))
    assert np.abs(plain - padded).max() <= 1e-4


def test_metadata_has_per_layer_int32_arrays_and_explicit_head_size(tmp_path):
    model = _model("qwen2")
    _drop_heads(model, 1, [0, 1])
    to_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    fields = reader.fields
    assert fields["general.architecture"].contents() == "deci"
    heads = fields["deci.attention.head_count"]
    assert heads.contents() == [4, 2, 4, 4] and heads.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert fields["deci.attention.head_count_kv"].contents() == [2, 1, 2, 2]
    assert fields["deci.attention.key_length"].contents() == 16 == fields["deci.attention.value_length"].contents()
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.1.attn_q.bias"].shape.tolist() == [32] and "blk.1.attn_output.bias" not in tensors
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("dtype, tolerance", [("f16", 0.05), ("bf16", 0.2), ("q8_0", 0.2)])
def test_lower_precision_types_stay_close(runtime, tmp_path, dtype, tolerance):
    model = _model("llama", ffn=128)
    tokenizer = tiny_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    summary = to_gguf(model, tokenizer, tmp_path / f"{dtype}.gguf", dtype)
    reference = _torch_logits(model, ids)
    error = np.abs(_gguf_logits(runtime, summary.path, ids) - reference).max()
    assert error <= tolerance * np.abs(reference).max()
    assert summary.file_bytes == (tmp_path / f"{dtype}.gguf").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name != f"{dtype}.gguf"]  # no scratch left


def test_q4_k_m_export_loads_and_generates(runtime, tmp_path):
    model = _model("qwen2", hidden=256, heads=4, kv_heads=2, ffn=512, num_layers=2)
    tokenizer = tiny_tokenizer()
    to_gguf(model, tokenizer, tmp_path / "f32.gguf", "f32")
    summary = to_gguf(model, tokenizer, tmp_path / "q4.gguf", "q4_k_m")
    assert summary.file_bytes < 0.3 * (tmp_path / "f32.gguf").stat().st_size
    ids = tokenizer(TEXT)["input_ids"]
    with runtime(summary.path) as llm:
        assert len(llm.generate(ids, 5)) == 5


def test_tokenizer_round_trips_through_llama_cpp(runtime, tmp_path):
    tokenizer = tiny_tokenizer()
    to_gguf(_model("llama"), tokenizer, tmp_path / "m.gguf", "f32")
    text = "Grüße, 123 — \n\n  spaces and <s> marks"
    with runtime(tmp_path / "m.gguf") as llm:
        assert llm.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize("hi", add_special=True) == tokenizer("hi")["input_ids"]  # BOS only where HF adds it
    chat = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert chat["tokenizer.ggml.model"].contents() == "gpt2"


def test_cli_exports_a_saved_pruned_model(runtime, tmp_path, monkeypatch, capsys):
    model = _model("llama")
    _drop_heads(model, 1, [2, 3])
    model.save_pretrained(tmp_path / "pruned")
    tiny_tokenizer().save_pretrained(tmp_path / "pruned")
    out = tmp_path / "m.gguf"
    monkeypatch.setattr(sys, "argv", ["slimgpt", "export", str(tmp_path / "pruned"), "--type", "q8_0",
                                      "--out", str(out), "--pad-ffn", "32"])
    from slimgpt.runner.cli import main

    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0 and f"wrote {out}" in capsys.readouterr().out
    with runtime(out) as llm:
        assert len(llm.generate(llm.tokenize("Hello"), 4)) == 4


def test_cli_reports_an_uneven_model_in_one_line(tmp_path, capsys):
    from slimgpt.export.cli import main

    model = _model("llama")
    _drop_heads(model, 2, [0])
    model.save_pretrained(tmp_path / "pruned")
    tiny_tokenizer().save_pretrained(tmp_path / "pruned")
    assert main([str(tmp_path / "pruned"), "--out", str(tmp_path / "m.gguf")]) == 2
    assert "layer 2" in capsys.readouterr().err and not (tmp_path / "m.gguf").exists()


def _sentencepiece_style_tokenizer():
    """A LLaMA-2-style tokenizer (BPE with byte fallback, "▁" for spaces) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator([TEXT * 3, "pruning makes models smaller and faster " * 5],
                            trainers.BpeTrainer(vocab_size=340, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_style_tokenizer_round_trips_through_llama_cpp(runtime, tmp_path):
    tokenizer = _sentencepiece_style_tokenizer()
    model = tiny_model("llama")
    model.resize_token_embeddings(384)
    to_gguf(model, tokenizer, tmp_path / "m.gguf", "f16")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.model"].contents() == "llama"
    text = "Pruned models run faster, über alles: 42!"
    with runtime(tmp_path / "m.gguf") as llm:
        assert llm.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------- the runner's export stage


def _export_job(tmp_path, run: str, *overrides: str):
    from slimgpt.runner.cli import build_job, compose_config

    cfg = compose_config(["debug=default", "finetune=none", "eval=ppl", "stages=[prune,eval,export]",
                          "model.name='tiny:llama?heads=6,kv_heads=2,hidden=48'", f"paths.cache={tmp_path / 'cache'}",
                          *overrides])
    return build_job(cfg, run_dir=tmp_path / run)


def test_export_stage_writes_the_final_model_records_it_and_reuses_it(runtime, tmp_path):
    """prune → eval → export on a tiny model: results.json names the GGUF file with its sha256 and size, the
    file gives the pruned checkpoint's logits in llama.cpp, and a second job reuses it from the run cache."""
    from slimgpt.io import sha256_file
    from slimgpt.runner.loggers import NoneLogger
    from slimgpt.runner.pipeline import run_job
    from slimgpt.runner.record import RunRecord

    overrides = ("pruner.engine.head_granularity=balanced_query_head", "pruner.ratio=0.4", "export.dtype=f32")
    record = run_job(_export_job(tmp_path, "run", *overrides), NoneLogger())
    entry = record.export
    assert record.status == "done" and "export" in record.timings and not entry.cached
    assert entry.dtype == "f32" and entry.path.startswith(str(tmp_path / "cache" / "gguf"))
    assert sha256_file(entry.path) == entry.sha256 and entry.bytes == os.path.getsize(entry.path)
    assert RunRecord.load(tmp_path / "run" / "results.json").export == entry
    pruned, tokenizer = slimgpt.load_model(record.final_model.path)
    assert pruned.config.is_pruned()
    ids = tokenizer(TEXT)["input_ids"]
    assert np.abs(_gguf_logits(runtime, entry.path, ids) - _torch_logits(pruned, ids)).max() <= 1e-3
    again = run_job(_export_job(tmp_path, "run2", *overrides), NoneLogger()).export
    assert again.cached and (again.path, again.sha256) == (entry.path, entry.sha256)


def test_export_stage_refuses_uneven_query_heads_before_any_stage(tmp_path):
    from slimgpt.runner.loggers import NoneLogger
    from slimgpt.runner.pipeline import PreflightError, run_job
    from slimgpt.runner.record import RunRecord

    job = _export_job(tmp_path, "run", "pruner.engine.head_granularity=query_head")
    with pytest.raises(PreflightError, match="head_granularity=query_head leaves uneven query groups.*balanced_query_head"):
        run_job(job, NoneLogger())
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and not record.timings and not list((tmp_path / "cache" / "pruned").iterdir())


def test_export_spec_rejects_an_unknown_type():
    from slimgpt.runner.specs import ExportSpec

    with pytest.raises(ValueError, match=r"export.dtype='q3' is not one of \['f32', 'f16'"):
        ExportSpec(dtype="q3")
