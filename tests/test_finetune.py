"""LoRA recovery on tiny models: label masking, learning, merge equivalence, save/load, NaN handling, errors."""

import copy
import json
import random

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import slimgpt
from slimgpt.finetune import NonFiniteLossError, alpaca_prompt, build_examples, lora_finetune
from slimgpt.finetune.data import IGNORE_INDEX, collate, instruction_example, text_examples
from slimgpt.sources import tiny_model, tiny_tokenizer

FAST = dict(batch_size=8, micro_batch_size=8, max_length=224, lr=5e-3, warmup_steps=1, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def records(n: int, seed: int) -> list[dict]:
    """Synthetic Alpaca records with a learnable response pattern."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = "".join(rng.choice("abcdef") for _ in range(5))
        out.append({"instruction": f"Repeat {word}.", "input": "" if i % 2 else "x", "output": f"It is {word}."})
    return out


def pruned_shape_model() -> slimgpt.SlimGPTForCausalLM:
    """A tiny SlimGPT model with the per-layer widths pruning leaves: 3 and 2 query heads (uneven GQA map in
    layer 0), 2 and 1 kv heads, FFN widths 40 and 24."""
    config = slimgpt.as_slim(tiny_model("llama", num_layers=2)).config.to_dict()
    for key in ("transformers_version", "architectures", "model_type"):
        config.pop(key, None)
    config.update(layer_num_heads=[3, 2], layer_kv_map=[[0, 1, 1], [0, 0]], layer_num_key_value_heads=[2, 1],
                  layer_intermediate_sizes=[40, 24])  # fmt: skip
    torch.manual_seed(0)
    return slimgpt.SlimGPTForCausalLM(slimgpt.SlimGPTConfig(**config)).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short LoRA stage on a tiny pruned-shape model: (model before, merged model, metrics, out_dir, logs)."""
    model = pruned_shape_model()
    before = copy.deepcopy(model)
    out_dir = tmp_path_factory.mktemp("lora")
    logs = []
    merged, metrics = lora_finetune(
        model, tiny_tokenizer(), records(48, 0), records(8, 1), out_dir=out_dir, max_steps=8, eval_every=4,
        log_fn=lambda values, step: logs.append((step, values)), **FAST,
    )  # fmt: skip
    return before, merged, metrics, out_dir, logs


def test_response_only_labels_mask_the_prompt():
    tok = tiny_tokenizer()
    record = {"instruction": "Say hi.", "input": "", "output": "hi"}
    prompt = alpaca_prompt(record)
    assert prompt.endswith("### Instruction:\nSay hi.\n\n### Response:\n") and "### Input" not in prompt
    ex = instruction_example(record, tok, max_length=512)
    n_prompt = len(tok(prompt)["input_ids"])
    assert ex.input_ids == tok(prompt)["input_ids"] + tok("hi")["input_ids"] + [tok.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] * n_prompt + ex.input_ids[n_prompt:]
    assert ex.num_targets == 3  # "h", "i", EOS
    assert instruction_example(record, tok, 512, train_on_inputs=True).labels == ex.input_ids
    plain = instruction_example({"instruction": "", "input": "", "output": "hi"}, tok, 512)
    assert plain.input_ids == plain.labels == tok("hi")["input_ids"] + [tok.eos_token_id]
    with_input = alpaca_prompt({"instruction": "Add.", "input": "1 2", "output": "3"})
    assert "### Input:\n1 2\n\n### Response:\n" in with_input


def test_truncation_and_dropped_examples():
    tok = tiny_tokenizer()
    record = {"instruction": "Say hi.", "input": "", "output": "hello there"}
    n_prompt = len(tok(alpaca_prompt(record))["input_ids"])
    cut = instruction_example(record, tok, max_length=n_prompt + 3)
    assert len(cut.input_ids) == n_prompt + 3 and cut.input_ids[-1] != tok.eos_token_id  # no EOS when cut
    long_prompt = {"instruction": "y" * 300, "input": "", "output": "z"}
    examples, dropped = build_examples([record, long_prompt], tok, max_length=200)
    assert len(examples) == 1 and dropped == 1


def test_text_windows_and_collate():
    tok = tiny_tokenizer()
    examples = text_examples(["abcdef", "ghij"], tok, max_length=4)
    stream = list(b"abcdef") + [tok.eos_token_id] + list(b"ghij") + [tok.eos_token_id]
    assert [ex.input_ids for ex in examples] == [stream[0:4], stream[4:8], stream[8:12]]
    assert all(ex.labels == ex.input_ids for ex in examples)
    batch = collate([examples[0], text_examples(["ab"], tok, 4)[0]], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"][1].tolist() == [97, 98, tok.eos_token_id, IGNORE_INDEX]


def test_lora_lowers_heldout_loss(trained):
    _, merged, metrics, _, logs = trained
    assert isinstance(merged, slimgpt.SlimGPTForCausalLM)
    assert metrics["steps"] == 8 and len(metrics["train_loss_curve"]) == 8
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.05
    assert metrics["eval_ppl_after"] == pytest.approx(torch.tensor(metrics["eval_loss_after"]).exp().item())
    assert [e["step"] for e in metrics["eval_history"]] == [0, 4, 8]
    assert metrics["tokens_seen"] > metrics["target_tokens_seen"] > 0
    logged = {key for _, values in logs for key in values}
    assert {"finetune/train/loss", "finetune/eval/loss", "finetune/eval/ppl", "finetune/train/lr"} <= logged
    assert json.loads((trained[3] / "metrics.json").read_text())["steps"] == 8


def test_merged_equals_base_plus_adapter(trained):
    before, merged, _, out_dir, _ = trained
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(0))
    base = before(ids).logits
    unmerged = PeftModel.from_pretrained(before, out_dir / "adapter").eval()
    expected = unmerged(ids).logits
    torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert (expected - base).abs().max() > 1e-3  # the adapter does something
    assert (out_dir / "adapter" / "adapter_model.safetensors").exists()


def test_merged_model_saves_and_loads(trained):
    _, merged, _, out_dir, _ = trained
    loaded = AutoModelForCausalLM.from_pretrained(out_dir / "merged")
    assert isinstance(loaded, slimgpt.SlimGPTForCausalLM)
    assert loaded.config.layer_intermediate_sizes == [40, 24] and loaded.config.layer_kv_map == [[0, 1, 1], [0, 0]]
    ids = torch.arange(40)[None]
    torch.testing.assert_close(loaded(ids).logits, merged(ids).logits, rtol=0, atol=0)
    assert not any(p.name.startswith(".") for p in out_dir.iterdir())  # no temp dirs left behind


def test_stages_chain_and_plain_text_recovery(tmp_path, family):
    model = slimgpt.as_slim(tiny_model(family, num_layers=2))
    tok = tiny_tokenizer()
    merged, first = lora_finetune(model, tok, records(8, 0), records(4, 1), out_dir=tmp_path / "a", max_steps=1, **FAST)
    texts = ["the cat sat on the mat. " * 8] * 6
    settings = {**FAST, "max_length": 32}
    merged, second = lora_finetune(merged, tok, texts, texts[:2], out_dir=tmp_path / "b", max_steps=6, **settings)
    assert isinstance(merged, slimgpt.SlimGPTForCausalLM) and first["steps"] == 1
    assert second["eval_loss_after"] < second["eval_loss_before"]


def test_nan_loss_stops_and_keeps_last_good_adapter(tmp_path):
    model = slimgpt.as_slim(tiny_model("llama", num_layers=2))
    poisoned = {"on": False}

    def poison(module, args, output):  # NaN logits once step 2 is done
        return output * float("nan") if poisoned["on"] else output

    def log_fn(values, step):
        poisoned["on"] = poisoned["on"] or (step == 2 and "finetune/train/loss" in values)

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 3") as info:
        lora_finetune(model, tiny_tokenizer(), records(16, 0), records(4, 1), out_dir=tmp_path,
                      max_steps=5, log_fn=log_fn, **FAST)  # fmt: skip
    assert info.value.step == 2 and info.value.checkpoint == tmp_path / "adapter"
    state = json.loads((tmp_path / "adapter" / "training_state.json").read_text())
    assert state["step"] == 2 and state["train_loss"] == pytest.approx(state["train_loss"])  # finite
    assert not (tmp_path / "merged").exists()
    assert not any("lora" in name for name, _ in model.named_modules())  # the model is given back clean


@pytest.mark.parametrize(
    "change, message",
    [
        ({"r": 0}, "r must be > 0, got 0"),
        ({"target_modules": ("q_proj", "qkv")}, r"\['qkv'\] are not linear layers.*available: \["),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"max_steps": 0}, "max_steps must be None or an integer >= 1"),
    ],
)
def test_bad_settings_are_named(tmp_path, change, message):
    model = slimgpt.as_slim(tiny_model("llama", num_layers=1))
    with pytest.raises(ValueError, match=message):
        lora_finetune(model, tiny_tokenizer(), records(2, 0), records(2, 1), out_dir=tmp_path, **{**FAST, **change})


