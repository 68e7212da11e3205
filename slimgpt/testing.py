"""Tiny, deterministic models and a tokenizer that need no download: for tests, smoke runs and ``debug=``.

``tiny_model`` builds the dense Hugging Face model of a family (``llama`` with GQA, ``qwen2`` with q/k/v
biases); ``tiny_tokenizer`` is a byte-level tokenizer (256 byte tokens + BOS/EOS/PAD) built in memory.
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TINY_VOCAB = 259  # 256 bytes + <s>, </s>, <pad>


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: every UTF-8 byte is one token (ids 0..255), then BOS=256, EOS=257, PAD=258."""
    byte_vocab = {tok: i for i, tok in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_order))}
    byte_vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    tok = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512
    )


def _byte_order(char: str) -> int:
    """Orders the ByteLevel alphabet by the byte each printable character stands for."""
    table = {v: k for k, v in _bytes_to_unicode().items()}
    return table[char]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (the one ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def tiny_model(
    family: str = "llama",
    *,
    num_layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 96,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> LlamaForCausalLM | Qwen2ForCausalLM:
    """A randomly initialised dense model of ``family`` (deterministic for a given ``seed``), in fp32."""
    common = dict(
        vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=num_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        with torch.no_grad():  # non-zero biases so that bias handling is exercised
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    else:
        raise ValueError(f"unknown tiny model family '{family}'; choose 'llama' or 'qwen2'")
    with torch.no_grad():  # non-trivial norms, like a trained model
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def replay_method(removed_per_block: list[list[int]]):
    """A pruning method that removes the given units block after block, with no compensation — "plain
    removal" of the units another method chose (for A/B tests of compensation)."""
    from .pruning import Method, Selection

    class Replay(Method):
        name = "replay"
        needs_inputs = False

        def __init__(self):
            self.log = iter(removed_per_block)

        def select(self, block, stats, num_remove):
            return Selection(next(self.log))

    return Replay()
