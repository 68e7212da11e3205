"""Ablation: head score (grouped Cholesky, exact group error, plain diagonal) × FFN group size; perplexity,
OBS errors and prune time per variant and calibration seed; with several seeds, also the mean and range per
variant (the bars show the mean).

    slimgpt experiment=paper_ablation sweep=paper_ablation
    slimgpt-figures ablation outputs/multiruns/paper_ablation --out experiments/ablations
"""

import statistics
from pathlib import Path

from slimgpt import plots
from slimgpt.runner.record import PruneEntry, RunRecord
from slimgpt.runner.summary import millions
from slimgpt.tables import markdown_table

from .common import dense_line, dense_metric, ppl_key, pruned, settings

SWEEPS = ("paper_ablation",)
#: pruner.options.head_score -> its row label in the ablation table (and the row order)
HEAD_SCORE_LABELS = {
    "cholesky": "grouped Cholesky (paper)",
    "diagonal": "plain diagonal (paper's ablation)",
    "exact": "exact group error (ours)",
}
HEADER = ["head score", "FFN groups", "calib seed", "params", "{key}", "Σ head OBS error", "Σ FFN OBS error",
          "FFN OBS steps", "prune s"]
SUMMARY_HEADER = ["head score", "FFN groups", "seeds", "mean {key}", "min", "max", "mean Σ head OBS error"]


def layer_sum(prune: PruneEntry, dotted: str) -> float | None:
    """Sum over layers of a per-layer report value (e.g. ``attention.obs_error``), ``None`` if none has one."""
    values = [v for v in prune.layer_values(dotted) if isinstance(v, (int, float))]
    return float(sum(values)) if values else None


def _order(record: RunRecord) -> tuple:
    """Head score in label order, then FFN groups from the largest minimum, then the calibration seed."""
    order = {name: i for i, name in enumerate(HEAD_SCORE_LABELS)}
    return (order.get(record.spec("pruner.options.head_score"), len(order)),
            -(record.spec("pruner.options.ffn_min_group") or 0), record.spec("calib.seed") or 0)


def read(records: list[RunRecord], key: str) -> tuple[list[list], dict[tuple, list]]:
    """Table rows and, per variant ``(head label, FFN label, bar label)``, its ``(ppl, Σ head error)`` runs."""
    rows, by_variant = [], {}
    for record in sorted(records, key=_order):
        prune = pruned(record)
        score = record.spec("pruner.options.head_score")
        low, high = record.spec("pruner.options.ffn_min_group"), record.spec("pruner.options.ffn_max_group")
        ffn = f"fixed {high}" if low == high else f"dynamic {high}→{low}"
        heads = HEAD_SCORE_LABELS.get(score, str(score))
        ppl, head_error = record.metric(key), layer_sum(prune, "attention.obs_error")
        rows.append([heads, ffn, record.spec("calib.seed"), millions(prune.value("params_after")), ppl, head_error,
                     layer_sum(prune, "mlp.obs_error"), layer_sum(prune, "mlp.steps"), round(prune.value("seconds"))])
        by_variant.setdefault((heads, ffn, f"{score} / {ffn}"), []).append((ppl, head_error))
    return rows, by_variant


def seed_summary(by_variant: dict[tuple, list]) -> list[list]:
    """Per variant: seeds, mean/min/max perplexity, mean Σ head OBS error."""
    return [[heads, ffn, len(runs), statistics.fmean(p for p, _ in runs), min(p for p, _ in runs),
             max(p for p, _ in runs), statistics.fmean(e for _, e in runs)]
            for (heads, ffn, _), runs in by_variant.items()]


def make(records: list[RunRecord], out: Path) -> str:
    """Draws ``ablation_ppl.png`` (mean perplexity per variant); returns the tables, dense line and caption."""
    key = ppl_key(records)
    dense = dense_metric(records, key)
    rows, by_variant = read(records, key)
    caption = "Scaled: " + settings(records[0]) + ", no recovery."
    several = any(len(runs) > 1 for runs in by_variant.values())
    means = {label + (f" ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if several else ""):
             statistics.fmean(p for p, _ in runs) for (_, _, label), runs in by_variant.items()}
    plots.plot_bars(means, out / "ablation_ppl.png", ylabel=key + (" (mean over seeds)" if several else ""),
                    reference=dense, title="Head score × FFN group size", caption=caption)
    text = markdown_table([name.format(key=key) for name in HEADER], rows)
    if several:
        text += "\n\nPer variant, over calibration seeds:\n\n" + markdown_table(
            [name.format(key=key) for name in SUMMARY_HEADER], seed_summary(by_variant))
    return text + dense_line(key, dense) + "\n\n" + caption
