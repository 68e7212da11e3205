"""``to_gguf``: a dense or pruned ``SlimGPTForCausalLM`` as a GGUF file that llama.cpp runs.

The architecture written is llama.cpp's ``deci`` (made for NVIDIA's Nemotron-NAS models), the one whose
loader reads *per-layer* ``attention.head_count``, ``attention.head_count_kv`` and ``feed_forward_length``
(INT32 arrays) and builds each layer at its own width; its graph is the LLaMA block with optional q/k/v,
o_proj and FFN biases. ``key_length``/``value_length`` are written explicitly (llama.cpp would otherwise take
``n_embd / head_count[0]``). Query and key rows are reordered per head from the Hugging Face rotate-half
RoPE layout to llama.cpp's interleaved pairs (q with the layer's query-head count, k with its kv count).

Layouts llama.cpp cannot express are rewritten exactly or refused (see :mod:`slimgpt.export.layout`).
F32/F16/BF16 are written directly; Q8_0/Q4_K_M/Q5_K_M by llama.cpp's own quantizer from an F32 file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from ..io import atomic_file
from ..modeling import SlimGPTForCausalLM, as_slim
from .layout import LayerLayout, kv_cache_mib, plan_layer
from .tokenizer import add_tokenizer

#: Types written by slimgpt itself (numpy dtype or GGML type of 2-D weights).
DIRECT_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "bf16": gguf.LlamaFileType.MOSTLY_BF16}
#: Types produced by llama.cpp's quantizer.
QUANTIZED_TYPES = ("q8_0", "q4_k_m", "q5_k_m")
GGUF_TYPES = (*DIRECT_TYPES, *QUANTIZED_TYPES)
ARCH = "deci"


@dataclass(frozen=True)
class ExportSummary:
    """What was written: the file, its type, each layer's written layout and the KV-cache cost."""

    path: Path
    dtype: str
    layouts: tuple[LayerLayout, ...]
    source_kv_heads: tuple[int, ...]
    head_dim: int
    file_bytes: int

    @property
    def kv_heads(self) -> list[int]:
        return [len(layout.kv_heads) for layout in self.layouts]

    def describe(self) -> str:
        """One paragraph for the console: size, written heads and the KV cache at 4k context (F16)."""
        written = kv_cache_mib(self.kv_heads, self.head_dim)
        source = kv_cache_mib(list(self.source_kv_heads), self.head_dim)
        q_heads = sum(len(layout.q_heads) for layout in self.layouts)
        dead = sum(h is None for layout in self.layouts for h in layout.q_heads)
        text = (f"wrote {self.path} ({self.dtype}, {self.file_bytes / 2**20:.1f} MiB): {len(self.layouts)} layers, "
                f"{q_heads} query heads ({dead} zero padding), {sum(self.kv_heads)} kv heads; "
                f"KV cache at 4096 tokens {written:.1f} MiB (F16)")
        if sum(self.kv_heads) != sum(self.source_kv_heads):
            text += f", {written - source:+.1f} MiB for the regrouped kv heads (pruned model: {source:.1f} MiB)"
        return text


def plan_layouts(model: SlimGPTForCausalLM, *, regroup: bool = False, pad_ffn: int = 1) -> list[LayerLayout]:
    """The written layout of every layer (raises ``UnsupportedLayoutError`` naming the first bad layer)."""
    return [
        plan_layer(i, list(layer.self_attn.kv_map), layer.self_attn.num_kv_heads, layer.mlp.intermediate_size,
                   regroup=regroup, pad_ffn=pad_ffn)
        for i, layer in enumerate(model.model.layers)
    ]


