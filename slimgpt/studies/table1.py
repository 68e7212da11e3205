"""Table 1: pruning ratio × method × recovery with params, perplexity, the 7 zero-shot tasks and their
average (dense row first); perplexity and zero-shot average vs the achieved ratio per method and recovery.

    slimgpt experiment=paper_table1 sweep=paper_table1
    slimgpt-figures table1 outputs/multiruns/paper_table1 --out experiments/table1_methods
"""

import statistics
from pathlib import Path

from slimgpt import plots
from slimgpt.eval.zeroshot import TASKS as ZEROSHOT_TASKS
from slimgpt.runner.record import RunRecord
from slimgpt.runner.summary import millions
from slimgpt.tables import markdown_table

from .common import most_common, ppl_key, pruned, settings

SWEEPS = ("paper_table1", "paper_table1_llama7b")
XLABEL = "fraction of total parameters removed"

#: label -> (achieved ratios, values): one curve per method and recovery
Series = dict[str, tuple[list, list]]


def tuned(record: RunRecord) -> bool:
    """Whether the record's model went through a recovery (LoRA) stage."""
    return bool(record.recovery_data())


def method_label(record: RunRecord, common_schedule: str | None) -> str:
    """The method's name, plus its schedule and layer range where they differ from the table's usual setting
    (e.g. LLM-Pruner in its own setting: ``llm_pruner (uniform, layers 4-27)``)."""
    extras = []
    if record.spec("schedule.name") != common_schedule:
        extras.append(str(record.spec("schedule.name")))
    layer_range = record.spec("pruner.engine.layer_range")
    if layer_range:
        extras.append(f"layers {layer_range[0]}-{layer_range[1] - 1}")
    return record.spec("pruner.method") + (f" ({', '.join(extras)})" if extras else "")


def no_boolq(tasks: list[str]) -> list[str]:
    """The tasks other than BoolQ when BoolQ is among several (BoolQ alone swings with a small model's yes/no
    bias, so the tables also give the average without it); else empty."""
    return [t for t in tasks if t != "boolq"] if "boolq" in tasks and len(tasks) > 1 else []


def task_cells(record: RunRecord, tasks: list[str], role: str = "final") -> list[float | None]:
    """Per-task accuracies, their average as recorded, and the average without BoolQ (when it applies)."""
    if not tasks:
        return [None]
    values = {t: record.metric(f"zeroshot/{t}", role) for t in tasks}
    others = [values[t] for t in no_boolq(tasks)]
    rest = [statistics.fmean(others)] if others and None not in others else ([None] if others else [])
    return [*values.values(), record.metric("zeroshot/avg", role), *rest]


def read(records: list[RunRecord], key: str, tasks: list[str]) -> tuple[list[list], Series, Series, Series]:
    """Pruned-model rows by (ratio, method, recovery) and the perplexity, zero-shot average and average
    without BoolQ per method and recovery, against the achieved ratio."""
    rows, ppl_series, zs_series, rest_series = [], {}, {}, {}
    common_schedule = most_common(r.spec("schedule.name") for r in records)
    for record in sorted(records, key=lambda r: (r.spec("pruner.ratio"), method_label(r, common_schedule),
                                                 tuned(r))):
        prune, method = pruned(record), method_label(record, common_schedule)
        label = f"{method} {'+LoRA' if tuned(record) else 'w/o tune'}"
        achieved, avg = prune.value("achieved_ratio"), record.metric("zeroshot/avg")
        cells = task_cells(record, tasks)
        rows.append([f"{record.spec('pruner.ratio'):.0%}", method, "LoRA" if tuned(record) else "no",
                     millions(prune.value("params_after")), record.metric(key), *cells])
        rest = cells[-1] if no_boolq(tasks) else None
        for series, value in ((ppl_series, record.metric(key)), (zs_series, avg), (rest_series, rest)):
            if value is not None:
                xs, ys = series.setdefault(label, ([], []))
                xs.append(achieved)
                ys.append(value)
    return rows, ppl_series, zs_series, rest_series


def make(records: list[RunRecord], out: Path) -> str:
    """Draws ``table1_ppl.png`` and, with zero-shot results, ``table1_zeroshot*.png``; returns table + caption."""
    key = ppl_key(records)
    tasks = [t for t in ZEROSHOT_TASKS if any(r.metric(f"zeroshot/{t}") is not None for r in records)]
    dense = next((r for r in records if r.metric(key, "dense") is not None), None)
    rows = []
    dense_cells = None if dense is None else task_cells(dense, tasks, "dense")
    if dense is not None:
        rows.append(["0%", "dense", "", millions(dense.metric("params", "dense")), dense.metric(key, "dense"),
                     *dense_cells])
    pruned_rows, ppl_series, zs_series, rest_series = read(records, key, tasks)
    limit = records[0].spec("eval.zeroshot.limit")
    caption = f"Scaled: {settings(records[0])}" + (f"; zero-shot on the first {limit} questions per task"
                                                   if tasks and limit else "") + "."
    plots.plot_xy(ppl_series, out / "table1_ppl.png", xlabel=XLABEL, ylabel=key, logy=True,
                  reference=None if dense is None else dense.metric(key, "dense"),
                  title="Perplexity vs pruning ratio (Table 1)", caption=caption)
    if zs_series:
        plots.plot_xy(zs_series, out / "table1_zeroshot.png", xlabel=XLABEL,
                      ylabel="7-task zero-shot average" if len(tasks) == 7 else "zero-shot average",
                      reference=None if dense is None else dense.metric("zeroshot/avg", "dense"),
                      title="Zero-shot average vs pruning ratio (Table 1)", caption=caption)
    if rest_series:
        plots.plot_xy(rest_series, out / "table1_zeroshot_no_boolq.png", ylabel="zero-shot average without BoolQ",
                      xlabel=XLABEL, reference=None if dense_cells is None else dense_cells[-1],
                      title="Zero-shot average without BoolQ vs pruning ratio", caption=caption)
    header = ["ratio", "method", "tune", "params", key, *tasks, "avg", *(["avg w/o BoolQ"] if no_boolq(tasks) else [])]
    return markdown_table(header, rows + pruned_rows) + "\n\n" + caption
