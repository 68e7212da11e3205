"""Table 1's key rows: accuracy ± stderr and paired tests from the per-question results the eval stage
stored, found through the run cache and, once copied, without it (tiny model, smoke sizes)."""

import shutil

import pytest

from slimgpt import studies
from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.pipeline import run_job
from slimgpt.runner.record import RunRecord
from slimgpt.studies import table1

SMOKE = ["experiment=paper_table1", "debug=default", "finetune=none", "schedule=uniform",
         "eval.zeroshot.tasks=[arc_easy,piqa]"]


def run(tmp_path, index: int, *overrides: str) -> None:
    cfg = compose_config([*SMOKE, *overrides, f"paths.cache={tmp_path / 'cache'}", f"paths.outputs={tmp_path}"])
    run_job(build_job(cfg, run_dir=tmp_path / "runs" / str(index), overrides=tuple(overrides)), NoneLogger())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """SlimGPT at 20% with 2 questions per task (the table), then two methods at 20% and one at 30% with 6
    (key rows; the same pruned model evaluated on more questions is a row of its own)."""
    tmp = tmp_path_factory.mktemp("table1")
    run(tmp, 0, "pruner=slimgpt", "eval.zeroshot.limit=2")
    for index, (method, ratio) in enumerate([("slimgpt", 0.2), ("wanda_sp", 0.2), ("slimgpt", 0.3)], start=2):
        run(tmp, index, f"pruner={method}", f"pruner.ratio={ratio}", "eval.zeroshot.limit=6")
    return tmp


def test_a_study_keeps_its_records_and_is_redrawn_and_extended_without_the_sweeps(runs, tmp_path):
    """(Runs before the test below, which deletes the run cache's per-question results.)"""
    whole = studies.make_study("table1", [runs / "runs"], tmp_path / "whole")
    out = tmp_path / "figures"
    studies.make_study("table1", [runs / "runs" / "0", runs / "runs" / "2"], out)
    stored = sorted((out / "records").glob("*/results.json"))
    assert len(stored) == 2 and all(RunRecord.load(path).status == "done" for path in stored)
    later = tmp_path / "later"  # a later sweep; the first two rows only in out/records
    shutil.copytree(runs / "runs", later, ignore=lambda folder, names: [n for n in names if n in ("0", "1", "2")])
    assert studies.make_study("table1", [later], out) == whole
    assert len(list((out / "records").glob("*/results.json"))) == len(list((tmp_path / "whole" / "records").iterdir()))


def test_a_folder_of_key_rows_alone_is_a_key_row_table(runs, tmp_path, monkeypatch):
    """Records that all used one limit are key rows when it reaches KEY_ROW_QUESTIONS (the key_rows folder)."""
    only_six = tmp_path / "six"
    shutil.copytree(runs / "runs", only_six, ignore=lambda folder, names: [n for n in names if n in ("0", "1")])
    assert "paired" not in studies.make_study("table1", [only_six], tmp_path / "a").lower()
    monkeypatch.setattr(table1, "KEY_ROW_QUESTIONS", 6)
    text = studies.make_study("table1", [only_six], tmp_path / "b")
    assert text.startswith("| ratio | method | setting | params |") and "30% slimgpt vs dense" in text
    assert "Key rows: zero-shot on the first 6 questions per task" in text
    assert (tmp_path / "b" / "table1_key_rows.png").stat().st_size > 0 and not (tmp_path / "a" / "table1_key_rows.png").exists()


def test_key_rows_get_stderr_and_paired_tests(runs):
    out = runs / "figures"
    text = studies.make_study("table1", [runs / "runs"], out)
    main, main_caption, key_table, caption, tests, note = text.split("\n\n")[:6]
    assert main.count("\n") == 3 and "| 20% | slimgpt | uniform, all layers, calib wiki 8×64 | no |" in main
    assert "first 2 questions per task" in main_caption and "first 6 questions per task" in caption
    assert key_table.count("\n") == 5 and "| 0% | dense |" in key_table and " ± " in key_table  # dense + 3 rows
    pairs = [line.split(" | ")[0].lstrip("| ") for line in tests.splitlines()[2:]]
    assert pairs == ["20% slimgpt vs dense", "20% wanda_sp vs dense", "30% slimgpt vs dense",
                     "20% slimgpt vs 20% wanda_sp"]
    assert "McNemar" in note and "over all 12 tests" in note
    assert "| piqa | 6 | acc |" in text and "| arc_easy | 2 | acc |" in text  # the dense model against chance
    assert len(list((out / "samples").glob("*-6.json"))) == 4  # dense + three pruned models, 6 questions
    shutil.rmtree(runs / "cache" / "eval")  # the copies in out/samples alone give the same tables
    assert studies.make_study("table1", [runs / "runs"], out) == text


def test_row_pairs_compare_each_pruned_row_to_dense_and_rows_of_one_ratio():
    labels = ["dense", "20% a", "20% b", "50% a", "50% b", "50% c"]
    assert table1.row_pairs(labels) == [
        ("20% a", "dense"), ("20% b", "dense"), ("50% a", "dense"), ("50% b", "dense"), ("50% c", "dense"),
        ("20% a", "20% b"), ("50% a", "50% b"), ("50% a", "50% c"), ("50% b", "50% c")]
    assert table1.row_pairs(["20% a"]) == []
