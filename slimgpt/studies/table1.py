"""Table 1: pruning ratio × method × recovery with params, perplexity, the 7 zero-shot tasks and their
average (dense row first); perplexity and zero-shot average vs the achieved ratio per method and recovery.
Each row names its setting (schedule or the method's own allocation, layer range, calibration tokens).

Key rows: records evaluated on more questions per task than the rest (e.g. ``eval.zeroshot.limit=500``)
form a second table, accuracy ± standard error per task and on the average, and a table of paired tests
(``slimgpt.eval.significance``) on the per-question results the eval stage stored: every pruned key row
against dense, and every two key rows at the same ratio.

    slimgpt experiment=paper_table1 sweep=paper_table1
    slimgpt-figures table1 outputs/multiruns/paper_table1 --out experiments/table1_methods
"""

import itertools
import statistics
from pathlib import Path

from slimgpt import plots
from slimgpt.eval.significance import compare, versus_chance
from slimgpt.eval.zeroshot import TASKS as ZEROSHOT_TASKS
from slimgpt.runner.record import RunRecord
from slimgpt.runner.summary import millions
from slimgpt.tables import markdown_table

from .common import calibration, most_common, ppl_key, pruned, settings, zeroshot_samples

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


#: Accuracy of guessing among the answer choices (ARC has a few 3- and 5-choice questions; most have 4).
CHANCE = {"boolq": 0.5, "piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25, "arc_easy": 0.25,
          "arc_challenge": 0.25, "openbookqa": 0.25}

#: Methods that allocate the per-layer widths themselves (the schedule group is not used).
OWN_ALLOCATION = {"flap": "global search (AL-AM)"}


def setting(record: RunRecord) -> str:
    """A pruned row's setting: its schedule (or the method's own allocation), layer range and calibration."""
    layer_range = record.spec("pruner.engine.layer_range")
    layers = f"layers {layer_range[0]}-{layer_range[1] - 1}" if layer_range else "all layers"
    schedule = OWN_ALLOCATION.get(record.spec("pruner.method"), record.spec("schedule.name"))
    if record.spec("pruner.options.layer_ratios") not in (None, "schedule"):  # slimgpt+: measured allocation
        schedule = f"layer ratios: {record.spec('pruner.options.layer_ratios')}"
    return f"{schedule}, {layers}, calib {calibration(record)}"


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
        rows.append([f"{record.spec('pruner.ratio'):.0%}", method, setting(record), "LoRA" if tuned(record) else "no",
                     millions(prune.value("params_after")), record.metric(key), *cells])
        rest = cells[-1] if no_boolq(tasks) else None
        for series, value in ((ppl_series, record.metric(key)), (zs_series, avg), (rest_series, rest)):
            if value is not None:
                xs, ys = series.setdefault(label, ([], []))
                xs.append(achieved)
                ys.append(value)
    return rows, ppl_series, zs_series, rest_series


def zeroshot_limit(record: RunRecord) -> int | None:
    """Questions per task of a record's zero-shot evaluation (None: all, or no zero-shot)."""
    return record.spec("eval.zeroshot.limit") if record.metric("zeroshot/avg") is not None else None


#: Questions per task from which a record is a key row even when every record used that many (a study folder
#: that holds only the key rows, e.g. experiments/table1_methods/key_rows).
KEY_ROW_QUESTIONS = 500


