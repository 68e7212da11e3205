"""What several studies share: the perplexity metric they report, the dense baseline, the caption line."""

from collections import Counter
from collections.abc import Iterable

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
