"""WikiText2-style perplexity, as in the SparseGPT / LLM-Pruner / SlimGPT evaluation code.

Protocol: the documents of a corpus are joined with ``"\\n\\n"`` and tokenized once, without BOS/EOS; the
token stream is cut into non-overlapping windows of ``seq_len`` tokens; each window is scored on its own
(no context carried over), every token after the first of a window is predicted from the ones before it,
and perplexity is ``exp`` of the mean negative log-likelihood over all predicted tokens.

The paper (and LLM-Pruner, FLAP) report ``seq_len=128``; SparseGPT, Wanda and SliceGPT use 2048. The two
are not comparable: always state the ``seq_len`` and the split.
"""

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import documents, tokenize_stream
from ._common import check_vocab, model_device

__all__ = ["perplexity", "perplexity_stats", "to_windows", "tokenize_stream"]


def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus: str | list[str],
               **options: int | str | None) -> float:
    """Perplexity of ``model`` on ``corpus``: ``perplexity_stats(...)["ppl"]`` (the same keyword ``options``:
    ``seq_len``, ``split``, ``batch_size``, ``max_tokens``; see there for the protocol)."""
    return perplexity_stats(model, tokenizer, corpus, **options)["ppl"]


def perplexity_stats(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: str | list[str],
    seq_len: int = 128,
    split: str = "test",
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> dict:
    """Perplexity with its token accounting, as a JSON-able dict for results files.

    Args:
        corpus: a corpus name for ``slimgpt.assets.text_corpus(name, split)`` (e.g. ``"wiki"``) or a list
            of documents (then ``split`` is only recorded).
        seq_len: window length in tokens (>= 2).
        batch_size: windows per forward pass.
        max_tokens: evaluate only the first ``max_tokens`` tokens of the stream (quick runs); None = all.

    Token accounting: with ``T`` tokens in the (possibly ``max_tokens``-truncated) stream there are
    ``num_windows = T // seq_len`` windows; the last ``T % seq_len`` tokens (a partial window) are dropped,
    as in the reference code, and reported as ``dropped_tokens``. Each window predicts ``seq_len - 1``
    tokens, so ``num_tokens = num_windows * (seq_len - 1)`` and ``ppl = exp(nll_sum / num_tokens)``.

    Returns:
        ``{"ppl", "nll", "num_tokens", "num_windows", "seq_len", "dropped_tokens", "corpus", "split",
        "max_tokens", "seconds"}`` where ``nll`` is the mean negative log-likelihood (nats per predicted
        token) and ``seconds`` the wall time of the whole call.
    """
    start = time.perf_counter()
    _check_args(seq_len, batch_size, max_tokens)
    check_vocab(model, tokenizer)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len={seq_len} exceeds the model's context of {context} tokens (max_position_embeddings)")
    docs = documents(corpus, split)
    stream = tokenize_stream(tokenizer, docs, max_tokens)
    windows = to_windows(stream, seq_len, corpus)
    nll_sum = _nll_sum(model, windows, batch_size)
    num_tokens = windows.shape[0] * (seq_len - 1)
    nll = nll_sum / num_tokens
    return {
        "ppl": math.exp(nll),
        "nll": nll,
        "num_tokens": num_tokens,
        "num_windows": int(windows.shape[0]),
        "seq_len": seq_len,
        "dropped_tokens": int(stream.numel() - windows.numel()),
        "corpus": corpus if isinstance(corpus, str) else f"<{len(corpus)} documents>",
        "split": split,
        "max_tokens": max_tokens,
        "seconds": time.perf_counter() - start,
    }


def to_windows(stream: torch.LongTensor, seq_len: int, corpus: str | list[str] = "text") -> torch.LongTensor:
    """Cuts a token stream LongTensor[T] into LongTensor[T // seq_len, seq_len]; the tail is dropped."""
    num_windows = stream.numel() // seq_len
    if num_windows == 0:
        name = corpus if isinstance(corpus, str) else "the given documents"
        raise ValueError(f"{name} has {stream.numel()} tokens, fewer than one window of seq_len={seq_len}")
    return stream[: num_windows * seq_len].view(num_windows, seq_len)


@torch.no_grad()
def _nll_sum(model: PreTrainedModel, windows: torch.LongTensor, batch_size: int) -> float:
    """Sum over windows LongTensor[N, L] of -log p(x_t | x_<t) for t = 1..L-1, in fp64 accumulation."""
    was_training = model.training
    model.eval()
    device, total = model_device(model), 0.0
    try:
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", unit="batch", leave=False):
            batch = windows[start : start + batch_size].to(device)  # [B, L]
            logits = model(input_ids=batch, use_cache=False).logits  # [B, L, V]
            total += _window_nll(logits, batch)
    finally:
        model.train(was_training)
    return total


def _window_nll(logits: torch.Tensor, batch: torch.LongTensor) -> float:
    """Summed NLL of logits FloatTensor[B, L, V] for tokens batch[B, L]: position t predicts token t+1.

    One window at a time so that ``logits[b, :-1]`` ([L-1, V]) is a view and only one window's fp32
    log-softmax exists at once (at seq_len 2048 a whole batch of it would be several GB).
    """
    nll = [F.cross_entropy(logits[b, :-1].float(), batch[b, 1:], reduction="sum") for b in range(len(batch))]
    return float(torch.stack(nll).double().sum())


def _check_args(seq_len: int, batch_size: int, max_tokens: int | None) -> None:
    """Rejects window/batch/prefix sizes that cannot give a perplexity."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2 (one token of context, one predicted), got {seq_len!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < seq_len):
        raise ValueError(f"max_tokens must be None or an int >= seq_len ({seq_len}), got {max_tokens!r}")
