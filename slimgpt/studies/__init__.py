"""``slimgpt-figures STUDY PATHS... --out DIR``: the markdown table and PNG figures of a paper study.

Each study is one module here (conf/experiment/paper_*.yaml × conf/sweep/paper_*.yaml): it reads the
results.json records of its sweep, builds its table and draws its figures with :mod:`slimgpt.plots`.

    fig2      prune only layer 0: per-layer output error vs depth, perplexity per share of layer 0
    table6    layer-ratio schedules: params / perplexity table, per-layer ratios (Figure 4, with
              LLM-Pruner's layer range for comparison), per-layer output error, perplexity bars
    ablation  head score × FFN group size: perplexity, OBS errors and prune time per variant
    table1    method × pruning ratio × recovery: params, perplexity, the 7 tasks, average; PPL and
              zero-shot average vs ratio
    fig3      calibration samples / sequence length: perplexity (and zero-shot average) curves

Writes ``<out>/<study>.md`` (the study table, then the full ``slimgpt-report`` table) and
``<out>/<study>_*.png``; prints the study table. Every finished record it used is copied to
``<out>/records/`` and read back on the next call, so a study can be redrawn, and extended by a new sweep,
after the sweep folders that made its earlier rows are gone.

    slimgpt-figures table6 outputs/multiruns/paper_table6 --out experiments/table6_schedules

A new study is a module with ``SWEEPS`` (the sweeps it reads) and ``make(records, out) -> str`` (draws
into ``out``, returns the markdown text), named in :data:`STUDIES`.
"""

import argparse
import hashlib
import importlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from slimgpt.io import write_text_atomic
from slimgpt.runner.record import RESULTS_FILE, RunRecord
from slimgpt.runner.summary import finished, identity, readable_records, table_rows, to_markdown

#: The registered studies (module names in this package).
STUDIES = ("fig2", "table6", "ablation", "table1", "fig3")
#: Where a study keeps copies of the records it was drawn from (below its ``--out`` folder).
RECORDS_DIR = "records"


def study(name: str) -> ModuleType:
    """The module of study ``name``."""
    if name not in STUDIES:
        raise ValueError(f"unknown study '{name}'; choose one of {', '.join(STUDIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def make_study(name: str, paths: Iterable[Path], out: Path) -> str:
    """Writes ``<out>/<name>.md`` and the study's PNGs from the results below ``paths`` and the records stored
    in ``<out>/records/`` by earlier calls (:func:`kept_records`); returns the table.

    Unreadable results.json files are named on stderr and left out.
    """
    module = study(name)
    done, unfinished = kept_records(paths, out)
    text = module.make(done, out)
    full = to_markdown(table_rows(done + unfinished))
    write_text_atomic(out / f"{name}.md", f"{text}\n\nAll runs (`slimgpt-report`):\n\n{full}\n")
    return text


def kept_records(paths: Iterable[Path], out: Path) -> tuple[list[RunRecord], list[RunRecord]]:
    """``(the finished records, each model once, the unfinished ones)`` below ``paths`` and in
    ``<out>/records/``; every finished one is (re)stored there, so that the study can be redrawn, and extended
    by a later sweep, without ``paths``. Raises ``ValueError`` when none finished."""
    paths, stored = list(paths), out / RECORDS_DIR
    records = readable_records(paths + ([stored] if stored.is_dir() else []))
    done = finished(records)
    if not done:
        raise ValueError(f"no finished results.json under {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    for record in done:
        record.save(stored / record_id(record) / RESULTS_FILE)
    return done, [r for r in records if r.status != "done"]


def record_id(record: RunRecord) -> str:
    """A stable folder name for a stored record: a hash of what :func:`slimgpt.runner.summary.finished` tells
    records apart by (:func:`slimgpt.runner.summary.identity`; a record without an evaluation: its name and
    start time)."""
    key = identity(record) or (record.name, record.started)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``slimgpt-figures``."""
    parser = argparse.ArgumentParser(prog="slimgpt-figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=sorted(STUDIES), help="which paper table/figure to draw")
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders or results.json files")
    parser.add_argument("--out", type=Path, required=True, help="folder for <study>.md and the PNGs")
    args = parser.parse_args(argv)
    try:
        text = make_study(args.study, args.paths, args.out)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    sys.stdout.write(text + "\n")
    return 0
