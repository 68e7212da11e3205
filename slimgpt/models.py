"""``load_model``: a known offline model, a local directory or a hub id, as a ``SlimGPTForCausalLM``."""

from __future__ import annotations

from pathlib import Path

import torch

from .assets.catalog import CATALOG, UnknownAssetError
from .modeling import SlimGPTForCausalLM, as_slim


def load_model(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[SlimGPTForCausalLM, "PreTrainedTokenizerBase"]:  # noqa: F821
    """Loads a model and its tokenizer; returns ``(SlimGPTForCausalLM in eval mode, tokenizer)``.

    ``name_or_path`` is, in this order: a known asset name (``smollm2-135m``, ``qwen2.5-0.5b``; prepared
    offline into the cache on first use), a local model directory (a dense llama/mistral/qwen2 model or a
    saved pruned SlimGPT model), or a Hugging Face hub id (needs hub access). Dense models are converted
    with ``slimgpt.as_slim`` (same weights, same outputs). The tokenizer gets ``pad_token = eos_token`` when
    it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        known = ", ".join(n for n, s in sorted(CATALOG.items()) if s.kind == "model")
        raise OSError(f"cannot load model '{name_or_path}': not a known model ({known}), not a local "
                      f"directory, and loading it as a hub id failed: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return as_slim(model).to(device).eval(), tokenizer


def _resolve(name_or_path: str | Path) -> str:
    """The directory or hub id to load: asset names become their prepared cache directory."""
    name = str(name_or_path)
    spec = CATALOG.get(name)
    if spec is not None:
        if spec.kind != "model":
            raise UnknownAssetError(f"asset '{name}' is a {spec.kind}, not a model")
        from .assets import model_dir

        return str(model_dir(name))
    return name
