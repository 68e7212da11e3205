"""Checks and helpers shared by the evaluation stages (perplexity, zero-shot)."""

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fails clearly when the tokenizer can emit ids the model has no embedding row for.

    A model may have *more* rows than the tokenizer has tokens (embeddings padded to a multiple of 64/128,
    as in Qwen2.5), so only ``len(tokenizer) > rows`` is an error: that pairing would index out of range
    (or silently score the wrong tokens) in the middle of an evaluation.
    """
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
            "this tokenizer does not belong to this model (pass the tokenizer returned with the model)"
        )


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (inputs are moved there)."""
    return next(model.parameters()).device
