"""Streaming (out-of-core) pruning (issue 14 §1): the lazy shard reader, and ``prune_checkpoint`` against the
in-memory path on tiny multi-shard checkpoints — bit-identical weights, one decoder layer in memory at a time."""

import json

import pytest
import torch

import slimgpt
from slimgpt.pruning import engine
from slimgpt.pruning.streaming import ShardReader, prune_checkpoint
from slimgpt.sources import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CALIB = torch.randint(0, 256, (7, 16), generator=torch.Generator().manual_seed(0))  # batches of 3, 3, 1
OPTIONS = dict(batch_size=3, progress=False)


def saved(tmp_path, family: str, shard: str | None = "60KB", **sizes):
    """A dense tiny model saved as a checkpoint folder (several shards unless ``shard`` is None) + tokenizer."""
    folder = tmp_path / f"{family}-src"
    dense = tiny_model(family, **{"heads": 8, "kv_heads": 2, "ffn": 128, **sizes})
    dense.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tiny_tokenizer().save_pretrained(folder)
    return folder


def in_memory(folder, ratio: float = 0.3, **options):
    model, _ = slimgpt.load_model(folder)
    report = slimgpt.prune(model, CALIB, ratio, **OPTIONS, **options)
    return model, report


def assert_same_weights(model, reference):
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    for key in ("layer_num_heads", "layer_num_key_value_heads", "layer_kv_map", "layer_intermediate_sizes"):
        assert getattr(model.config, key) == getattr(reference.config, key)


@pytest.mark.parametrize("shard", ["60KB", None], ids=["sharded", "single-file"])
def test_the_reader_gives_every_tensor_of_sharded_and_single_file_checkpoints(tmp_path, shard):
    folder = saved(tmp_path, "qwen2", shard)
    assert (folder / "model.safetensors.index.json").exists() == (shard is not None)
    state = tiny_model("qwen2", heads=8, kv_heads=2, ffn=128).state_dict()
    reader = ShardReader(folder)
    assert reader.names() == sorted(state)
    layer = reader.tensors("model.layers.1.")
    assert sorted(layer) == sorted(k[len("model.layers.1."):] for k in state if k.startswith("model.layers.1."))
    for name, tensor in layer.items():
        assert torch.equal(tensor, state[f"model.layers.1.{name}"])
    assert torch.equal(reader.head("model.embed_tokens.weight", torch.float32),
                       state["model.embed_tokens.weight"].reshape(-1)[:1024])


def test_a_folder_without_safetensors_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no safetensors weights"):
        ShardReader(tmp_path)


@pytest.mark.parametrize("options", [dict(), dict(track_error=True, passes="three"),
                                     dict(head_granularity="query_head", method="wanda_sp")],
                         ids=["slimgpt", "three-pass-track-error", "wanda-query-head"])
def test_streaming_equals_the_in_memory_prune(tmp_path, family, options):
    folder = saved(tmp_path, family)
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    reference, want = in_memory(folder, **options)
    report = prune_checkpoint(folder, tmp_path / "out", CALIB, 0.3, **OPTIONS, **options)
    model, _ = slimgpt.load_model(tmp_path / "out")
    assert_same_weights(model, reference)
    assert report.params_after == want.params_after and [r.ffn for r in report.layers] == [r.ffn for r in want.layers]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == model.config.num_hidden_layers + 1  # a shard per layer + 1


def test_tied_embeddings_stream_too(tmp_path):
    folder = saved(tmp_path, "llama", tie_word_embeddings=True)
    reference, _ = in_memory(folder)
    prune_checkpoint(folder, tmp_path / "out", CALIB, 0.3, **OPTIONS)
    model, _ = slimgpt.load_model(tmp_path / "out")
    assert_same_weights(model, reference)
    with torch.no_grad():
        assert torch.equal(model(CALIB).logits, reference(CALIB).logits)


