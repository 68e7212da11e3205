"""Configuration of a (possibly pruned) SlimGPT model: a LLaMA-family decoder whose layers may each have
their own number of query heads, key-value heads and FFN width.

This file ships inside every saved checkpoint (``auto_map``) and therefore imports only transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.llama.configuration_llama import LlamaConfig


@strict
class SlimGPTConfig(LlamaConfig):
    """``LlamaConfig`` plus the per-layer architecture that structured pruning leaves behind.

    Per-layer fields (all lists of length ``num_hidden_layers``; ``None`` means "dense, as the global value"):
        layer_num_heads[i]: query heads kept in layer i.
        layer_kv_map[i]: for each kept query head, the index of the key-value head it reads (values cover
            ``0 .. layer_num_key_value_heads[i]-1``; GQA groups may become uneven after query-head pruning).
        layer_num_key_value_heads[i]: key-value heads kept in layer i.
        layer_intermediate_sizes[i]: FFN channels kept in layer i.
    Bias flags (to host Qwen2-style q/k/v biases and FLAP's bias compensation):
        attention_bias: bias on q/k/v; o_proj_bias: bias on o_proj; down_proj_bias: bias on down_proj
        (``mlp_bias`` keeps its LLaMA meaning for gate/up).
    """

    model_type = "slimgpt"

    layer_num_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_kv_map: list[list[int]] | None = None
    layer_intermediate_sizes: list[int] | None = None
    o_proj_bias: bool | None = None
    down_proj_bias: bool | None = None
    source_model_type: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        n = self.num_hidden_layers
        group = self.num_attention_heads // self.num_key_value_heads
        if self.layer_num_heads is None:
            self.layer_num_heads = [self.num_attention_heads] * n
        if self.layer_kv_map is None:
            self.layer_kv_map = [[h // group for h in range(self.num_attention_heads)] for _ in range(n)]
        if self.layer_num_key_value_heads is None:
            self.layer_num_key_value_heads = [max(m) + 1 for m in self.layer_kv_map]
        if self.layer_intermediate_sizes is None:
            self.layer_intermediate_sizes = [self.intermediate_size] * n
        if self.o_proj_bias is None:
            self.o_proj_bias = self.attention_bias
        if self.down_proj_bias is None:
            self.down_proj_bias = self.mlp_bias

    def is_pruned(self) -> bool:
        """Whether any layer is narrower than the dense architecture the config describes."""
        return (any(h != self.num_attention_heads for h in self.layer_num_heads)
                or any(k != self.num_key_value_heads for k in self.layer_num_key_value_heads)
                or any(f != self.intermediate_size for f in self.layer_intermediate_sizes))

    def validate_architecture(self):
        """Checks that the per-layer lists agree with each other (a stale list means a wrong model)."""
        n = self.num_hidden_layers
        for name in ("layer_num_heads", "layer_num_key_value_heads", "layer_kv_map", "layer_intermediate_sizes"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries, expected num_hidden_layers={n}")
        if self.layer_kv_map is None:
            return
        for i, (heads, kv_heads, kv_map) in enumerate(
            zip(self.layer_num_heads, self.layer_num_key_value_heads, self.layer_kv_map)
        ):
            if heads < 1 or len(kv_map) != heads:
                raise ValueError(f"layer {i}: {heads} query heads but a kv map of length {len(kv_map)}")
            if sorted(set(kv_map)) != list(range(kv_heads)):
                raise ValueError(f"layer {i}: kv map {kv_map} must use exactly kv heads 0..{kv_heads - 1}")
        if any(width < 1 for width in self.layer_intermediate_sizes):
            raise ValueError(f"every layer needs at least one FFN channel, got {self.layer_intermediate_sizes}")


__all__ = ["SlimGPTConfig"]
