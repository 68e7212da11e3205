"""End-to-end runs on the tiny random model (offline): prune → finetune → eval in-process with logger=none
and with W&B offline, the artifact cache on re-runs, and a 2×2 multirun through the real CLI + its summary.

All tests share one artifact cache (module scope), so each distinct pruned model is computed once.
"""

import json
import math
import subprocess
import sys

import pytest

from slimgpt.runner import summary
from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import WandbLogger
from slimgpt.runner.pipeline import run_job
from slimgpt.runner.results import read_json

from helpers import RecordingLogger

#: The smoke settings: debug=default (tiny model, all three stages) with a dense baseline row.
SMOKE = ["debug=default", "baseline=true", "eval.perplexity.max_tokens=1024"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def smoke_job(tmp_path, cache, *overrides):
    cfg = compose_config([*SMOKE, *overrides, f"paths.cache={cache}"])
    return build_job(cfg, run_dir=tmp_path / "run", overrides=tuple(overrides))


def check_record(record, run_dir, stages):
    """Invariants of a finished job's results.json."""
    assert record.to_json() == read_json(run_dir / "results.json") and record.status == "done"
    assert set(record.timings) == {"eval_dense", *stages}
    dense, final = (e.metrics for e in record.evaluations)
    prune = record.prune
    assert abs(prune.value("achieved_ratio") - 0.2) < 0.05 and len(prune.layer_values("layer")) == 4
    assert final["params"] == prune.value("params_after") < dense["params"] == prune.value("params_before")
    assert all(math.isfinite(m["ppl/wiki"]) and m["ppl/wiki"] > 1 for m in (dense, final))
    assert record.peak_memory["rss_mb"] > 0 and record.versions["transformers"]
    return dense, final


def test_prune_eval_smoke_with_no_logger_then_cached(tmp_path, cache):
    job = smoke_job(tmp_path, cache, "stages=[prune,eval]", "eval=ppl")
    logger = RecordingLogger()
    record = run_job(job, logger)
    check_record(record, job.run_dir, ("prune", "eval"))
    assert record.prune.cached is False and logger.events[-1] == ("close", "done")
    layer_points = [e[1] for e in logger.events if e[0] == "log" and "prune_layer/layer" in e[1]]
    assert [p["prune_layer/layer"] for p in layer_points] == [0, 1, 2, 3]  # per-layer metrics
    assert all("prune_layer/achieved_ratio" in p for p in layer_points)
    again = run_job(smoke_job(tmp_path / "again", cache, "stages=[prune,eval]", "eval=ppl"), RecordingLogger())
    assert again.prune.cached is True and again.timings["prune"] < 5
    assert again.evaluations == record.evaluations  # evaluations come from the cache as well


def test_all_three_stages_smoke_with_no_logger(tmp_path, cache):
    job = smoke_job(tmp_path, cache)
    logger = RecordingLogger()
    record = run_job(job, logger)
    dense, final = check_record(record, job.run_dir, ("prune", "finetune", "eval"))
    assert record.evaluations[1].model == "slimgpt+lora"
    assert 0 <= final["zeroshot/avg"] <= 1 and "zeroshot/arc_easy" in final
    stderrs = [v for k, v in final.items() if k.startswith("zeroshot_stderr/") and k != "zeroshot_stderr/avg"]
    assert stderrs and 0 <= final["zeroshot_stderr/avg"] <= max(stderrs)
    for evaluation in record.evaluations:  # per-question results beside each evaluation's metrics in the cache
        samples = [read_json(p) for p in cache.rglob("samples.json")]
        mine = [s for s in samples if s["source"] == evaluation.key]
        assert len(mine) == 1 and mine[0]["label"] == evaluation.model
        for task, per in mine[0]["tasks"].items():
            assert sum(per["correct"]) / len(per["correct"]) == pytest.approx(evaluation.metrics[f"zeroshot/{task}"])
    losses = [e[1]["lora0/train/loss"] for e in logger.events if e[0] == "log" and "lora0/train/loss" in e[1]]
    assert losses and all(math.isfinite(x) for x in losses)  # the loss curve reached the logger
    assert record.finetune[0]["steps"] >= 1


def test_smoke_with_wandb_offline(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = smoke_job(tmp_path, cache, "stages=[prune,eval]", "eval=ppl")
    record = run_job(job, WandbLogger(project="slimgpt-test"))
    check_record(record, job.run_dir, ("prune", "eval"))
    runs = list((job.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # one W&B run per job, in the run folder
    log = runs[0].read_bytes()  # the offline transaction log: keys and JSON values appear verbatim
    final = record.evaluations[1].metrics
    for key, value in [("final/ppl/wiki", final["ppl/wiki"]), ("status", "done"),
                       ("prune/achieved_ratio", record.prune.value("achieved_ratio"))]:
        assert key.encode() + b"\x82\x01" in log and json.dumps(value).encode() in log, key
    assert b"prune_layer/layer" in log and list(runs[0].parent.glob("files/media/table/eval/results_*.json"))


def test_cli_multirun_2x2_and_summary(tmp_path, cache):
    """``slimgpt -m`` over 2 ratios × 2 eval window lengths: 4 jobs, 2 pruned models, a 4-row summary."""
    outputs = tmp_path / "outputs"
    command = [sys.executable, "-m", "slimgpt.runner.cli", "-m", "debug=default", "stages=[prune,eval]", "eval=ppl",
               "eval.perplexity.max_tokens=1024", "logger=none", f"paths.cache={cache}", f"paths.outputs={outputs}",
               "sweep_name=smoke", "pruner.ratio=0.2,0.3", "eval.perplexity.seq_len=32,64"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dirs = list((outputs / "multiruns" / "smoke").iterdir())
    assert len(sweep_dirs) == 1
    records, skipped = summary.read_records(sweep_dirs)
    assert len({tuple(r.overrides[-2:]) for r in records}) == len(records) == 4 and not skipped  # the 4 grid points
    assert all(r.status == "done" and r.group == "smoke" for r in records)
    assert sum(not r.prune.cached for r in records) <= 2  # one pruning per ratio at most
    rows = summary.collect(sweep_dirs)
    assert len(rows) == 4 and {r["ratio"] for r in rows} == {0.2, 0.3}
    assert summary.main([str(sweep_dirs[0]), "--format", "csv", "--out", str(tmp_path / "s.csv")]) == 0
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 1 + 4
