"""Tokenizer metadata for GGUF, read from a Hugging Face fast tokenizer's ``tokenizer.json``.

Two families are supported, as llama.cpp names them:
    ``gpt2``: byte-level BPE (SmolLM, Qwen2, LLaMA 3, GPT-2): tokens, merges and the pre-tokenizer's name;
    ``llama``: SentencePiece-style BPE with byte fallback (LLaMA 1/2, TinyLlama, Mistral): tokens with scores
    (merge rank: llama.cpp merges the pair whose result scores highest) and ``<0xXX>`` byte tokens.
Special token ids, whether BOS/EOS are added, and the chat template come along. A pre-tokenizer that llama.cpp
has no name for is refused rather than written as another one (tokenization would silently differ).
"""

from __future__ import annotations

import json
import re

import gguf

#: HF pre-tokenizer split patterns -> llama.cpp's name for the same pre-tokenizer.
_SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class UnsupportedTokenizerError(ValueError):
    """A tokenizer whose behaviour llama.cpp cannot reproduce from GGUF metadata."""


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> str:
    """Writes the tokenizer of ``tokenizer`` (a HF fast tokenizer) for a model of ``vocab_size`` embedding rows.

    Ids the tokenizer does not use (embedding rows past its vocabulary) become unused ``[PAD<id>]`` tokens.
    Returns the GGUF tokenizer model name (``gpt2`` or ``llama``).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedTokenizerError("only fast (tokenizer.json) tokenizers can be exported; got a slow one")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "BPE":
        raise UnsupportedTokenizerError(f"tokenizer model '{model['type']}' is not supported; only BPE "
                                        "(byte-level, or SentencePiece-style with byte_fallback)")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedTokenizerError(f"the tokenizer has ids up to {max(vocab.values())} but the model only "
                                        f"{vocab_size} embedding rows")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokens, types = _token_table(tokenizer, vocab, vocab_size)
    if model.get("byte_fallback"):
        kind = "llama"
        writer.add_tokenizer_model(kind)
        writer.add_token_scores(_merge_rank_scores(tokens, merges))
        types = [gguf.TokenType.BYTE if _BYTE_TOKEN.fullmatch(t) else k for t, k in zip(tokens, types)]
        writer.add_add_space_prefix(_prepends_space(spec))
    else:
        kind = "gpt2"
        writer.add_tokenizer_model(kind)
        writer.add_tokenizer_pre(_pre_tokenizer_name(spec["pre_tokenizer"], has_merges=bool(merges)))
        writer.add_token_merges(merges or [_inert_merge(tokenizer)])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    _add_special_tokens(writer, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    return kind


def _token_table(tokenizer, vocab: dict[str, int], vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and GGUF token types for ids ``0..vocab_size-1``."""
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _inert_merge(tokenizer) -> str:
    """A merge that can never apply, for a byte vocabulary without merges (llama.cpp requires at least one).

    BPE starts from single characters, so a pair of two multi-character special tokens never forms.
    """
    specials = [t for t in tokenizer.all_special_tokens if len(t) > 1]
    if len(specials) < 2:
        raise UnsupportedTokenizerError("a byte-level BPE tokenizer without merges needs two special tokens")
    return f"{specials[0]} {specials[1]}"


def _merge_rank_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece-style scores: a token made by merge ``r`` scores ``-r`` (earlier merges win), others 0."""
    rank = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def _prepends_space(spec: dict) -> bool:
    """Whether the tokenizer adds "▁" before the text (SentencePiece's dummy prefix)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or ('"Metaspace"' in text and '"prepend_scheme": "never"' not in text)


def _pre_tokenizer_name(pre: dict | None, has_merges: bool) -> str:
    """llama.cpp's name of the byte-level pre-tokenizer ``pre`` (tokenizer.json), or an error."""
    steps = pre["pretokenizers"] if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [step["type"] for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["ByteLevel"] and not has_merges:
        return "gpt-2"  # every byte is a token: word splitting cannot change the result
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0]["pattern"].get("Regex")
        if pattern in _SPLIT_PATTERNS:
            return _SPLIT_PATTERNS[pattern]
    raise UnsupportedTokenizerError(
        f"pre-tokenizer {json.dumps(pre)[:300]} has no llama.cpp equivalent known to slimgpt; supported: GPT-2 "
        "byte-level, SmolLM (digits + byte-level), Qwen2 and LLaMA-3 split patterns")


def _add_special_tokens(writer: gguf.GGUFWriter, tokenizer) -> None:
    """BOS/EOS/UNK/PAD ids and whether encoding adds BOS/EOS (read from what the tokenizer does)."""
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
