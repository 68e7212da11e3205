"""The runner's building blocks: atomic results, the artifact cache, loggers, failure handling, the report."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimgpt.runner import summary
from slimgpt.runner.cache import ArtifactCache, signature
from slimgpt.runner.loggers import DiskLogger, NoneLogger, WandbLogger, logged_run
from slimgpt.runner.pipeline import Job, run_job
from slimgpt.runner.record import RECORD_VERSION, RunRecord
from slimgpt.runner.results import read_json, write_json_atomic
from slimgpt.runner.specs import (CalibSpec, EvalSpec, FinetuneSpec, ModelSpec, PerplexitySpec, PrunerSpec,
                                  ScheduleSpec)

from helpers import RecordingLogger


def tiny_job(tmp_path: Path, **changes) -> Job:
    """A job on the tiny model; ``changes`` replace Job fields."""
    values = dict(
        model=ModelSpec(name="tiny:llama?num_layers=2"),
        calib=CalibSpec(source="wiki", num_samples=4, seq_len=32),
        pruner=PrunerSpec(method="slimgpt", ratio=0.2), schedule=ScheduleSpec(name="log_increase"),
        finetune=FinetuneSpec(), evaluation=EvalSpec(perplexity=PerplexitySpec(seq_len=32, max_tokens=256)),
        run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", name="tiny",
    )
    values.update(changes)
    return Job(**values)


def test_write_json_atomic_leaves_no_temporary_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"a": 1, "path": tmp_path, "inf": float("inf"), "t": (1, 2)})
    assert read_json(target) == {"a": 1, "path": str(tmp_path), "inf": "inf", "t": [1, 2]}
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert read_json(target)["a"] == 1
    assert os.listdir(tmp_path) == ["results.json"]


def test_signature_ignores_dict_order_and_sees_every_value():
    assert signature({"a": 1, "b": {"x": 1, "y": 2}}) == signature({"b": {"y": 2, "x": 1}, "a": 1})
    assert signature({"a": 1}) != signature({"a": 2})
    assert len(signature({})) == 16


def test_cache_publishes_a_directory_only_when_complete(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken(folder):
        (folder / "weights").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.store_dir("pruned", "k1", broken, meta={})
    assert cache.find_dir("pruned", "k1") is None
    assert list((tmp_path / "pruned").iterdir()) == []  # no temporary left behind
    path = cache.store_dir("pruned", "k1", lambda folder: (folder / "weights").write_text("ok"), meta={"n": 1})
    assert cache.find_dir("pruned", "k1") == path and (path / "weights").read_text() == "ok"
    assert cache.dir_meta("pruned", "k1") == {"n": 1}
    again = cache.store_dir("pruned", "k1", lambda folder: (folder / "weights").write_text("new"), meta={})
    assert again == path and (path / "weights").read_text() == "ok"  # a finished artifact is never replaced


@pytest.mark.parametrize("error,status", [(RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")])
def test_logged_run_always_closes(error, status, tmp_path):
    logger = RecordingLogger()
    with pytest.raises(error), logged_run(logger, run_dir=tmp_path, name="n", group=None, config={}):
        raise error
    assert logger.events == [("start", "n"), ("close", status)]


def test_disk_logger_writes_json_lines(tmp_path):
    logger = DiskLogger()
    with logged_run(logger, run_dir=tmp_path, name="n", group="g", config={"x": 1}):
        logger.log({"prune_layer/layer": 0, "prune_layer/ratio": 0.5})
        logger.log_table("t", ["a"], [[1]])
        logger.summary({"ppl": 3.0})
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "log", "table", "summary", "close"]
    assert events[1]["prune_layer/ratio"] == 0.5 and events[-1]["status"] == "done"


def test_wandb_logger_offline_writes_a_run_and_closes_on_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(project="test")
    assert logger.resolved_mode() == "offline"
    with pytest.raises(RuntimeError), logged_run(logger, run_dir=tmp_path, name="n", group="g", config={"a": 1}):
        logger.log({"prune_layer/layer": 0, "prune_layer/heads_after": 2})
        logger.log({"lora0/step": 1, "lora0/train/loss": 2.5})
        logger.log_table("eval/results", ["model", "ppl"], [["dense", 3.0]])
        logger.summary({"final/ppl": 3.0})
        raise RuntimeError("boom")
    assert logger.run is None
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger().resolved_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbLogger().resolved_mode() == "offline"
    assert WandbLogger(mode="disabled").resolved_mode() == "disabled"
    with pytest.raises(ValueError, match="logger.mode='cloud'"):
        WandbLogger(mode="cloud")


def test_a_failing_job_keeps_its_results_and_closes_the_logger(tmp_path, monkeypatch):
    import slimgpt.runner.pipeline as pipeline_module

    def broken_eval(*args, **kwargs):
        raise ValueError("the evaluation broke")

    monkeypatch.setattr(pipeline_module, "eval_stage", broken_eval)
    logger = RecordingLogger()
    job = tiny_job(tmp_path, stages=("eval",))
    with pytest.raises(ValueError, match="the evaluation broke"):
        run_job(job, logger)
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and "the evaluation broke" in record.error
    assert (record.pid, record.host) == (os.getpid(), socket.gethostname())
    assert read_json(tmp_path / "run" / "results.json")["version"] == RECORD_VERSION
    assert record.versions["torch"] and record.spec("model.name") == "tiny:llama?num_layers=2"
    assert logger.events[-1] == ("close", "failed")
    rows = summary.record_rows(record)
    assert len(rows) == 1 and rows[0]["status"] == "failed"


def test_an_unknown_model_fails_before_any_stage_and_is_recorded(tmp_path):
    job = tiny_job(tmp_path, model=ModelSpec(name="tiny:gpt2"), stages=("eval",))
    with pytest.raises(ValueError, match="unknown tiny model family 'gpt2'"):
        run_job(job, RecordingLogger())
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "failed" and "gpt2" in record.error and not record.timings


def test_ctrl_c_marks_the_job_interrupted_with_complete_results(tmp_path, monkeypatch):
    """Ctrl-C during a stage (simulated by the stage raising KeyboardInterrupt) leaves a complete results.json."""
    import slimgpt.runner.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prune_stage", interrupted)
    logger = RecordingLogger()
    with pytest.raises(KeyboardInterrupt):
        run_job(tiny_job(tmp_path, stages=("prune", "eval")), logger)
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.status == "interrupted" and record.finished and record.evaluations == []
    assert logger.events[-1] == ("close", "interrupted")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json"]


def test_sigterm_ends_a_job_like_ctrl_c(tmp_path, monkeypatch):
    import signal

    import slimgpt.runner.pipeline as pipeline
    from slimgpt.runner.cli import sigterm_as_interrupt

    monkeypatch.setattr(pipeline, "prune_stage", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        run_job(tiny_job(tmp_path, stages=("prune",)), NoneLogger())
    assert RunRecord.load(tmp_path / "run" / "results.json").status == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is previous


def _record(name, ratio, ppl, tmp_path, dense_ppl=30.0):
    """A results.json as run_job writes it (for the report tests)."""
    specs = {"model": {"name": "tiny"}, "calib": {"source": "wiki", "num_samples": 4, "seq_len": 32},
             "pruner": {"ratio": ratio}, "schedule": {"name": "uniform"}, "finetune": {"stages": []}}
    evaluations = [{"role": "dense", "model": "dense", "key": "d", "metrics": {"ppl/wiki": dense_ppl, "params": 10}},
                   {"role": "final", "model": "slimgpt", "key": name, "metrics": {"ppl/wiki": ppl, "params": 8}}]
    record = {"name": name, "status": "done", "stages": ["prune", "eval"], "specs": specs,
              "overrides": [f"pruner.ratio={ratio}"], "evaluations": evaluations}
    write_json_atomic(tmp_path / name / "results.json", record)


def test_report_collects_a_sweep_with_one_dense_row(tmp_path, capsys):
    for i, ratio in enumerate([0.1, 0.2, 0.3]):
        _record(str(i), ratio, 40.0 + i, tmp_path)
    rows = summary.collect([tmp_path])
    assert [r["method"] for r in rows] == ["dense", "slimgpt", "slimgpt", "slimgpt"]
    assert [r.get("ratio") for r in rows] == [None, 0.1, 0.2, 0.3]
    assert summary.main([str(tmp_path)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| run | status | model | method | ratio |") and len(table) == 2 + 4
    summary.main([str(tmp_path), "--format", "csv", "--out", str(tmp_path / "t.csv")])
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["run", "status", "model"] and len(lines) == 5


def test_report_rejects_a_missing_path(tmp_path):
    with pytest.raises(SystemExit):
        summary.main([str(tmp_path / "nope")])


def test_report_skips_and_names_unreadable_results(tmp_path, capsys):
    """A truncated file, a JSON file that is no run record and a newer format are named; the rest is a table."""
    _record("good", 0.2, 40.0, tmp_path)
    text = (tmp_path / "good" / "results.json").read_text()
    bad = {"truncated": text[: len(text) // 2], "list": "[1, 2]", "newer": json.dumps({"version": 99})}
    for name, content in bad.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(content)
    assert summary.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2 + 2  # the good run's dense and final rows
    for name in bad:
        assert str(tmp_path / name / "results.json") in captured.err, name
    assert "version 99" in captured.err and "must be a JSON object, got list" in captured.err
    with pytest.raises(SystemExit):  # nothing readable at all
        summary.main([str(tmp_path / "list")])
    assert "no readable results.json" in capsys.readouterr().err


#: A job whose prune stage hangs (so that it can be killed while its record says ``running``).
HANGING_JOB = """
import sys, time
from slimgpt.runner import pipeline
from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
pipeline.prune_stage = lambda *args, **kwargs: time.sleep(600)
cfg = compose_config(["debug=default", "stages=[prune]", "paths.cache=" + sys.argv[2]])
pipeline.run_job(build_job(cfg, run_dir=sys.argv[1]), NoneLogger())
"""


def test_a_job_killed_with_sigkill_is_reported_killed(tmp_path, capsys):
    results = tmp_path / "run" / "results.json"
    job = subprocess.Popen([sys.executable, "-c", HANGING_JOB, str(tmp_path / "run"), str(tmp_path / "cache")])
    try:
        deadline = time.monotonic() + 120
        while not results.is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert results.is_file(), "the job wrote no results.json"
        record = RunRecord.load(results)
        assert record.status == "running" and record.pid == job.pid and record.status_now() == "running"
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert RunRecord.load(results).status == "running"  # the file cannot know...
    summary.main([str(results)])
    assert "| killed |" in capsys.readouterr().out  # ...but its reader does
