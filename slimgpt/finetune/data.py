"""Training examples for LoRA recovery: Alpaca prompts with response-only labels, or plain-text windows.

The prompt template is the Alpaca one that LLM-Pruner's ``post_training.py`` (and SlimGPT's recovery, which
follows it) uses: a preamble, ``### Instruction:``, an optional ``### Input:`` and ``### Response:``.

An example is a pair of 1-D id lists (``input_ids``, ``labels``) of equal length <= ``max_length``; a label of
``IGNORE_INDEX`` (-100) takes no part in the loss. Batches are right-padded by :func:`collate`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One training sequence: ``input_ids`` and ``labels`` (same length; -100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @cached_property
    def num_targets(self) -> int:
        """Tokens that carry a loss (next-token targets are ``labels[1:]``, the first label never counts)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def alpaca_prompt(record: dict) -> str:
    """The user part of the Alpaca template for ``record`` (keys instruction, optional input), ending in
    ``### Response:\\n``; the response text follows it directly."""
    text = record.get("input") or ""
    template = PROMPT_WITH_INPUT if text.strip() else PROMPT_NO_INPUT
    return template.format(instruction=record["instruction"], input=text)


def instruction_example(
    record: dict, tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_inputs: bool = False
) -> Example:
    """Tokenizes one Alpaca record as ``prompt + output + EOS`` truncated to ``max_length`` tokens.

    Prompt and response are tokenized separately and concatenated, so the prompt/response boundary is exact;
    the prompt uses the tokenizer's special tokens (e.g. LLaMA's BOS), the response none. EOS is appended
    only when it fits (LLM-Pruner's rule). Unless ``train_on_inputs``, the prompt's labels are -100.
    A record with an empty instruction and input is plain text: ``output`` alone, every token a target.
    """
    if not record["instruction"].strip() and not (record.get("input") or "").strip():
        prompt = ""  # plain text in Alpaca form (e.g. instruction_data("wiki")): no template, loss on all of it
        train_on_inputs = True
    else:
        prompt = alpaca_prompt(record)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + response_ids)[:max_length]
    if len(ids) < max_length and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    masked = 0 if train_on_inputs else min(len(prompt_ids), len(ids))
    return Example(input_ids=ids, labels=[IGNORE_INDEX] * masked + ids[masked:])


def text_examples(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    """Plain-text LM recovery: documents joined by EOS, cut into windows of ``max_length`` tokens (a last
    shorter window is kept when it has at least 2 tokens); every token is a target."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
    windows = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    return [Example(input_ids=w, labels=list(w)) for w in windows if len(w) >= 2]


def build_examples(
    data: Sequence[dict] | Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    train_on_inputs: bool = False,
    *,
    name: str = "data",
) -> tuple[list[Example], int]:
    """Turns Alpaca records (dicts) or plain-text documents (strs) into examples.

    Returns ``(examples, dropped)``: examples with no target token (a prompt that fills ``max_length``) are
    dropped and counted. ``name`` labels errors ("train", "eval").
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    if isinstance(data, (str, bytes)) or len(data) == 0:
        raise ValueError(f"{name} must be a non-empty list of Alpaca dicts or of strings, got {_describe(data)}")
    if all(isinstance(item, str) for item in data):
        examples = text_examples(data, tokenizer, max_length)
    elif all(isinstance(item, dict) for item in data):
        for index, record in enumerate(data):
            _check_record(record, index, name)
        examples = [instruction_example(r, tokenizer, max_length, train_on_inputs) for r in data]
    else:
        kinds = sorted({type(item).__name__ for item in data})
        raise ValueError(f"{name} mixes item types {kinds}; use all Alpaca dicts or all strings")
    kept = [ex for ex in examples if ex.num_targets > 0]
    if not kept:
        raise ValueError(f"{name} has no example with a target token within max_length={max_length}")
    return kept, len(examples) - len(kept)


def _check_record(record: dict, index: int, name: str) -> None:
    """Raises if an Alpaca record lacks a string ``instruction``/``output`` or has a non-string ``input``."""
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise ValueError(
                f"{name}[{index}] needs a string '{key}' (Alpaca keys: instruction, input, output), "
                f"got keys {sorted(record)}"
            )
    if not isinstance(record.get("input", ""), (str, type(None))):
        raise ValueError(f"{name}[{index}]['input'] must be a string, got {type(record['input']).__name__}")


def _describe(data) -> str:
    """A short description of a bad ``data`` argument for error messages."""
    return f"an empty {type(data).__name__}" if not isinstance(data, (str, bytes)) else "a single string"


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads ``examples`` to their longest length.

    Returns ``input_ids`` LongTensor[batch, seq], ``attention_mask`` LongTensor[batch, seq] (1 = real token)
    and ``labels`` LongTensor[batch, seq] (-100 on padding and masked prompt tokens).
    """
    length = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


__all__ = [
    "IGNORE_INDEX",
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "Example",
    "alpaca_prompt",
    "build_examples",
    "collate",
    "instruction_example",
    "text_examples",
]
