"""``slimgpt-report``: collect the results.json files of runs or sweeps into one markdown or CSV table.

    slimgpt-report outputs/multiruns/calib_size            # markdown table on stdout
    slimgpt-report outputs/multiruns --format csv --out table.csv

One row per evaluated model: each run's final model, plus dense-baseline rows (identical baseline rows
of several runs of a sweep appear once). Failed or interrupted runs appear with their status; a
``running`` run whose process is gone from this host appears as ``killed``. An unreadable results.json
is named on stderr and left out.

The general readers of run records live here too (the studies of ``slimgpt-figures`` use them):
:func:`read_records` (every record below some folders), :func:`finished` (one record per evaluated model).
"""

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from slimgpt.io import write_text_atomic
from slimgpt.tables import markdown_table

from .record import RESULTS_FILE, RunRecord

_FIXED = ("run", "status", "model", "method", "ratio", "schedule", "calib", "finetune", "params")
_HIDDEN_METRICS = {"params", "eval_seconds"}
_PER_RUN = ("run", "status", "overrides")

# ----------------------------------------------------------------------------------------------- reading


def find_results(paths: Iterable[Path]) -> list[Path]:
    """Every results.json at or below ``paths`` (files are taken as given), in a stable order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(path.rglob(RESULTS_FILE))
        else:
            raise FileNotFoundError(f"no results file or folder at '{path}'")
    return sorted(set(found), key=_natural_key)


def _natural_key(path: Path) -> list:
    """Sorts ``.../2/results.json`` before ``.../10/results.json``."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def read_records(paths: Iterable[Path]) -> tuple[list[RunRecord], list[str]]:
    """The records of every results.json below ``paths``, and one message per file that could not be read
    (path and reason: a truncated file, not JSON, not a run record, a newer format)."""
    records, skipped = [], []
    for file in find_results(paths):
        try:
            records.append(RunRecord.load(file))
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            skipped.append(f"{file}: {error}")
    return records, skipped


def readable_records(paths: Iterable[Path]) -> list[RunRecord]:
    """:func:`read_records`, naming every unreadable results.json on stderr."""
    records, skipped = read_records(paths)
    for message in skipped:
        print(f"skipped an unreadable {RESULTS_FILE}: {message}", file=sys.stderr)
    return records


def finished(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The records that finished (status ``done``), each evaluated model once, in the given order.

    A model evaluated by several runs (a re-run, a job repeated in another sweep folder and served from the
    run cache, or a study's stored copy of its record) appears once: records are keyed by their final (else
    dense) evaluation's signature and evaluation settings (the same model evaluated on more questions is
    another row).
    """
    kept, seen = [], set()
    for record in records:
        key = identity(record) or id(record)
        if record.status == "done" and key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def identity(record: RunRecord) -> tuple[str, str] | None:
    """What tells evaluated models apart (see :func:`finished`): the final (else dense) evaluation's signature
    and the evaluation settings as JSON; None for a record without an evaluation."""
    evaluation = record.evaluation("final") or record.evaluation("dense")
    if evaluation is None:
        return None
    return evaluation.key, json.dumps(record.spec("eval"), sort_keys=True, default=str)


def load_records(paths: Iterable[Path]) -> list[RunRecord]:
    """:func:`finished` records below ``paths``; unreadable files are named on stderr and left out."""
    return finished(readable_records(paths))


# ----------------------------------------------------------------------------------------------- rows


def record_rows(record: RunRecord) -> list[dict]:
    """The table rows of one run record (see the module docstring)."""
    base = {"run": record.name, "status": record.status_now(), "model": record.spec("model.name"),
            "overrides": " ".join(record.overrides)}
    rows = []
    for entry in record.evaluations:
        row = dict(base, method=entry.model, params=entry.metrics.get("params"), _key=entry.key)
        if entry.role != "dense":
            row.update(_method_columns(record))
        rows.append({**row, **{k: v for k, v in entry.metrics.items() if k not in _HIDDEN_METRICS}})
    if not rows:  # failed before any evaluation, or no eval stage: still one visible row
        rows.append(dict(base, method=None, _key=None))
    return rows


def _method_columns(record: RunRecord) -> dict:
    """Pruning/recovery settings of a non-dense row."""
    columns = {}
    if "prune" in record.stages and record.spec("pruner"):
        calib = [record.spec(f"calib.{key}") for key in ("source", "num_samples", "seq_len")]
        columns.update(ratio=record.spec("pruner.ratio"), schedule=record.spec("schedule.name"),
                       calib="{}:{}x{}".format(*calib))
    if record.recovery_data():
        columns["finetune"] = "+".join(f"lora:{data}" for data in record.recovery_data())
    return columns


def table_rows(records: Iterable[RunRecord]) -> list[dict]:
    """Rows of ``records``; repeated dense-baseline rows are kept once."""
    rows, dense_seen = [], set()
    for record in records:
        for row in record_rows(record):
            if row.get("method") == "dense":
                identity = json.dumps({k: v for k, v in row.items() if k not in _PER_RUN}, sort_keys=True, default=str)
                if identity in dense_seen:
                    continue
                dense_seen.add(identity)
            rows.append(row)
    return rows


def collect(paths: Iterable[Path]) -> list[dict]:
    """:func:`table_rows` of every results.json below ``paths``; unreadable ones are named on stderr."""
    return table_rows(readable_records(paths))


def columns(rows: list[dict]) -> list[str]:
    """Fixed columns, then perplexities, then zero-shot metrics (average first), then the overrides."""
    metric_keys = {k for row in rows for k in row if k not in _FIXED and k not in ("overrides", "_key")}
    ppl = sorted(k for k in metric_keys if k.startswith("ppl/"))
    zeroshot = sorted((k for k in metric_keys if k.startswith("zeroshot/")), key=lambda k: (k != "zeroshot/avg", k))
    rest = sorted(metric_keys - set(ppl) - set(zeroshot))
    used = [c for c in _FIXED if any(row.get(c) is not None for row in rows)]
    return used + ppl + zeroshot + rest + (["overrides"] if any(row.get("overrides") for row in rows) else [])


# ----------------------------------------------------------------------------------------------- output


def millions(value: float | None) -> str | None:
    """A parameter count as ``134.5M`` (``None`` stays ``None``)."""
    return None if value is None else f"{value / 1e6:.1f}M"


def _display(value: object) -> object:
    """Large counts (parameters) in millions; everything else as it is."""
    return millions(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 10**6 else value


def to_markdown(rows: list[dict]) -> str:
    """A GitHub-flavoured markdown table of ``rows``."""
    names = columns(rows)
    return markdown_table(names, [[_display(row.get(c)) for c in names] for row in rows])


def to_csv(rows: list[dict]) -> str:
    """CSV of ``rows`` with full-precision numbers."""
    names = columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``slimgpt-report``."""
    parser = argparse.ArgumentParser(prog="slimgpt-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="results.json files or folders to search")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="table format")
    parser.add_argument("--out", type=Path, default=None, help="write here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.paths)
    except FileNotFoundError as error:
        parser.error(str(error))
    if not rows:
        parser.error(f"no readable {RESULTS_FILE} found under {', '.join(map(str, args.paths))}")
    text = to_markdown(rows) + "\n" if args.format == "markdown" else to_csv(rows)
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
