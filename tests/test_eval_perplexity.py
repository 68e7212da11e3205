import math

import pytest
import torch

import slimgpt
from slimgpt.eval.perplexity import perplexity, perplexity_stats, tokenize_stream
from slimgpt.sources import TINY_VOCAB, tiny_model, tiny_tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "Sphinx of black quartz.",
]


def _hand_nll(model, ids: list[int], seq_len: int) -> tuple[float, int]:
    """Token by token: -log softmax(logits of the window prefix)[next token], windows scored separately."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - seq_len + 1, seq_len):
        window = torch.tensor([ids[start : start + seq_len]])
        with torch.no_grad():
            logits = model(window).logits[0].double()  # [L, V]
        for t in range(seq_len - 1):
            total -= torch.log_softmax(logits[t], -1)[window[0, t + 1]].item()
            count += 1
    return total, count


def test_perplexity_equals_hand_computation():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    ids = list("\n\n".join(DOCS).encode())  # byte tokenizer: token id = byte value
    assert tokenize_stream(tok, DOCS).tolist() == ids
    total, count = _hand_nll(model, ids, seq_len=16)
    stats = perplexity_stats(model, tok, DOCS, seq_len=16, batch_size=3)
    assert stats["num_windows"] == len(ids) // 16
    assert stats["num_tokens"] == count == stats["num_windows"] * 15
    assert stats["dropped_tokens"] == len(ids) % 16
    assert stats["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    model = tiny_model("qwen2")
    with torch.no_grad():  # zero logits everywhere: p = 1/V for every token
        model.lm_head.weight.zero_()
    assert perplexity(model, tiny_tokenizer(), DOCS, seq_len=8) == pytest.approx(TINY_VOCAB, rel=1e-5)


def test_batching_and_max_tokens_prefix():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    by_one = perplexity_stats(model, tok, DOCS, seq_len=10, batch_size=1)
    by_four = perplexity_stats(model, tok, DOCS, seq_len=10, batch_size=4)  # 10 windows: last batch partial
    assert by_four["ppl"] == pytest.approx(by_one["ppl"], rel=1e-5)
    prefix = perplexity_stats(model, tok, DOCS, seq_len=10, max_tokens=35)
    assert (prefix["num_windows"], prefix["dropped_tokens"]) == (3, 5)
    text = "\n\n".join(DOCS)[:30]
    assert prefix["ppl"] == pytest.approx(perplexity(model, tok, [text], seq_len=10), rel=1e-6)


def test_model_mode_is_restored_and_reexported():
    model = tiny_model("llama").train()
    slimgpt.perplexity(model, tiny_tokenizer(), DOCS, seq_len=32)
    assert model.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_len=1), "seq_len"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_tokens=4, seq_len=8), "max_tokens"),
        (dict(seq_len=500), "fewer than one window"),
        (dict(corpus=[]), "corpus"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, match):
    args = dict(corpus=DOCS) | kwargs
    with pytest.raises(ValueError, match=match):
        perplexity(tiny_model("llama"), tiny_tokenizer(), **args)


def test_tokenizer_larger_than_model_vocab_fails():
    model = tiny_model("llama")
    model.resize_token_embeddings(200)
    with pytest.raises(ValueError, match="259 tokens but the model's embedding has 200 rows"):
        perplexity(model, tiny_tokenizer(), DOCS)


def test_a_window_longer_than_the_context_is_refused():
    model = tiny_model("llama")  # max_position_embeddings 512
    with pytest.raises(ValueError, match="seq_len=1024 exceeds the model's context of 512"):
        perplexity(model, tiny_tokenizer(), DOCS * 200, seq_len=1024)
