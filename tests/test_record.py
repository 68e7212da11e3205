"""The typed run record: the results.json of the current version and of version 1 (written before the record
had a version; ``data/results_v1.json`` is a real Table 1 smoke run of that code: LLM-Pruner + LoRA with a
dense baseline) load, round-trip and answer the readers' questions; malformed files fail naming what is wrong.
"""

import copy
import json
import os
import socket
from pathlib import Path

import pytest

from slimgpt.io import read_json
from slimgpt.runner.cli import objective
from slimgpt.runner.record import RECORD_VERSION, Evaluation, PruneEntry, RunRecord
from slimgpt.runner.summary import record_rows
from slimgpt.tables import markdown_table

V1_FILE = Path(__file__).parent / "data" / "results_v1.json"


@pytest.fixture
def v1() -> dict:
    return read_json(V1_FILE)


def test_a_version_1_file_loads_with_every_value(v1):
    record = RunRecord.load(V1_FILE)
    assert "version" not in v1 and record.pid is None and record.host is None
    assert (record.status, record.name, record.group) == ("done", "debug", "paper_table1")
    assert [(e.role, e.model) for e in record.evaluations] == [("dense", "dense"), ("final", "llm_pruner+lora")]
    assert record.metric("ppl/wiki") == v1["evaluations"][1]["metrics"]["ppl/wiki"]
    assert record.metric("ppl/wiki", "dense") == v1["evaluations"][0]["metrics"]["ppl/wiki"]
    assert record.metric("zeroshot/avg") is None and record.evaluation("final").key == record.final_model.key
    assert record.spec("pruner.method") == "llm_pruner" and record.spec("calib.num_samples") == 8
    assert record.spec("pruner.no_such.key") is None
    assert record.recovery_data() == ["sharegpt"]
    assert isinstance(record.prune, PruneEntry) and record.prune.cached is False
    assert record.prune.value("achieved_ratio") == pytest.approx(1 - 117440 / 156608)
    assert record.prune.layer_values("params") == [layer["params"] for layer in v1["prune"]["report"]["layers"]]
    assert record.prune.layer_values("attention.removed") == [1, 1, 1, 1]
    assert record.timings == {"eval_dense": 0.009, "prune": 23.796, "finetune": 2.437, "eval": 1.269}


def test_a_version_1_record_loses_nothing_when_upgraded_and_written_again(v1, tmp_path):
    written = RunRecord.from_json(v1).to_json()
    assert list(written)[0] == "version" and written["version"] == RECORD_VERSION == 4
    untouched = [k for k in v1 if k not in ("specs", "prune")]
    assert {k: written[k] for k in untouched} == {k: v1[k] for k in untouched}
    assert {k: v for k, v in written["specs"].items() if k != "pruner"} == {
        k: v for k, v in v1["specs"].items() if k != "pruner"}
    old, new = v1["specs"]["pruner"], written["specs"]["pruner"]  # v3: options split into engine + method
    assert new["engine"] == {"head_granularity": "kv_group", "layer_range": None}
    assert new["options"] == {"variant": "element1"} and new["ratio_of"] == "total"
    assert {**new["engine"], **new["options"]} == old["options"]
    old, new = v1["prune"]["report"], written["prune"]["report"]
    assert {**new["engine"], **new["method_options"], "first_ratio": new["first_ratio"]} == old["options"]
    assert {k: v for k, v in new.items() if k not in ("engine", "method_options", "first_ratio", "ratio_of")} == {
        k: v for k, v in old.items() if k != "options"}
    RunRecord.from_json(v1).save(tmp_path / "results.json")
    assert RunRecord.load(tmp_path / "results.json") == RunRecord.from_json(v1)


def test_the_readers_read_a_version_1_record(v1):
    record = RunRecord.from_json(v1)
    rows = record_rows(record)
    assert [row["method"] for row in rows] == ["dense", "llm_pruner+lora"]
    assert rows[1]["finetune"] == "lora:sharegpt" and rows[1]["calib"] == "wiki:8x64" and rows[1]["ratio"] == 0.25
    assert "ratio" not in rows[0] and rows[0]["status"] == "done"
    assert objective(record) == v1["evaluations"][1]["metrics"]["ppl/wiki"]


def test_objective_is_none_without_a_final_perplexity_and_a_float_for_a_diverged_one():
    assert objective(RunRecord(status="failed")) is None
    diverged = RunRecord(status="done", evaluations=[Evaluation("final", "slimgpt", "k", {"ppl/wiki": "inf"})])
    assert objective(diverged) == float("inf")
    assert diverged.metric("ppl/wiki") is None  # tables show no number for a non-finite one


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=RECORD_VERSION + 1), f"version {RECORD_VERSION + 1} is not one this code reads"),
    (lambda d: d.update(version="2"), "version '2' is not one this code reads"),
    (lambda d: d.update(statsu="done"), r"results.json: unknown keys \['statsu'\]"),
    (lambda d: d.update(status="finished"), "status='finished' is not one of"),
    (lambda d: d["evaluations"][1].pop("metrics"), r"evaluations\[1\]: .*metrics"),
    (lambda d: d["prune"].update(report_v2={}), r"prune: unknown keys \['report_v2'\]"),
    (lambda d: d.update(final_model=["m"]), "final_model must be a JSON object, got list"),
])
def test_a_malformed_record_names_what_is_wrong(v1, change, message):
    bad = copy.deepcopy(v1)
    change(bad)
    with pytest.raises(ValueError, match=message):
        RunRecord.from_json(bad)
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        RunRecord.from_json([v1])


def test_a_running_record_of_a_live_process_stays_running_and_a_gone_one_is_killed():
    here = socket.gethostname()
    assert RunRecord(status="running", pid=os.getpid(), host=here).status_now() == "running"
    assert RunRecord(status="running", pid=2**22 + 1, host=here).status_now() == "killed"  # above Linux's pid_max
    assert RunRecord(status="running", pid=2**22 + 1, host=here + "-other").status_now() == "running"  # can't tell
    assert RunRecord(status="running").status_now() == "running"  # version 1: no pid recorded
    assert RunRecord(status="done", pid=2**22 + 1, host=here).status_now() == "done"


def test_markdown_table_formats_cells_and_refuses_a_ragged_row():
    table = markdown_table(["a", "b"], [[0.123456, None], ["x|y", float("inf")], [True, 3]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 0.1235 |  |", "| x\\|y | inf |", "| True | 3 |"]
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [1]])


def test_the_fixture_is_what_the_version_1_writer_wrote():
    """Guard against editing the fixture by hand: it carries every key the version-1 pipeline wrote."""
    keys = list(json.loads(V1_FILE.read_text()))
    assert keys == ["status", "name", "group", "stages", "started", "finished", "error", "overrides", "specs",
                    "config", "evaluations", "prune", "finetune", "params", "timings", "peak_memory", "versions",
                    "final_model"]
