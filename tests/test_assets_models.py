"""``load_model`` on local directories (tiny models) and, marked slow, on the real SmolLM2-135M."""

import math

import pytest
import torch

import slimgpt
from slimgpt import SlimGPTForCausalLM
from slimgpt.assets.catalog import UnknownAssetError
from slimgpt.testing import tiny_model, tiny_tokenizer


def test_load_model_from_local_dense_directory(tmp_path, family):
    dense = tiny_model(family)
    dense.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, tokenizer = slimgpt.load_model(tmp_path)
    assert isinstance(model, SlimGPTForCausalLM) and not model.training
    assert model.config.source_model_type == family
    ids = torch.tensor([tokenizer("slim models", add_special_tokens=False)["input_ids"]])  # [1, T]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits)


def test_load_model_keeps_a_saved_slim_model(tmp_path):
    slim = slimgpt.as_slim(tiny_model("llama"))
    slim.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = slimgpt.load_model(str(tmp_path), dtype=torch.bfloat16)
    assert isinstance(model, SlimGPTForCausalLM) and model.dtype == torch.bfloat16
    assert model.config.num_hidden_layers == slim.config.num_hidden_layers


def test_load_model_errors():
    with pytest.raises(OSError, match="cannot load model 'no-such/model-xyz': not a known model "
                                      r"\(qwen2.5-0.5b, smollm2-135m\)"):
        slimgpt.load_model("no-such/model-xyz")
    with pytest.raises(UnknownAssetError, match="asset 'wiki' is a text, not a model"):
        slimgpt.load_model("wiki")


@pytest.mark.slow
def test_real_smollm2_is_a_trained_model():
    """Perplexity of SmolLM2-135M on 4 x 512-token windows of the wiki test split (measured 14.4 on 8 x 512)."""
    from slimgpt.assets import text_corpus

    model, tokenizer = slimgpt.load_model("smollm2-135m")
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.intermediate_size) == (30, 9, 3, 1536)
    ids = tokenizer("\n\n".join(text_corpus("wiki", "test")), add_special_tokens=False,
                    return_tensors="pt")["input_ids"][0]
    windows = ids[: 4 * 512].view(4, 512)  # [4, 512]
    with torch.no_grad():
        nll = torch.stack([model(row[None], labels=row[None]).loss for row in windows])  # [4]
    ppl = math.exp(nll.mean().item())
    print(f"SmolLM2-135M wiki test perplexity (4 x 512 tokens): {ppl:.2f}")
    assert 5 < ppl < 40  # a random model is ~50000; an untrained one far above 40
