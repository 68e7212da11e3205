"""Resume mid-prune (issue 12 §2): a prune interrupted after layer k resumes from its checkpoint with weights
bit-identical to an uninterrupted run; a checkpoint of other arguments is refused; a finished prune leaves none."""

import fcntl
import json
import os

import pytest
import torch

import slimgpt
from slimgpt.pruning import engine
from slimgpt.runner.cache import ArtifactCache
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.specs import CalibSpec, ModelSpec, PrunerSpec, ScheduleSpec
from slimgpt.runner.stages import dense_artifact, prune_stage

from helpers import slim_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

CALIB = torch.randint(0, 256, (7, 16), generator=torch.Generator().manual_seed(0))  # batches of 3, 3, 1
OPTIONS = dict(batch_size=3, progress=False)


class Interrupt(Exception):
    """Stands for the pre-emption: raised when the loop reaches a given layer."""


def interrupt_at(monkeypatch, layer: int) -> list[int]:
    """Makes the loop raise ``Interrupt`` when it starts layer ``layer``; returns the list of layers pruned."""
    real, pruned = engine.prune_layer, []

    def prune_layer(module, index, *args):
        if index == layer:
            raise Interrupt(f"pre-empted at layer {index}")
        pruned.append(index)
        return real(module, index, *args)

    monkeypatch.setattr(engine, "prune_layer", prune_layer)
    return pruned


def count_layers(monkeypatch) -> list[int]:
    """Records the layers the loop prunes (without interrupting)."""
    return interrupt_at(monkeypatch, -1)


def assert_same_weights(model, reference):
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    for key in ("layer_num_heads", "layer_kv_map", "layer_intermediate_sizes"):
        assert getattr(model.config, key) == getattr(reference.config, key)


@pytest.mark.parametrize("options", [dict(), dict(track_error=True),
                                     dict(passes="three", head_granularity="query_head")],
                         ids=["one-pass", "track_error", "three-pass-query-head"])
