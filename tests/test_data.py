"""``calibration_data``: shape, seeding, windows of the joined token stream, no BOS, clear errors."""

import pytest
import torch

from slimgpt.data import calibration_data
from slimgpt.sources import tiny_tokenizer

DOCS = [f"Document number {i} says something different about topic {i * 7}." for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_shape_dtype_and_seeding(tok):
    batch = calibration_data(DOCS, tok, num_samples=6, seq_len=32, seed=3)
    assert batch.shape == (6, 32) and batch.dtype == torch.long
    assert torch.equal(batch, calibration_data(DOCS, tok, 6, 32, seed=3))
    assert not torch.equal(batch, calibration_data(DOCS, tok, 6, 32, seed=4))


def test_windows_are_slices_of_the_joined_documents_without_bos(tok):
    stream = tok("\n\n".join(DOCS), add_special_tokens=False)["input_ids"]
    text = bytes(stream).decode()  # byte-level tokenizer: ids are the UTF-8 bytes
    batch = calibration_data(DOCS, tok, num_samples=20, seq_len=48, seed=0)
    assert (batch < 256).all()  # no BOS/EOS/PAD ids
    for row in batch:
        assert bytes(row.tolist()).decode() in text


def test_whole_corpus_window(tok):
    ids = tok("\n\n".join(DOCS[:2]), add_special_tokens=False)["input_ids"]
    batch = calibration_data(DOCS[:2], tok, num_samples=3, seq_len=len(ids))
    assert torch.equal(batch, torch.tensor([ids] * 3))


@pytest.mark.parametrize("num_samples, seq_len, bad", [(0, 8, "num_samples"), (2, -1, "seq_len"),
                                                       (2.0, 8, "num_samples"), (True, 8, "num_samples")])
def test_invalid_arguments(tok, num_samples, seq_len, bad):
    with pytest.raises(ValueError, match=f"{bad} must be a positive integer"):
        calibration_data(DOCS, tok, num_samples, seq_len)


def test_too_short_corpus(tok):
    with pytest.raises(ValueError, match=r"\(1 documents\) has 5 tokens, fewer than seq_len=6"):
        calibration_data(["hello"], tok, 1, 6)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        calibration_data([], tok, 1, 6)


def test_calibration_and_perplexity_share_one_token_stream(tok):
    from slimgpt.eval.perplexity import tokenize_stream

    stream = tokenize_stream(tok, DOCS)  # [T]
    batch = calibration_data(DOCS, tok, num_samples=4, seq_len=stream.numel())
    assert torch.equal(batch, stream.expand(4, -1))
    with pytest.raises(ValueError, match="calibration source must be .* got a list holding int"):
        calibration_data(["text", 3], tok, 1, 2)