def split_key_rows(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """``(table records, key-row records)``: the key rows are the records evaluated on the most questions per
    task, when the records use more than one limit or that limit is at least :data:`KEY_ROW_QUESTIONS`; else
    there are none."""
    limits = {zeroshot_limit(r) for r in records} - {None}
    if not limits or (len(limits) < 2 and max(limits) < KEY_ROW_QUESTIONS):
        return records, []
    most = max(limits)
    return [r for r in records if zeroshot_limit(r) != most], [r for r in records if zeroshot_limit(r) == most]


def make(records: list[RunRecord], out: Path) -> str:
    """Draws ``table1_ppl.png`` and, with zero-shot results, ``table1_zeroshot*.png``; returns the table with its
    caption, then the key-row tables (if any)."""
    everything = records
    records, key_rows = split_key_rows(records)
    parts = [main_table(records, out)] if records else []
    parts += [key_row_tables(key_rows, out)] if key_rows else []
    chance = chance_table(everything, out)
    return "\n\n".join(parts + ([chance] if chance else []))


def chance_table(records: list[RunRecord], out: Path) -> str:
    """The dense model against chance per task and number of questions, from its per-question results:
    accuracy with its Wilson 95% interval and the one-sided binomial p-value of beating chance."""
    samples = zeroshot_samples(records, out)
    dense = {(r.evaluation("dense").key, zeroshot_limit(r)) for r in records if r.evaluation("dense") is not None}
    rows = []
    for entry in sorted((e for e in samples if e in dense), key=lambda e: (e[1] is None, e[1] or 0)):
        for task in (t for t in ZEROSHOT_TASKS if t in samples[entry]):
            test = versus_chance(samples[entry][task]["correct"], CHANCE[task])
            rows.append([task, test["n"], samples[entry][task]["metric"], f"{test['accuracy']:.3f}",
                         f"[{test['ci_low']:.3f}, {test['ci_high']:.3f}]", test["chance"], f"{test['p_value']:.2g}",
                         "above chance" if test["p_value"] < 0.05 else "not above chance"])
    if not rows:
        return ""
    header = ["task", "questions", "metric", "dense", "95% CI (Wilson)", "chance", "p (one-sided)", "at p < 0.05"]
    return markdown_table(header, rows) + "\n\nThe dense model against chance (1 / answer choices), per task."


def main_table(records: list[RunRecord], out: Path) -> str:
    """The method × ratio × recovery table with its caption; draws the figures."""
    key = ppl_key(records)
    tasks = [t for t in ZEROSHOT_TASKS if any(r.metric(f"zeroshot/{t}") is not None for r in records)]
    dense = next((r for r in records if r.metric(key, "dense") is not None), None)
    rows = []
    dense_cells = None if dense is None else task_cells(dense, tasks, "dense")
    if dense is not None:
        rows.append(["0%", "dense", "", "", millions(dense.metric("params", "dense")), dense.metric(key, "dense"),
                     *dense_cells])
    pruned_rows, ppl_series, zs_series, rest_series = read(records, key, tasks)
    limit = most_common(zeroshot_limit(r) for r in records if zeroshot_limit(r) is not None)
    caption = f"Scaled: {settings(records[0], calib=False)}" + (f"; zero-shot on the first {limit} questions per task"
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
    header = ["ratio", "method", "setting", "tune", "params", key, *tasks, "avg",
              *(["avg w/o BoolQ"] if no_boolq(tasks) else [])]
    return markdown_table(header, rows + pruned_rows) + "\n\n" + caption


def with_stderr(record: RunRecord, name: str, role: str) -> str | None:
    """``zeroshot/<name>`` as ``0.634 ± 0.022`` (its standard error), or None when absent."""
    value, stderr = record.metric(f"zeroshot/{name}", role), record.metric(f"zeroshot_stderr/{name}", role)
    if value is None:
        return None
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")


def key_row_tables(records: list[RunRecord], out: Path) -> str:
    """The key rows (accuracy ± stderr per task and on the average) and the paired tests between them."""
    key = ppl_key(records)
    tasks = [t for t in ZEROSHOT_TASKS if any(r.metric(f"zeroshot/{t}") is not None for r in records)]
    common_schedule = most_common(r.spec("schedule.name") for r in records)
    dense = next((r for r in records if r.metric("zeroshot/avg", "dense") is not None), None)
    rows, labels = [], {}  # labels: row label -> (model key, limit) of its per-question results
    averages = {}  # row label -> (zero-shot average, its standard error)
    if dense is not None:
        rows.append(["0%", "dense", "", millions(dense.metric("params", "dense")), dense.metric(key, "dense"),
                     *(with_stderr(dense, t, "dense") for t in [*tasks, "avg"])])
        labels["dense"] = (dense.evaluation("dense").key, zeroshot_limit(dense))
        averages["dense"] = (dense.metric("zeroshot/avg", "dense"), dense.metric("zeroshot_stderr/avg", "dense"))
    for record in sorted(records, key=lambda r: (r.spec("pruner.ratio"), method_label(r, common_schedule))):
        ratio, method = f"{record.spec('pruner.ratio'):.0%}", method_label(record, common_schedule)
        rows.append([ratio, method + (" +LoRA" if tuned(record) else ""), setting(record),
                     millions(pruned(record).value("params_after")), record.metric(key),
                     *(with_stderr(record, t, "final") for t in [*tasks, "avg"])])
        label = f"{ratio} {rows[-1][1]}"
        labels[label] = (record.evaluation("final").key, zeroshot_limit(record))
        averages[label] = (record.metric("zeroshot/avg"), record.metric("zeroshot_stderr/avg"))
    limit = zeroshot_limit(records[0])
    table = markdown_table(["ratio", "method", "setting", "params", key, *tasks, "avg"], rows)
    caption = (f"Key rows: zero-shot on the first {limit} questions per task, accuracy ± standard error "
               f"(the average's combines the tasks' as independent).")
    samples = zeroshot_samples(records, out)
    by_label = {label: samples[entry] for label, entry in labels.items() if entry in samples}
    key_rows_figure(averages, len(tasks), limit, out / "table1_key_rows.png")
    return table + "\n\n" + caption + "\n\n" + significance_table(list(labels), by_label, tasks)


def key_rows_figure(averages: dict[str, tuple[float | None, float | None]], tasks: int, limit: int | None,
                    out: Path) -> None:
    """``table1_key_rows.png``: each key row's zero-shot average with its 95% interval (±1.96 standard errors),
    when every row has both (``averages``: row label -> (average, standard error))."""
    if not averages or any(value is None or stderr is None for value, stderr in averages.values()):
        return
    plots.plot_bars({label: value for label, (value, _) in averages.items()}, out,
                    errors={label: 1.96 * stderr for label, (_, stderr) in averages.items()},
                    ylabel=f"{tasks}-task zero-shot average",
                    title=f"Table 1 key rows: zero-shot average, {limit} questions per task",
                    caption="Bars: 95% intervals (±1.96 standard errors, tasks taken as independent). Which "
                            "differences are real: the paired tests (same questions) in the table.")


def row_pairs(labels: list[str]) -> list[tuple[str, str]]:
    """Every pruned row against dense, then every two rows at the same ratio (first word of the label)."""
    pruned_labels = [label for label in labels if label != "dense"]
    pairs = [(label, "dense") for label in pruned_labels if "dense" in labels]
    for a, b in itertools.combinations(pruned_labels, 2):
        if a.split()[0] == b.split()[0]:
            pairs.append((a, b))
    return pairs


def significance_table(labels: list[str], samples: dict[str, dict], tasks: list[str]) -> str:
    """Paired tests between the key rows (``labels``) on their per-question results (``samples``: label ->
    task -> results); rows without them are left out and named."""
    have = [label for label in labels if label in samples and all(t in samples[label] for t in tasks)]
    missing = [label for label in labels if label not in have]
    pairs = row_pairs(have)
    if not pairs:
        return "No paired tests: per-question results missing for " + ", ".join(missing) + "."
    results = compare(samples, tasks, pairs)
    rows = [[f"{r['a']} vs {r['b']}", *(f"{r['tasks'][t]['diff']:+.3f} (p={r['tasks'][t]['p_value']:.2g})"
                                         for t in tasks),
             f"{r['avg']['diff']:+.3f} [{r['avg']['ci_low']:+.3f}, {r['avg']['ci_high']:+.3f}]",
             f"{r['avg']['p_value']:.2g}", ", ".join(r["significant"]) or "none",
             ", ".join(r["holm_significant"]) or "none"] for r in results]
    header = ["pair (A vs B)", *[f"{t}: A−B (McNemar p)" for t in tasks], "avg: A−B [95% CI]", "avg p",
              "p < 0.05", "p < 0.05 after Holm"]
    note = (f"Paired on the same questions: exact McNemar per task, paired bootstrap (10,000 draws) of the "
            f"{len(tasks)}-task average; Holm's correction over all {len(results) * (len(tasks) + 1)} tests."
            + (f" Left out (no per-question results): {', '.join(missing)}." if missing else ""))
    return markdown_table(header, rows) + "\n\n" + note
