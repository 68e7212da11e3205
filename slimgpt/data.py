"""``calibration_data``: random token windows from a corpus' train split (the paper's calibration protocol)."""

from __future__ import annotations

from typing import Sequence

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
    documents = _documents(source)
    ids = tokenizer(DOC_SEPARATOR.join(documents), add_special_tokens=False, verbose=False)["input_ids"]
    tokens = torch.tensor(ids, dtype=torch.long)  # [total_tokens]
    if tokens.numel() < seq_len:
        raise ValueError(f"calibration source {_describe(source)} has {tokens.numel()} tokens, fewer than "
                         f"seq_len={seq_len}; use a larger corpus or a shorter seq_len")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (num_samples,), generator=generator)  # [n]
    offsets = torch.arange(seq_len)  # [seq_len]
    return tokens[starts[:, None] + offsets[None, :]]  # [num_samples, seq_len]


def _documents(source: str | Sequence[str]) -> list[str]:
    """The documents of ``source``: a corpus name's train split, or the given list of strings."""
    if isinstance(source, str):
        from .assets import text_corpus

        return text_corpus(source, "train")
    documents = list(source)
    if not documents or not all(isinstance(d, str) for d in documents):
        raise ValueError("calibration source must be a corpus name or a non-empty list of strings")
    return documents


def _describe(source: str | Sequence[str]) -> str:
    """A short name of ``source`` for error messages."""
    return f"'{source}'" if isinstance(source, str) else f"({len(source)} documents)"