def test_an_interrupted_prune_resumes_bit_identical(monkeypatch, tmp_path, family, options):
    kwargs = dict(OPTIONS, **options)
    reference = slim_tiny(family)
    want = slimgpt.prune(reference, CALIB, 0.3, **kwargs)

    folder = tmp_path / "checkpoint"
    interrupt_at(monkeypatch, 2)
    with pytest.raises(Interrupt):
        slimgpt.prune(slim_tiny(family), CALIB, 0.3, checkpoint_dir=folder, **kwargs)
    state = json.loads((folder / "state.json").read_text())
    assert state["layers_done"] == 2 and len(state["reports"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "inputs-00002.safetensors", "layer-00000.safetensors", "layer-00001.safetensors", "state.json"]

    monkeypatch.undo()
    pruned = count_layers(monkeypatch)
    model = slim_tiny(family)
    report = slimgpt.prune(model, CALIB, 0.3, checkpoint_dir=folder, **kwargs)
    assert pruned == [2, 3]  # layers 0 and 1 came from the checkpoint
    assert_same_weights(model, reference)
    assert [r.ffn for r in report.layers] == [r.ffn for r in want.layers]
    if options.get("track_error"):  # the dense buffer was restored too: the same errors in the resumed layers
        assert [r.output_error for r in report.layers] == [r.output_error for r in want.layers]
    assert not folder.exists()  # a finished prune removes its checkpoint


def test_logits_of_the_resumed_model_equal_the_uninterrupted_ones(monkeypatch, tmp_path):
    reference = slim_tiny("qwen2")
    slimgpt.prune(reference, CALIB, 0.4, **OPTIONS)
    interrupt_at(monkeypatch, 1)
    with pytest.raises(Interrupt):
        slimgpt.prune(slim_tiny("qwen2"), CALIB, 0.4, checkpoint_dir=tmp_path, **OPTIONS)
    monkeypatch.undo()
    model = slim_tiny("qwen2")
    slimgpt.prune(model, CALIB, 0.4, checkpoint_dir=tmp_path, **OPTIONS)
    with torch.no_grad():
        assert torch.equal(model(CALIB).logits, reference(CALIB).logits)


@pytest.mark.parametrize("change", [dict(ratio=0.4), dict(calibration=CALIB.flip(0)), dict(damp=0.1),
                                    dict(schedule="uniform"), dict(num_layers=5)],
                         ids=["ratio", "calibration", "method-option", "schedule", "model"])
def test_a_checkpoint_of_other_arguments_is_refused(monkeypatch, tmp_path, change):
    interrupt_at(monkeypatch, 2)
    with pytest.raises(Interrupt):
        slimgpt.prune(slim_tiny("llama"), CALIB, 0.3, checkpoint_dir=tmp_path, **OPTIONS)
    monkeypatch.undo()
    change = dict(change)
    model = slim_tiny("llama", num_layers=change.pop("num_layers", 4))
    calibration, ratio = change.pop("calibration", CALIB), change.pop("ratio", 0.3)
    with pytest.raises(ValueError, match="made with different arguments .* differ"):
        slimgpt.prune(model, calibration, ratio, checkpoint_dir=tmp_path, **OPTIONS, **change)
    assert json.loads((tmp_path / "state.json").read_text())["layers_done"] == 2  # left as it was


def test_a_weight_of_another_model_is_noticed(monkeypatch, tmp_path):
    interrupt_at(monkeypatch, 1)
    with pytest.raises(Interrupt):
        slimgpt.prune(slim_tiny("llama"), CALIB, 0.3, checkpoint_dir=tmp_path, **OPTIONS)
    monkeypatch.undo()
    other = slim_tiny("llama", seed=1)  # same config, other weights
    with pytest.raises(ValueError, match=r"\(weights differ\)"):
        slimgpt.prune(other, CALIB, 0.3, checkpoint_dir=tmp_path, **OPTIONS)


def test_a_checkpoint_in_use_by_another_process_is_left_alone(tmp_path):
    tmp_path.joinpath("state.json").write_text("{}")
    holder = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.warns(UserWarning, match="in use by another process"):
            slimgpt.prune(slim_tiny("llama"), CALIB, 0.3, checkpoint_dir=tmp_path, **OPTIONS)
    finally:
        os.close(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_half_written_file_of_a_killed_writer_is_ignored(monkeypatch, tmp_path):
    interrupt_at(monkeypatch, 2)
    with pytest.raises(Interrupt):
        slimgpt.prune(slim_tiny("llama"), CALIB, 0.3, checkpoint_dir=tmp_path, **OPTIONS)
    monkeypatch.undo()
    (tmp_path / ".tmp-layer-00002.safetensors-0123abcd").write_bytes(b"half")  # killed while writing layer 2
    reference = slim_tiny("llama")
    slimgpt.prune(reference, CALIB, 0.3, **OPTIONS)
    model = slim_tiny("llama")
    slimgpt.prune(model, CALIB, 0.3, checkpoint_dir=tmp_path, **OPTIONS)
    assert_same_weights(model, reference)


# ----------------------------------------------------------------------------------------------- the runner


def test_the_prune_stage_resumes_after_a_pre_emption(monkeypatch, tmp_path):
    """A job killed mid-prune (SLURM pre-emption) and run again resumes from the checkpoint in the run cache
    (``pruned/.resume-<key>``) and stores the same weights as an uninterrupted job."""
    specs = dict(model=ModelSpec(name="tiny:llama?num_layers=4,heads=8,kv_heads=2,ffn=128"),
                 calib=CalibSpec(source="wiki", num_samples=5, seq_len=16),
                 pruner=PrunerSpec(method="slimgpt", ratio=0.3, engine={"batch_size": 2, "progress": False}),
                 schedule=ScheduleSpec(name="log_increase"))

    def run(cache):
        return prune_stage(dense_artifact(specs["model"]), specs["model"], specs["calib"], specs["pruner"],
                           specs["schedule"], cache=cache, logger=NoneLogger())

    uninterrupted, _ = run(ArtifactCache(tmp_path / "a"))
    cache = ArtifactCache(tmp_path / "b")
    interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupt):
        run(cache)
    resume_dirs = list((tmp_path / "b" / "pruned").glob(".resume-*"))
    assert len(resume_dirs) == 1 and (resume_dirs[0] / "state.json").exists()
    removable, kept = cache.garbage(min_age=0)
    assert resume_dirs[0] in kept and resume_dirs[0] not in removable  # gc keeps a resumable checkpoint
    monkeypatch.undo()
    pruned = count_layers(monkeypatch)
    artifact, report = run(cache)
    assert pruned == [3] and len(report["layers"]) == 4
    assert not resume_dirs[0].exists()
    net, _ = slimgpt.load_model(artifact.path)
    reference, _ = slimgpt.load_model(uninterrupted.path)
    assert_same_weights(net, reference)


def test_gc_removes_stale_checkpoints_only(tmp_path, capsys):
    """``slimgpt-cache gc``: a resumable checkpoint is kept; one whose prune finished, an empty one and one
    older than ``--resume-max-age`` are removed."""
    from slimgpt.runner import cache_cli

    cache = ArtifactCache(tmp_path)
    resumable, finished, empty, old = (cache.resume_path("pruned", k) for k in ("aaaa", "bbbb", "cccc", "dddd"))
    for folder in (resumable, finished, old):
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
    empty.mkdir()
    cache.store_dir("pruned", "bbbb", lambda folder: (folder / "w").write_text("x"), meta={})
    os.utime(old / "state.json", (0, 0))
    os.utime(old, (0, 0))
    assert cache_cli.main(["--cache", str(tmp_path), "gc", "--min-age", "0"]) == 0
    out = capsys.readouterr().out
    assert resumable.exists() and "kept pruned/.resume-aaaa (the checkpoint of an unfinished prune" in out
    assert not finished.exists() and not empty.exists() and not old.exists()
    assert cache.find_dir("pruned", "bbbb") is not None
