"""Text corpora as token streams: the one place that joins documents and tokenizes them (perplexity and
calibration share it), and ``calibration_data``: random token windows from a corpus' train split (the
paper's calibration protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

DOC_SEPARATOR = "\n\n"


def calibration_data(
    source: str | Sequence[str], tokenizer, num_samples: int, seq_len: int, seed: int = 0
) -> torch.LongTensor:
    """``num_samples`` windows of ``seq_len`` consecutive tokens drawn uniformly from a corpus.

    ``source`` is a corpus name of ``slimgpt.assets.text_corpus`` (its ``train`` split is used: ``wiki``
    offline, ``c4`` online as in the paper) or a list of documents. The documents are joined with
    ``"\\n\\n"`` and tokenized once without special tokens (no BOS); window starts are drawn with a
    ``torch.Generator`` seeded with ``seed``, so the result is reproducible.

    Returns: LongTensor [num_samples, seq_len] of token ids.
    """
    for arg, value in (("num_samples", num_samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    tokens = tokenize_stream(tokenizer, documents(source, "train", what="calibration source"))  # [total_tokens]
    if tokens.numel() < seq_len:
        raise ValueError(f"calibration source {_describe(source)} has {tokens.numel()} tokens, fewer than "
                         f"seq_len={seq_len}; use a larger corpus or a shorter seq_len")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (num_samples,), generator=generator)  # [n]
    offsets = torch.arange(seq_len)  # [seq_len]
    return tokens[starts[:, None] + offsets[None, :]]  # [num_samples, seq_len]


def documents(source: str | Sequence[str], split: str, what: str = "corpus") -> list[str]:
    """The documents of ``source``: split ``split`` of a ``slimgpt.assets.text_corpus`` name, or the given
    non-empty list of strings (then ``split`` is not used). ``what`` names the argument in the error."""
    if isinstance(source, str):
        from .assets import text_corpus  # lazy: the asset layer pulls in optional readers

        return text_corpus(source, split)
    docs = list(source) if isinstance(source, Sequence) else None
    if docs and all(isinstance(d, str) for d in docs):
        return docs
    if docs is None:
        got = type(source).__name__
    elif not docs:
        got = "an empty list"
    else:
        got = f"a list holding {type(next(d for d in docs if not isinstance(d, str))).__name__}"
    raise ValueError(f"{what} must be a slimgpt.assets.text_corpus name or a non-empty list of strings, got {got}")


def tokenize_stream(tokenizer, docs: list[str], max_tokens: int | None = None) -> torch.LongTensor:
    """Joins ``docs`` with ``"\\n\\n"`` and tokenizes once without special tokens (no BOS/EOS) -> LongTensor[T]
    (the first ``max_tokens`` tokens if given)."""
    ids = tokenizer(DOC_SEPARATOR.join(docs), add_special_tokens=False, verbose=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)  # [T]
    return stream if max_tokens is None else stream[:max_tokens]


def _describe(source: str | Sequence[str]) -> str:
    """A short name of ``source`` for error messages."""
    return f"'{source}'" if isinstance(source, str) else f"({len(source)} documents)"
