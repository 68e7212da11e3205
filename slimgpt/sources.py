"""Where a model comes from: ``load_model(name)`` gives a ``SlimGPTForCausalLM`` and its tokenizer.

A name is, in this order:

- ``tiny:<family>[?key=value,...]``: a tiny random model built in memory (no files, deterministic), with
  a byte-level tokenizer. ``family`` is ``llama`` (GQA) or ``qwen2`` (q/k/v biases); the optional keys are
  the fields of :class:`TinySpec` (``num_layers``, ``hidden``, ``heads``, ``kv_heads``, ``ffn``, ``seed``,
  ``tie_word_embeddings``), e.g. ``tiny:qwen2?num_layers=2,seed=1``. The name alone fixes the weights.
  For smoke runs and tests; its numbers mean nothing.
- a known asset name (``smollm2-135m``, ``qwen2.5-0.5b``), prepared offline into the cache on first use;
- a local model directory (a dense llama/mistral/qwen2 model or a saved pruned SlimGPT model);
- a Hugging Face hub id (needs hub access).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .assets.catalog import CATALOG, UnknownAssetError
from .modeling import SlimGPTForCausalLM, as_slim

TINY_PREFIX = "tiny:"
TINY_FAMILIES = ("llama", "qwen2")
TINY_VOCAB = 259  # 256 bytes + <s>, </s>, <pad>


def load_model(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[SlimGPTForCausalLM, "PreTrainedTokenizerBase"]:  # noqa: F821
    """Loads a model and its tokenizer; returns ``(SlimGPTForCausalLM in eval mode, tokenizer)``.

    ``name_or_path`` is a tiny model name, an asset name, a local directory or a hub id (see the module
    docstring). Dense models are converted with ``slimgpt.as_slim`` (same weights, same outputs). The
    tokenizer gets ``pad_token = eos_token`` when it has no pad token.
    """
    name = str(name_or_path)
    if name.startswith(TINY_PREFIX):
        model = as_slim(TinySpec.parse(name).build()).to(device=device, dtype=dtype)
        return model.eval(), tiny_tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        known = [n for n, s in sorted(CATALOG.items()) if s.kind == "model"] + [TINY_PREFIX + f for f in TINY_FAMILIES]
        raise OSError(f"cannot load model '{name}': not a known model ({', '.join(known)}), not a local "
                      f"directory, and loading it as a hub id failed: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return as_slim(model).to(device).eval(), tokenizer


def model_config(name_or_path: str | Path):
    """The Hugging Face config of a model ``load_model`` accepts, without loading its weights."""
    name = str(name_or_path)
    if name.startswith(TINY_PREFIX):
        return TinySpec.parse(name).build().config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(_resolve(name))


def _resolve(name: str) -> str:
    """The directory or hub id to load: asset names become their prepared cache directory."""
    spec = CATALOG.get(name)
    if spec is not None:
        if spec.kind != "model":
            raise UnknownAssetError(f"asset '{name}' is a {spec.kind}, not a model")
        from .assets import model_dir

        return str(model_dir(name))
    return name


# ----------------------------------------------------------------------------------------------- tiny models


@dataclass(frozen=True)
class TinySpec:
    """The sizes of a tiny random model (defaults: 4 layers, hidden 64, 4 query heads in 2 GQA groups,
    96 FFN channels); ``seed`` fixes the weights."""

    family: str = "llama"
    num_layers: int = 4
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 96
    seed: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.family not in TINY_FAMILIES:
            raise ValueError(f"unknown tiny model family '{self.family}'; choose 'llama' or 'qwen2'")
        for key in ("num_layers", "hidden", "heads", "kv_heads", "ffn"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"tiny model {key}={value!r} must be a positive integer")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"tiny model hidden={self.hidden}, heads={self.heads}, kv_heads={self.kv_heads}: hidden "
                             "must be a multiple of heads, and heads a multiple of kv_heads")

    @classmethod
    def parse(cls, name: str) -> TinySpec:
        """``tiny:<family>[?key=value,...]`` (keys: the fields other than ``family``) as a ``TinySpec``."""
        family, _, options = name.removeprefix(TINY_PREFIX).partition("?")
        types = {f.name: type(f.default) for f in fields(cls) if f.name != "family"}
        values = {}
        for item in filter(None, options.split(",")):
            key, equals, value = item.partition("=")
            if key not in types or not equals:
                raise ValueError(f"tiny model name '{name}': '{item}' is not key=value with a key of {list(types)}")
            values[key] = _parse_value(name, key, value, types[key])
        return cls(family, **values)

    @property
    def name(self) -> str:
        """The model name that builds this spec (fields left at their default are not written)."""
        changed = [f"{f.name}={str(getattr(self, f.name)).lower()}" for f in fields(self)
                   if f.name != "family" and getattr(self, f.name) != f.default]
        return TINY_PREFIX + self.family + ("?" + ",".join(changed) if changed else "")

    def build(self) -> "LlamaForCausalLM | Qwen2ForCausalLM":  # noqa: F821
        """The dense Hugging Face model, randomly initialised from ``seed`` (the caller's RNG state is left
        alone), fp32, eval mode; norms drawn from U(0.5, 1.5) and Qwen2 q/k/v biases from N(0, 0.1²) so that
        they take part in every test like trained ones would."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._architecture()
            with torch.no_grad():
                if self.family == "qwen2":
                    for layer in model.model.layers:
                        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                            proj.bias.normal_(0, 0.1)
                for name, param in model.named_parameters():
                    if "norm" in name:
                        param.uniform_(0.5, 1.5)
        return model.eval()

    def _architecture(self):
        from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

        config = dict(
            vocab_size=TINY_VOCAB, hidden_size=self.hidden, intermediate_size=self.ffn,
            num_hidden_layers=self.num_layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=512, bos_token_id=256, eos_token_id=257, pad_token_id=258,
            tie_word_embeddings=self.tie_word_embeddings,
        )  # fmt: skip
        if self.family == "qwen2":
            return Qwen2ForCausalLM(Qwen2Config(**config))
        return LlamaForCausalLM(LlamaConfig(**config))


def _parse_value(name: str, key: str, text: str, kind: type) -> int | bool:
    """One value of a tiny model name: an integer, or ``true``/``false`` for a boolean field."""
    if kind is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind is int and text.lstrip("-").isdigit():
        return int(text)
    allowed = "true or false" if kind is bool else "an integer"
    raise ValueError(f"tiny model name '{name}': {key}={text!r} must be {allowed}")


def tiny_model(family: str = "llama", **sizes: int | bool) -> "LlamaForCausalLM | Qwen2ForCausalLM":  # noqa: F821
    """``TinySpec(family, **sizes).build()``: a deterministic random dense model of ``family`` in fp32."""
    return TinySpec(family, **sizes).build()


def tiny_tokenizer() -> "PreTrainedTokenizerFast":  # noqa: F821
    """A byte-level tokenizer: every UTF-8 byte is one token (ids 0..255), then BOS=256, EOS=257, PAD=258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (the alphabet ``pre_tokenizers.ByteLevel`` uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


__all__ = ["TINY_FAMILIES", "TINY_VOCAB", "TinySpec", "load_model", "tiny_model", "tiny_tokenizer"]
