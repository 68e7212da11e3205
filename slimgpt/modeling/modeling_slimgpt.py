"""SlimGPT modeling: LLaMA-family decoder layers whose widths come from the config, per layer.

A pruned model is a normal ``PreTrainedModel``: ``save_pretrained`` writes safetensors plus this file and
``configuration_slimgpt.py`` (``auto_map``), so ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` rebuilds it in a process that never imported ``slimgpt``. Only transformers and
torch are imported here for that reason.

Query heads may be pruned one at a time under GQA; each kept query head then reads the key-value head given
by ``config.layer_kv_map[layer]`` (uneven groups). When the map is the dense layout (``h // group``) the stock
``repeat_kv`` path of transformers is used unchanged.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_slimgpt import SlimGPTConfig


def _uniform_group(kv_map: list[int], num_kv_heads: int) -> int | None:
    """Returns the GQA group size if ``kv_map`` is the dense layout ``[h // g for h]``, else None."""
    if len(kv_map) % num_kv_heads:
        return None
    group = len(kv_map) // num_kv_heads
    return group if kv_map == [h // group for h in range(len(kv_map))] else None


class SlimGPTAttention(LlamaAttention):
    """LLaMA attention with ``num_heads`` query heads and ``num_kv_heads`` key-value heads of this layer."""

    def __init__(self, config: SlimGPTConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.set_heads(config.layer_kv_map[layer_idx], config.layer_num_key_value_heads[layer_idx])
        hidden, hd = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * hd, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * hd, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * hd, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * hd, hidden, bias=config.o_proj_bias)

    def set_heads(self, kv_map: list[int], num_kv_heads: int) -> None:
        """Sets the head layout (used at construction and by pruning surgery)."""
        self.kv_map = list(kv_map)
        self.num_heads = len(kv_map)
        self.num_kv_heads = num_kv_heads
        group = _uniform_group(list(kv_map), num_kv_heads)
        # With an uneven map, k/v are expanded by index and the attention kernels see groups of 1.
        self.num_key_value_groups = group if group is not None else 1
        self.uneven_groups = group is None

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cache = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        # [batch, heads, seq, head_dim]
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        if self.uneven_groups:  # [batch, kv_heads, seq, hd] -> [batch, heads, seq, hd]
            index = torch.as_tensor(self.kv_map, device=key_states.device)
            key_states = key_states.index_select(1, index)
            value_states = value_states.index_select(1, index)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [batch, seq, heads * head_dim]
        return self.o_proj(attn_output), attn_weights


class SlimGPTMLP(LlamaMLP):
    """SwiGLU MLP with this layer's FFN width."""

    def __init__(self, config: SlimGPTConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.layer_intermediate_sizes[layer_idx]
        width = self.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, width, bias=config.mlp_bias)
        self.up_proj = nn.Linear(self.hidden_size, width, bias=config.mlp_bias)
        self.down_proj = nn.Linear(width, self.hidden_size, bias=config.down_proj_bias)
        self.act_fn = ACT2FN[config.hidden_act]


class SlimGPTDecoderLayer(LlamaDecoderLayer):
    """The LLaMA decoder layer (same forward) built from this layer's attention and MLP widths."""

    def __init__(self, config: SlimGPTConfig, layer_idx: int):
        GradientCheckpointingLayer.__init__(self)
        self.hidden_size = config.hidden_size
        self.self_attn = SlimGPTAttention(config=config, layer_idx=layer_idx)
        self.mlp = SlimGPTMLP(config, layer_idx)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class SlimGPTPreTrainedModel(LlamaPreTrainedModel):
    config_class = SlimGPTConfig
    config: SlimGPTConfig
    _no_split_modules = ["SlimGPTDecoderLayer"]
    _can_record_outputs = {"hidden_states": SlimGPTDecoderLayer, "attentions": SlimGPTAttention}


class SlimGPTModel(SlimGPTPreTrainedModel, LlamaModel):
    def __init__(self, config: SlimGPTConfig):
        SlimGPTPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([SlimGPTDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class SlimGPTForCausalLM(SlimGPTPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: SlimGPTConfig):
        SlimGPTPreTrainedModel.__init__(self, config)
        self.model = SlimGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["SlimGPTForCausalLM", "SlimGPTModel", "SlimGPTPreTrainedModel"]
