"""``slimgpt-report``: collect the results.json files of runs or sweeps into one markdown or CSV table.

    slimgpt-report outputs/multiruns/calib_size            # markdown table on stdout
    slimgpt-report outputs/multiruns --format csv --out table.csv

One row per evaluated model: each run's final model, plus dense-baseline rows (identical baseline rows
of several runs of a sweep appear once). Failed or interrupted runs appear with their status.
"""

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from .results import read_json

RESULTS_FILE = "results.json"
_FIXED = ("run", "status", "model", "method", "ratio", "schedule", "calib", "finetune", "params")
_HIDDEN_METRICS = {"params", "eval_seconds"}
_PER_RUN = ("run", "status", "overrides")


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


def record_rows(record: dict) -> list[dict]:
    """The table rows of one results.json record (see the module docstring)."""
    specs = record.get("specs", {})
    base = {"run": record.get("name"), "status": record.get("status"),
            "model": (specs.get("model") or {}).get("name"), "overrides": " ".join(record.get("overrides", []))}
    rows = []
    for entry in record.get("evaluations", []):
        row = dict(base, method=entry["model"], params=entry["metrics"].get("params"), _key=entry["key"])
        if entry["role"] != "dense":
            row.update(_method_columns(specs, record))
        rows.append({**row, **{k: v for k, v in entry["metrics"].items() if k not in _HIDDEN_METRICS}})
    if not rows:  # failed before any evaluation, or no eval stage: still one visible row
        rows.append(dict(base, method=None, _key=None))
    return rows


def _method_columns(specs: dict, record: dict) -> dict:
    """Pruning/recovery settings of a non-dense row."""
    columns = {}
    if "prune" in record.get("stages", []) and specs.get("pruner"):
        calib = specs["calib"]
        columns.update(ratio=specs["pruner"]["ratio"], schedule=specs["schedule"]["name"],
                       calib=f"{calib['source']}:{calib['num_samples']}x{calib['seq_len']}")
    stages = (specs.get("finetune") or {}).get("stages") or []
    if "finetune" in record.get("stages", []) and stages:
        columns["finetune"] = "+".join(f"lora:{s['data']}" for s in stages)
    return columns


def collect(paths: Iterable[Path]) -> list[dict]:
    """Rows of every results.json below ``paths``; repeated dense-baseline rows are kept once."""
    rows, dense_seen = [], set()
    for file in find_results(paths):
        for row in record_rows(read_json(file)):
            if row.get("method") == "dense":
                identity = json.dumps({k: v for k, v in row.items() if k not in _PER_RUN}, sort_keys=True, default=str)
                if identity in dense_seen:
                    continue
                dense_seen.add(identity)
            rows.append(row)
    return rows


def columns(rows: list[dict]) -> list[str]:
    """Fixed columns, then perplexities, then zero-shot metrics (average first), then the overrides."""
    metric_keys = {k for row in rows for k in row if k not in _FIXED and k not in ("overrides", "_key")}
    ppl = sorted(k for k in metric_keys if k.startswith("ppl/"))
    zeroshot = sorted((k for k in metric_keys if k.startswith("zeroshot/")), key=lambda k: (k != "zeroshot/avg", k))
    rest = sorted(metric_keys - set(ppl) - set(zeroshot))
    used = [c for c in _FIXED if any(row.get(c) is not None for row in rows)]
    return used + ppl + zeroshot + rest + (["overrides"] if any(row.get("overrides") for row in rows) else [])


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) and value >= 10**6:
        return f"{value / 1e6:.1f}M"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    """A GitHub-flavoured markdown table of ``rows``."""
    names = columns(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in names) + " |" for row in rows]
    return "\n".join(lines)


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
        parser.error(f"no {RESULTS_FILE} found under {', '.join(map(str, args.paths))}")
    text = to_markdown(rows) + "\n" if args.format == "markdown" else to_csv(rows)
    if args.out is None:
        sys.stdout.write(text)
    else:
        _write_text_atomic(args.out, text)
    return 0


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