def to_gguf(
    model, tokenizer, path: str | os.PathLike, dtype: str = "f16", *, regroup: bool = False, pad_ffn: int = 1,
    threads: int = 1, name: str | None = None,
) -> ExportSummary:
    """Writes ``model`` (dense or pruned, LLaMA or Qwen2 family) and ``tokenizer`` as a GGUF file.

    Args:
        model: a ``SlimGPTForCausalLM`` (or a dense LLaMA-family HF model, converted with ``as_slim``).
        tokenizer: its Hugging Face fast tokenizer.
        path: the ``.gguf`` file to write (atomically: complete or absent).
        dtype: one of ``GGUF_TYPES``; 1-D tensors (norms, biases) stay F32.
        regroup: write uneven query groups exactly by adding kv-head copies and zero query heads (else refused).
        pad_ffn: round every FFN width up to a multiple of this with zero channels (exact; 32 suits llama.cpp's
            F16/Q8_0 kernels, 256 its k-quants).
        threads: threads for llama.cpp's quantizer.
        name: ``general.name`` (default: the model's name or path).
    Returns:
        an :class:`ExportSummary` (``describe()`` prints the KV-cache cost of any regrouping).
    """
    if dtype not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type '{dtype}'; choose one of {', '.join(GGUF_TYPES)}")
    model = as_slim(model)
    check_supported(model.config)
    layouts = plan_layouts(model, regroup=regroup, pad_ffn=pad_ffn)
    path = Path(path)
    label = name or Path(str(model.name_or_path or "slimgpt")).name
    with atomic_file(path) as tmp:
        if dtype in DIRECT_TYPES:
            _write(model, tokenizer, layouts, tmp, dtype, label)
        else:
            from .llamacpp import quantize

            with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
                f32 = Path(scratch) / "f32.gguf"
                _write(model, tokenizer, layouts, f32, "f32", label)
                quantize(f32, tmp, dtype, threads=threads)
    source_kv = tuple(layer.self_attn.num_kv_heads for layer in model.model.layers)
    return ExportSummary(path, dtype, tuple(layouts), source_kv, model.config.head_dim, path.stat().st_size)


def check_supported(config) -> None:
    """Refuses configs whose computation the deci graph does not reproduce."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type '{rope['rope_type']}' is not supported by the GGUF export (default RoPE only)")
    if config.hidden_act != "silu":
        raise ValueError(f"hidden_act '{config.hidden_act}' is not supported by llama.cpp's deci graph (silu only)")


def _write(model: SlimGPTForCausalLM, tokenizer, layouts: list[LayerLayout], path: Path, dtype: str,
           name: str) -> None:
    """Writes the GGUF file of ``model`` with every 2-D weight stored as ``dtype`` (f32 | f16 | bf16)."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), ARCH)
    _add_hparams(writer, config, layouts, name)
    writer.add_file_type(DIRECT_TYPES[dtype])
    add_tokenizer(writer, tokenizer, config.vocab_size)
    for tensor_name, tensor in _tensors(model, layouts):
        _add_tensor(writer, tensor_name, tensor, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_hparams(writer: gguf.GGUFWriter, config, layouts: list[LayerLayout], name: str) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length([layout.ffn for layout in layouts])
    writer.add_head_count([len(layout.q_heads) for layout in layouts])
    writer.add_head_count_kv([len(layout.kv_heads) for layout in layouts])
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _add_tensor(writer: gguf.GGUFWriter, name: str, tensor: torch.Tensor, dtype: str) -> None:
    """Adds ``tensor`` ([out, in] or [n]); 1-D tensors are always F32."""
    data = tensor.detach().to(torch.float32).cpu().numpy()
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data)
    elif dtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16),
                          raw_dtype=gguf.GGMLQuantizationType.BF16)


