"""SlimGPT: layer-wise structured pruning of LLaMA-family LLMs with Optimal Brain Surgeon.

Public API (see README):
    load_model(name_or_path) -> (model, tokenizer)   # "smollm2-135m", a directory, a hub id, "tiny:llama"
    calibration_data(source, tokenizer, num_samples, seq_len, seed=0) -> LongTensor[n, seq_len]
    prune(model, calibration, ratio, schedule="log_increase", method="slimgpt", **options) -> PruneReport
    perplexity(model, tokenizer, corpus, seq_len=128, split="test") -> float
Importing ``slimgpt`` registers the ``slimgpt`` architecture with transformers' Auto classes.
"""

from . import modeling
from .modeling import SlimGPTConfig, SlimGPTForCausalLM, as_slim

__version__ = "0.1.0"

_LAZY = {
    "load_model": "slimgpt.sources",
    "calibration_data": "slimgpt.data",
    "prune": "slimgpt.pruning",
    "prune_checkpoint": "slimgpt.pruning.streaming",
    "perplexity": "slimgpt.eval.perplexity",
}


def __getattr__(name: str):
    """Imports the heavier entry points on first use (keeps ``import slimgpt`` light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimgpt' has no attribute '{name}'")


__all__ = ["SlimGPTConfig", "SlimGPTForCausalLM", "as_slim", "modeling", *_LAZY]