def test_bad_data_is_named(tmp_path):
    model = slimgpt.as_slim(tiny_model("llama", num_layers=1))
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"train\[1\] needs a string 'output'"):
        lora_finetune(model, tok, [records(1, 0)[0], {"instruction": "a"}], records(2, 1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="mixes item types"):
        lora_finetune(model, tok, ["text", records(1, 0)[0]], records(2, 1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="eval must be a non-empty list"):
        lora_finetune(model, tok, records(2, 0), [], out_dir=tmp_path)
    small = slimgpt.as_slim(tiny_model("llama", num_layers=1))
    small.resize_token_embeddings(100)
    with pytest.raises(ValueError, match="tokenizer has 259 tokens but the model's vocabulary has only 100"):
        lora_finetune(small, tok, records(2, 0), records(2, 1), out_dir=tmp_path)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """The loss and the update of a step are the mean over all target tokens of the effective batch, however
    many micro-batches it is cut into."""
    results = []
    for micro in (8, 3):
        model = slimgpt.as_slim(tiny_model("llama", num_layers=2))
        merged, metrics = lora_finetune(model, tiny_tokenizer(), records(16, 0), records(4, 1),
                                        out_dir=tmp_path / str(micro), max_steps=3,
                                        **{**FAST, "micro_batch_size": micro, "dropout": 0.0})  # fmt: skip
        layers = merged.model.layers
        results.append((metrics["train_loss_curve"], layers[0].self_attn.q_proj.weight, layers[1].mlp.down_proj.weight))
    (curve8, *weights8), (curve3, *weights3) = results
    assert curve8 == pytest.approx(curve3, rel=1e-5) and curve8[-1] < curve8[0]
    for big, small in zip(weights8, weights3):
        torch.testing.assert_close(small, big, rtol=1e-4, atol=1e-6)