def test_only_the_layer_being_pruned_is_in_memory(monkeypatch, tmp_path):
    folder = saved(tmp_path, "llama", num_layers=5)
    real, loaded = engine.prune_layer, []

    def prune_layer(layer, index, *args):
        model_layers = layer_owner["layers"]
        loaded.append([i for i, m in enumerate(model_layers) if next(m.parameters()).device.type != "meta"])
        return real(layer, index, *args)

    layer_owner = {}
    real_store = slimgpt.pruning.streaming.StreamingLayers.__init__

    def remember(self, model, *args):
        layer_owner["layers"] = model.model.layers
        real_store(self, model, *args)

    monkeypatch.setattr(slimgpt.pruning.streaming.StreamingLayers, "__init__", remember)
    monkeypatch.setattr(engine, "prune_layer", prune_layer)
    prune_checkpoint(folder, tmp_path / "out", CALIB, 0.3, **OPTIONS)
    assert loaded == [[0], [1], [2], [3], [4]]


def test_an_interrupted_stream_resumes_bit_identical_and_from_an_in_memory_checkpoint(monkeypatch, tmp_path):
    """The checkpoint is the same for both paths: a prune killed in memory resumes streamed (and vice versa)."""
    folder = saved(tmp_path, "qwen2")
    reference, _ = in_memory(folder)
    real = engine.prune_layer

    def stop_at_2(layer, index, *args):
        if index == 2:
            raise KeyboardInterrupt
        return real(layer, index, *args)

    monkeypatch.setattr(engine, "prune_layer", stop_at_2)
    with pytest.raises(KeyboardInterrupt):
        in_memory(folder, checkpoint_dir=tmp_path / "ckpt")
    monkeypatch.undo()
    prune_checkpoint(folder, tmp_path / "out", CALIB, 0.3, checkpoint_dir=tmp_path / "ckpt", **OPTIONS)
    model, _ = slimgpt.load_model(tmp_path / "out")
    assert_same_weights(model, reference)
    assert not (tmp_path / "ckpt").exists()

    monkeypatch.setattr(engine, "prune_layer", stop_at_2)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(folder, tmp_path / "out2", CALIB, 0.3, checkpoint_dir=tmp_path / "ckpt", **OPTIONS)
    assert not (tmp_path / "out2").exists()  # the destination appears only once complete
    monkeypatch.undo()
    prune_checkpoint(folder, tmp_path / "out2", CALIB, 0.3, checkpoint_dir=tmp_path / "ckpt", **OPTIONS)
    assert_same_weights(slimgpt.load_model(tmp_path / "out2")[0], reference)


@pytest.mark.parametrize("method", ["llm_pruner", "flap"])
def test_methods_that_need_the_whole_model_are_refused(tmp_path, method):
    with pytest.raises(ValueError, match=f"method '{method}' needs the whole model"):
        prune_checkpoint(saved(tmp_path, "llama"), tmp_path / "out", CALIB, 0.2, method=method, **OPTIONS)


