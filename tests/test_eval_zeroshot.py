import json
import math

import pytest

from slimgpt.eval import zeroshot as zs
from slimgpt.sources import tiny_model, tiny_tokenizer

ARC_CHOICES = {"text": ["a rock", "the sun", "a cloud", "the sea"], "label": ["A", "B", "C", "D"]}


def _doc(task: str, i: int) -> dict:
    """One synthetic document in the stock Hugging Face schema of ``task``."""
    if task == "boolq":  # google/boolq schema (answer: bool); the SuperGLUE one has label 0/1
        return {"question": f"is {i} even", "passage": f"The number {i}.", "answer": i % 2 == 0}
    if task == "piqa":
        return {"goal": f"Open jar {i}", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": i % 2}
    if task == "hellaswag":
        return {"activity_label": "Cooking", "ctx_a": "A man cuts bread.", "ctx_b": "he", "label": str(i % 4),
                "endings": ["eats it.", "sings [title] loudly.", "sleeps.", "runs away."]}
    if task == "winogrande":
        return {"sentence": "Ann gave Bob a gift because _ was kind.", "option1": "Ann", "option2": "Bob",
                "answer": str(1 + i % 2)}
    if task in ("arc_easy", "arc_challenge"):
        return {"id": str(i), "question": "What gives light?", "choices": ARC_CHOICES, "answerKey": "ABCD"[i % 4]}
    return {"id": str(i), "question_stem": "What gives light?", "choices": ARC_CHOICES, "answerKey": "ABCD"[i % 4]}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Five synthetic documents per task, written as JSONL in each task's stock schema."""
    root = tmp_path_factory.mktemp("zeroshot")
    files = {}
    for task in zs.TASKS:
        files[task] = root / f"{task}.jsonl"
        files[task].write_text("".join(json.dumps(_doc(task, i)) + "\n" for i in range(5)))
    return files


def test_all_seven_local_tasks_run_and_return_mapped_metrics(data_files):
    model = tiny_model("llama").train()
    out = zs.zeroshot(model, tiny_tokenizer(), list(zs.TASKS), limit=4, batch_size=4, data_files=data_files,
                      metrics={"piqa": "acc_norm"})
    assert model.training  # mode restored
    assert set(out["tasks"]) == set(zs.TASKS)
    expected = zs.DEFAULT_METRICS | {"piqa": "acc_norm"}
    assert out["metric_map"] == expected
    for task, res in out["tasks"].items():
        assert res["metric"] == expected[task]
        assert 0.0 <= res["value"] <= 1.0 and res["value"] * 4 == pytest.approx(round(res["value"] * 4))
        assert res["stderr"] >= 0 and (res["n"], res["n_total"]) == (4, 5)
        assert res["split"] == ("test" if task in ("arc_easy", "arc_challenge", "openbookqa") else "validation")
    assert out["average"] == pytest.approx(sum(r["value"] for r in out["tasks"].values()) / 7)
    assert out["average_stderr"] == pytest.approx(math.sqrt(sum(r["stderr"] ** 2 for r in out["tasks"].values())) / 7)
    for task, res in out["tasks"].items():  # per question: the first 4 documents, scored as the task's metric
        per = out["samples"][task]
        assert per["doc_id"] == [0, 1, 2, 3] and set(per["correct"]) <= {0, 1} and per["metric"] == res["metric"]
        assert sum(per["correct"]) / 4 == pytest.approx(res["value"]) and len(set(per["doc_hash"])) >= 1
    assert (out["limit"], out["source"], out["lm_eval_version"]) == (4, "local", "0.4.13")


def test_answers_are_scored_against_the_gold_label(data_files, tmp_path):
    """Same documents with every gold label flipped: two-choice accuracy must become 1 - accuracy."""
    flipped = tmp_path / "piqa.jsonl"
    docs = [json.loads(line) for line in data_files["piqa"].read_text().splitlines()]
    flipped.write_text("".join(json.dumps(d | {"label": 1 - d["label"]}) + "\n" for d in docs))
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    run = lambda path: zs.zeroshot(model, tok, "piqa", data_files={"piqa": path})["tasks"]["piqa"]["value"]
    assert run(flipped) == pytest.approx(1 - run(data_files["piqa"]))


def test_per_question_results_follow_the_gold_label(data_files, tmp_path):
    """Per question, flipping a two-choice gold label flips that question's 0/1 result, and only it."""
    docs = [json.loads(line) for line in data_files["piqa"].read_text().splitlines()]
    flipped = tmp_path / "piqa.jsonl"
    flipped.write_text("".join(json.dumps(d | {"label": 1 - d["label"]} if i == 2 else d) + "\n"
                               for i, d in enumerate(docs)))
    model, tok = tiny_model("llama"), tiny_tokenizer()
    per = lambda path: zs.zeroshot(model, tok, "piqa", data_files={"piqa": path})["samples"]["piqa"]
    before, after = per(data_files["piqa"]), per(flipped)
    assert [b ^ a for b, a in zip(before["correct"], after["correct"])] == [0, 0, 1, 0, 0]
    assert before["doc_hash"][:2] == after["doc_hash"][:2] and before["doc_hash"][2] != after["doc_hash"][2]


def test_per_question_sorts_by_document_and_refuses_a_missing_metric():
    logged = [{"doc_id": 1, "acc": 0.0, "acc_norm": 1.0, "doc_hash": "b"},
              {"doc_id": 0, "acc": 1.0, "acc_norm": 1.0, "doc_hash": "a"}]
    assert zs.per_question(logged, "acc") == {"metric": "acc", "doc_id": [0, 1], "correct": [1, 0],
                                              "doc_hash": ["a", "b"]}
    with pytest.raises(ValueError, match="lack metric 'acc_norm'"):
        zs.per_question([{"doc_id": 0, "acc": 1.0}], "acc_norm")
    assert zs.average_stderr([0.03, 0.04]) == pytest.approx(0.025)


def test_local_yaml_includes_the_stock_task(tmp_path):
    text = zs.local_task_yaml("hellaswag", tmp_path / "h.jsonl", "validation", tmp_path)
    assert "lm_eval/tasks/hellaswag/hellaswag.yaml" in text and "dataset_path: json" in text
    assert zs.stock_metrics("winogrande") == ["acc"] and zs.stock_eval_split("arc_challenge") == "test"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tasks=["piqa", "mmlu", "lambada"]), r"task\(s\) \['mmlu', 'lambada'\]; available: boolq, piqa"),
        (dict(tasks=["winogrande"], metrics={"winogrande": "acc_norm"}), "not computed by task winogrande"),
        (dict(tasks=["piqa"], metrics={"copa": "acc"}), "unknown task"),
        (dict(tasks=["piqa"], limit=0), "limit"),
        (dict(tasks=["piqa"], source="web"), "source"),
        (dict(tasks=["piqa"], source="hub", data_files={"piqa": "p.jsonl"}), "only read with source='local'"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zs.zeroshot(tiny_model("llama"), tiny_tokenizer(), **kwargs)


def test_wrong_schema_and_wrong_vocab_fail_clearly(data_files):
    with pytest.raises(ValueError, match=r"piqa: .* missing \['goal', 'label', 'sol1', 'sol2'\]"):
        zs.zeroshot(tiny_model("llama"), tiny_tokenizer(), ["piqa"], data_files={"piqa": data_files["boolq"]})
    small = tiny_model("llama")
    small.resize_token_embeddings(128)
    with pytest.raises(ValueError, match="does not belong to this model"):
        zs.zeroshot(small, tiny_tokenizer(), ["piqa"], data_files=data_files)
