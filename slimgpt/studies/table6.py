"""Table 6 / Figure 4: the layer-ratio schedules at the same total budget (≈50%); params / perplexity table,
per-layer ratios (with LLM-Pruner's layer range for comparison), per-layer output error, perplexity bars.

    slimgpt experiment=paper_table6 sweep=paper_table6
    slimgpt-figures table6 outputs/multiruns/paper_table6 --out experiments/table6_schedules
"""

from pathlib import Path

from slimgpt import plots
from slimgpt.runner.record import PruneEntry, RunRecord
from slimgpt.runner.summary import millions
from slimgpt.tables import markdown_table

from .common import dense_line, dense_metric, ppl_key, pruned, settings

SWEEPS = ("paper_table6",)
#: Row order: the paper's Table 6 order.
ORDER = ["log_increase", "linear_increase", "uniform", "log_decrease", "linear_decrease"]
HEADER = ["schedule", "params", "total ratio", "layer ratio", "{key}", "zero-shot avg", "prune s"]


def llm_pruner_layer_ratios(prune: PruneEntry) -> list[float]:
    """Per-layer ratios LLM-Pruner's default setting gives for the same total budget as ``prune``:
    uniform inside its layer range (first 4 and last 2 layers dense), computed from the report's layer sizes."""
    from slimgpt.pruning.engine import plan_ratios
    from slimgpt.pruning.methods.llm_pruner import default_layer_range
    from slimgpt.pruning.schedules import Schedule

    weights = [params[0] for params in prune.layer_values("params")]
    total = prune.value("params_before")
    removed = total - prune.value("params_after")
    return plan_ratios(removed / total, "total", total, weights, Schedule("uniform"), default_layer_range(len(weights)))


def ordered(records: list[RunRecord]) -> list[RunRecord]:
    """``records`` in :data:`ORDER` of their schedules (unknown schedules last)."""
    return sorted(records, key=lambda r: ORDER.index(r.spec("schedule.name")) if r.spec("schedule.name") in
                  ORDER else len(ORDER))


def read(records: list[RunRecord], key: str) -> tuple[list[list], dict, dict, dict]:
    """Table rows and, per schedule, its per-layer ratios, per-layer errors and perplexity (records in order)."""
    rows, ratios, errors, ppls = [], {}, {}, {}
    for record in records:
        name, prune = record.spec("schedule.name"), pruned(record)
        ppl = record.metric(key)
        rows.append([name, millions(prune.value("params_after")), f"{prune.value('achieved_ratio'):.2%}",
                     f"{prune.value('layer_ratio'):.2%}", ppl, record.metric("zeroshot/avg"),
                     round(prune.value("seconds"))])
        ratios[f"SlimGPT {name}"] = prune.layer_values("achieved_ratio")
        if any(e is not None for e in prune.layer_values("output_error")):
            errors[name] = prune.layer_values("output_error")
        ppls[name] = ppl
    first = pruned(records[0])
    if len(first.layer_values("params")) >= 7:  # LLM-Pruner's range keeps 4 + 2 layers dense
        ratios["LLM-Pruner (uniform in its layer range)"] = llm_pruner_layer_ratios(first)
    return rows, ratios, errors, ppls


def make(records: list[RunRecord], out: Path) -> str:
    """Draws ``fig4_layer_ratios.png``, ``table6_layer_error.png`` (with errors), ``table6_ppl.png``; returns
    the table, the dense line and the caption."""
    key = ppl_key(records)
    dense = dense_metric(records, key)
    records = ordered(records)
    rows, ratios, errors, ppls = read(records, key)
    caption = "Scaled: " + settings(records[0]) + ", no recovery."
    plots.plot_layer_curves(ratios, out / "fig4_layer_ratios.png", ylabel="fraction of the layer's parameters removed",
                            steps=True, title="Per-layer pruning ratio at the same total budget (Figure 4)",
                            caption=caption)
    if errors:
        plots.plot_layer_curves(errors, out / "table6_layer_error.png", ylabel="‖y − y_dense‖² / ‖y_dense‖²",
                                logy=True, title="Output error vs depth per schedule", caption=caption)
    plots.plot_bars(ppls, out / "table6_ppl.png", ylabel=key, logy=True, reference=dense,
                    title="Perplexity per layer-ratio schedule (Table 6)", caption=caption)
    header = [name.format(key=key) for name in HEADER]
    return markdown_table(header, rows) + dense_line(key, dense) + "\n\n" + caption