def test_bad_sources_and_destinations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="built in memory and has no checkpoint"):
        prune_checkpoint("tiny:llama", tmp_path / "out", CALIB, 0.2)
    with pytest.raises(FileNotFoundError, match="needs a local checkpoint folder"):
        prune_checkpoint(tmp_path / "nothing", tmp_path / "out", CALIB, 0.2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        prune_checkpoint(saved(tmp_path, "llama"), tmp_path / "full", CALIB, 0.2)


# ----------------------------------------------------------------------------------------------- the runner


def test_the_prune_stage_streams_with_the_same_key_and_weights(tmp_path):
    from slimgpt.runner.cache import ArtifactCache
    from slimgpt.runner.loggers import NoneLogger
    from slimgpt.runner.specs import CalibSpec, ModelSpec, PrunerSpec, ScheduleSpec
    from slimgpt.runner.stages import dense_artifact, prune_stage

    folder = saved(tmp_path, "qwen2")
    calib = CalibSpec(source="wiki", num_samples=5, seq_len=16)
    pruner = PrunerSpec(method="slimgpt", ratio=0.3, engine={"batch_size": 2, "progress": False})
    artifacts = []
    for streaming in (False, True):
        model = ModelSpec(name=str(folder), streaming=streaming)
        artifact, report = prune_stage(dense_artifact(model), model, calib, pruner, ScheduleSpec(name="log_increase"),
                                       cache=ArtifactCache(tmp_path / f"cache-{streaming}"), logger=NoneLogger())
        artifacts.append(artifact)
        assert len(report["layers"]) == 4
    assert artifacts[0].key == artifacts[1].key  # streaming changes no number, so not the key
    assert_same_weights(slimgpt.load_model(artifacts[1].path)[0], slimgpt.load_model(artifacts[0].path)[0])
    assert (artifacts[1].path / "model.safetensors.index.json").exists()


@pytest.mark.parametrize("values,message", [(dict(streaming="yes"), "use true, false or auto"),
                                            (dict(name="tiny:llama", streaming=True), "no checkpoint to stream")])
def test_bad_streaming_values_fail_when_the_spec_is_built(values, message):
    from slimgpt.runner.specs import ModelSpec

    with pytest.raises(ValueError, match=message):
        ModelSpec(**{"name": "smollm2-135m", **values})


# ----------------------------------------------------------------------------------------------- disk buffers


def test_disk_buffers_give_the_host_buffers_weights_and_leave_no_file(tmp_path, family):
    from helpers import slim_tiny

    models = {}
    for place in ("host", "disk"):
        models[place] = slim_tiny(family)
        report = slimgpt.prune(models[place], CALIB, 0.3, passes="one", buffers=place,
                               buffer_dir=str(tmp_path / "buffers"), track_error=True, **OPTIONS)
        assert report.passes == "one"
        assert report.buffer_device == ("cpu" if place == "host" else f"disk:{tmp_path / 'buffers'}")
    assert_same_weights(models["disk"], models["host"])
    assert list((tmp_path / "buffers").iterdir()) == []  # each file was unlinked once mapped


def test_buffers_go_to_device_then_host_then_disk_then_three_passes(monkeypatch, tmp_path):
    from helpers import slim_tiny
    from slimgpt.pruning.engine import DiskBuffers, activation_bytes, plan_buffers
    from slimgpt.pruning.methods import make_method

    model, method, cpu = slim_tiny("llama"), make_method("slimgpt"), torch.device("cpu")
    inps = torch.zeros(7, 16, 64)
    need = activation_bytes(inps, model.model.layers)
    disk = DiskBuffers(str(tmp_path))

    def plan(room: dict, passes="auto", buffers="auto"):
        monkeypatch.setattr(engine, "_free_bytes",
                            lambda place: room["disk" if isinstance(place, DiskBuffers) else "ram"])
        return plan_buffers(passes, method, inps, model.model.layers, cpu, buffers, str(tmp_path))

    assert plan({"ram": 2 * need, "disk": 0}) == cpu  # half of the free memory is enough
    assert plan({"ram": 2 * need - 1, "disk": 2 * need}) == disk
    assert plan({"ram": 2 * need - 1, "disk": 2 * need - 1}) is None  # three passes
    assert plan({"ram": 0, "disk": 0}, passes="one") == cpu
    assert plan({"ram": 0, "disk": 0}, buffers="disk") == disk
    assert plan({"ram": 2 * need, "disk": 2 * need}, buffers="host") == cpu
    assert plan({"ram": 2 * need, "disk": 2 * need}, passes="three") is None


@pytest.mark.parametrize("values,message", [(dict(buffers="ssd"), "unknown buffers 'ssd'; choose one of auto"),
                                            (dict(buffers="disk", passes="three"), "passes='three' keeps none")])
def test_bad_buffer_options_are_refused(values, message):
    from slimgpt.pruning.options import EngineOptions

    with pytest.raises(ValueError, match=message):
        EngineOptions(**values)


# ----------------------------------------------------------------------------------------------- GPU check


def test_the_gpu_check_says_so_and_runs_nothing_without_cuda(monkeypatch, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "models", lambda *a: pytest.fail("ran without a GPU"))
    assert gpu_check.main(["--out", str(tmp_path)]) == gpu_check.NO_CUDA
    assert "no CUDA GPU on this machine" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
