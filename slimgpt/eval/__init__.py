"""Evaluation stages: WikiText2-style perplexity and lm-eval zero-shot accuracy.

    perplexity(model, tokenizer, corpus, seq_len=128, split="test", batch_size=8, max_tokens=None) -> float
    perplexity_stats(...same...) -> dict  (ppl with its token accounting, for results files)
    zeroshot(model, tokenizer, tasks, limit=None, batch_size=8, metrics=None, source="local") -> dict

``zeroshot`` is imported on first use (lm-eval is a heavy import).
"""

from .perplexity import perplexity, perplexity_stats

_LAZY = {"zeroshot": "slimgpt.eval.zeroshot", "DEFAULT_METRICS": "slimgpt.eval.zeroshot"}


def __getattr__(name: str):
    """Imports the zero-shot stage (and lm-eval) only when it is asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimgpt.eval' has no attribute '{name}'")


__all__ = ["perplexity", "perplexity_stats", *_LAZY]