def _tensors(model: SlimGPTForCausalLM, layouts: list[LayerLayout]):
    """Yields ``(gguf name, tensor)`` in file order; weights are ``[out_features, in_features]``."""
    yield "token_embd.weight", model.model.embed_tokens.weight
    yield "output_norm.weight", model.model.norm.weight
    if not model.config.tie_word_embeddings:
        yield "output.weight", model.lm_head.weight
    hd = model.config.head_dim
    for i, (layer, layout) in enumerate(zip(model.model.layers, layouts)):
        for suffix, tensor in _attention_tensors(layer.self_attn, layout, hd):
            yield f"blk.{i}.{suffix}", tensor
        if layout.q_heads:
            yield f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight
        yield f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight
        for suffix, tensor in _mlp_tensors(layer.mlp, layout.ffn):
            yield f"blk.{i}.{suffix}", tensor


def _attention_tensors(attn, layout: LayerLayout, hd: int):
    """q/k/v/o weights (and biases) of one layer in the written head layout, q/k in llama.cpp's RoPE order."""
    if not layout.q_heads:
        if attn.o_proj.bias is not None and bool(attn.o_proj.bias.any()):
            raise ValueError("a layer without attention heads but with a non-zero o_proj bias cannot be written "
                             "(llama.cpp's attention-free layers add nothing)")
        return
    n_q, n_kv = len(layout.q_heads), len(layout.kv_heads)
    yield "attn_q.weight", _rope_order(_heads(attn.q_proj.weight, layout.q_heads, hd), n_q)
    yield "attn_k.weight", _rope_order(_heads(attn.k_proj.weight, layout.kv_heads, hd), n_kv)
    yield "attn_v.weight", _heads(attn.v_proj.weight, layout.kv_heads, hd)
    yield "attn_output.weight", _heads(attn.o_proj.weight.T, layout.q_heads, hd).T
    if attn.q_proj.bias is not None:
        yield "attn_q.bias", _rope_order(_heads(attn.q_proj.bias, layout.q_heads, hd), n_q)
        yield "attn_k.bias", _rope_order(_heads(attn.k_proj.bias, layout.kv_heads, hd), n_kv)
        yield "attn_v.bias", _heads(attn.v_proj.bias, layout.kv_heads, hd)
    if attn.o_proj.bias is not None:
        yield "attn_output.bias", attn.o_proj.bias


def _mlp_tensors(mlp, width: int):
    """gate/up/down (and biases) padded with zero channels to ``width``."""
    yield "ffn_gate.weight", _pad_rows(mlp.gate_proj.weight, width)
    yield "ffn_up.weight", _pad_rows(mlp.up_proj.weight, width)
    yield "ffn_down.weight", _pad_rows(mlp.down_proj.weight.T, width).T
    if mlp.gate_proj.bias is not None:
        yield "ffn_gate.bias", _pad_rows(mlp.gate_proj.bias, width)
        yield "ffn_up.bias", _pad_rows(mlp.up_proj.bias, width)
    if mlp.down_proj.bias is not None:
        yield "ffn_down.bias", mlp.down_proj.bias


def _heads(tensor: torch.Tensor, heads: tuple[int | None, ...], hd: int) -> torch.Tensor:
    """Rows of ``tensor`` ([heads*hd, ...]) regrouped: block ``i`` is source head ``heads[i]`` or zeros."""
    blocks = tensor.detach().reshape(-1, hd, *tensor.shape[1:])
    zero = torch.zeros_like(blocks[0]) if len(blocks) else tensor.new_zeros(hd, *tensor.shape[1:])
    return torch.cat([blocks[h] if h is not None else zero for h in heads]) if heads else tensor[:0]


def _rope_order(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per head, rows ``[x_0..x_{d/2-1}, y_0..y_{d/2-1}]`` (rotate-half) -> ``[x_0, y_0, x_1, y_1, ...]``."""
    rest = tensor.shape[1:]
    half = tensor.shape[0] // num_heads // 2
    return tensor.reshape(num_heads, 2, half, *rest).transpose(1, 2).reshape(tensor.shape)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` ([n, ...]) followed by zero rows up to ``rows``."""
    tensor = tensor.detach()
    pad = tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])
    return torch.cat([tensor, pad])
