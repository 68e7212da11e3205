"""What several studies share: the perplexity metric they report, the dense baseline, the caption line, the
per-question zero-shot results of the evaluated models."""

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from slimgpt.io import read_json, write_json_atomic

from slimgpt.runner.record import PruneEntry, RunRecord


def ppl_key(records: list[RunRecord]) -> str:
    """The first perplexity metric the records report (``ppl/wiki`` for the scaled studies)."""
    for record in records:
        for entry in record.evaluations:
            keys = sorted(k for k in entry.metrics if k.startswith("ppl/"))
            if keys:
                return keys[0]
    raise ValueError("no perplexity in these results: run the study with eval=ppl or eval=both")


def dense_metric(records: list[RunRecord], key: str) -> float | None:
    """The dense baseline's ``key`` from the first record that has one (``baseline: true``)."""
    return next((v for v in (r.metric(key, "dense") for r in records) if v is not None), None)


def dense_line(key: str, dense: float | None) -> str:
    """The line under a table that gives the dense model's ``key`` (empty without a baseline)."""
    return f"\n\nDense {key}: {dense:.4g}." if dense is not None else ""


def pruned(record: RunRecord) -> PruneEntry:
    """The prune stage of a record; errors if the job did not prune."""
    if record.prune is None or not record.prune.report:
        raise ValueError(f"run '{record.name}' has no prune report (stages: {record.stages})")
    return record.prune


def settings(record: RunRecord, calib: bool = True) -> str:
    """One line of the scaled settings (model, calibration unless ``calib=False``, perplexity prefix) for
    captions; studies without a recovery stage add ", no recovery"."""
    tokens = record.spec("eval.perplexity.max_tokens") or "all"
    split, seq_len = (_or_unknown(record.spec(f"eval.perplexity.{key}")) for key in ("split", "seq_len"))
    calibration = (f", calibration {record.spec('calib.source')} {record.spec('calib.num_samples')}×"
                   f"{record.spec('calib.seq_len')} tokens" if calib else "")
    return (f"{record.spec('model.name')}{calibration}, perplexity on {tokens} tokens of the "
            f"{split} split (seq_len {seq_len})")


def _or_unknown(value: object) -> object:
    return "?" if value is None else value


def most_common(values: Iterable) -> object | None:
    """The most frequent value, the first seen on a tie (None for no values)."""
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def calibration(record: RunRecord) -> str:
    """The calibration data of a record's prune as ``wiki 32×256``."""
    return f"{record.spec('calib.source')} {record.spec('calib.num_samples')}×{record.spec('calib.seq_len')}"


#: Where a study keeps copies of the per-question zero-shot results it used (below its ``out`` folder).
SAMPLES_DIR = "samples"


def zeroshot_samples(records: list[RunRecord], out: Path) -> dict[tuple[str, object], dict]:
    """Per-question zero-shot results of the models the records evaluated, ``(model key, limit) -> tasks``.

    Read from the run cache each record's prune used (``<cache>/eval/*/samples.json``, written by the eval
    stage) and from earlier copies in ``<out>/samples/``; every one found is copied there (so that the study
    can be redrawn, and its tests re-run, without that cache). Results of the same model and limit with
    different task sets are merged task by task.
    """
    found: dict[tuple[str, object], dict] = {}
    for path in _samples_files(records, out):
        content = read_json(path)
        entry = (content["source"], (content.get("zeroshot") or {}).get("limit"))
        if entry in found and content["tasks"].keys() <= found[entry]["tasks"].keys():
            continue
        merged = {**content, "tasks": {**found.get(entry, {}).get("tasks", {}), **content["tasks"]}}
        found[entry] = merged
    keep = {(e.key, r.spec("eval.zeroshot.limit")) for r in records for e in r.evaluations}
    found = {entry: content for entry, content in found.items() if entry in keep}
    for (source, limit), content in found.items():
        write_json_atomic(out / SAMPLES_DIR / f"{source}-{limit}.json", content)
    return {entry: content["tasks"] for entry, content in found.items()}


def _samples_files(records: list[RunRecord], out: Path) -> list[Path]:
    """``samples.json`` files of the run caches the records used, then the copies below ``out``."""
    roots = {Path(r.prune.path).parents[1] for r in records if r.prune is not None and r.prune.path}
    files = [path for root in sorted(roots) for path in sorted((root / "eval").glob("*/samples.json"))]
    return files + sorted((out / SAMPLES_DIR).glob("*.json"))
