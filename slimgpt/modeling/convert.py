"""Conversion of a dense LLaMA-family model into the SlimGPT architecture (same weights, same outputs)."""

import torch
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from .configuration_slimgpt import SlimGPTConfig
from .modeling_slimgpt import SlimGPTForCausalLM

#: model_type -> why it maps onto the LLaMA block (pre-norm RMSNorm, RoPE, SwiGLU, GQA).
SUPPORTED_MODEL_TYPES = {
    "llama": "LLaMA 1/2/3, SmolLM, TinyLlama",
    "mistral": "Mistral without a sliding window shorter than the sequence",
    "qwen2": "Qwen2 / Qwen2.5 (q/k/v biases), sliding window off",
    "slimgpt": "an already converted or pruned model",
}
_DROPPED_KEYS = (
    "model_type", "architectures", "auto_map", "transformers_version", "layer_types", "use_sliding_window",
    "sliding_window", "max_window_layers", "quantization_config", "dtype", "torch_dtype",
)


def slim_config(config) -> SlimGPTConfig:
    """Builds the SlimGPT config of a dense LLaMA-family ``config`` (raises for unsupported families)."""
    model_type = getattr(config, "model_type", None)
    if model_type == "slimgpt":
        return config
    if model_type not in SUPPORTED_MODEL_TYPES:
        families = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODEL_TYPES.items())
        raise ValueError(f"unsupported architecture '{model_type}'; supported families: {families}")
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ValueError("qwen2 with use_sliding_window=True is not supported (its layers mix attention masks)")
    values = {k: v for k, v in config.to_dict().items() if k not in _DROPPED_KEYS}
    if model_type == "qwen2":  # Qwen2: biases on q/k/v only
        values.update(attention_bias=True, o_proj_bias=False, mlp_bias=False)
    values.setdefault("head_dim", config.hidden_size // config.num_attention_heads)
    slim = SlimGPTConfig(**values, source_model_type=model_type)
    slim._attn_implementation = config._attn_implementation
    return slim


def as_slim(model: PreTrainedModel) -> SlimGPTForCausalLM:
    """Returns ``model`` as a ``SlimGPTForCausalLM`` sharing its weight tensors (no copy).

    The result computes the same function: a test checks equal logits. A SlimGPT model is returned as is.
    """
    if isinstance(model, SlimGPTForCausalLM):
        return model
    config = slim_config(model.config)
    with torch.device("meta"):
        slim = SlimGPTForCausalLM(config)
    slim.load_state_dict(model.state_dict(), assign=True, strict=True)
    device = model.get_input_embeddings().weight.device
    slim.model.rotary_emb = LlamaRotaryEmbedding(config=config).to(device)
    slim.tie_weights()
    slim.generation_config = model.generation_config
    slim.name_or_path = model.name_or_path
    return slim.eval() if not model.training else slim
