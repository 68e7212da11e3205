"""LoRA recovery on the real SmolLM2-135M with real ShareGPT pairs (slow: ~1 min on 2 CPU cores)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimgpt
from slimgpt.finetune import lora_finetune

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_lora_on_smollm2_fits_its_batch_and_reloads(tmp_path):
    from slimgpt.assets import instruction_data

    model, tokenizer = slimgpt.load_model("smollm2-135m")
    batch = instruction_data("sharegpt", "train")[:4]
    merged, metrics = lora_finetune(
        model, tokenizer, batch, batch, out_dir=tmp_path, max_steps=3, batch_size=4, micro_batch_size=4,
        max_length=96, lr=1e-3, warmup_steps=0, progress=False,
    )  # fmt: skip
    # The loss on the responses it trains on goes down (held-out data would need many more steps).
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.02
    assert 1 < metrics["eval_ppl_before"] < 1000  # a trained model, response-only loss
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert isinstance(loaded, slimgpt.SlimGPTForCausalLM)
    ids = tokenizer("Hello, how are you?", return_tensors="pt").input_ids
    torch.testing.assert_close(loaded(ids).logits, merged(ids).logits, rtol=0, atol=0)
