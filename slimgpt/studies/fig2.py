"""Figure 2: only layer 0 pruned (25/50/75% of it); per-layer output error vs depth, perplexity per share.

    slimgpt experiment=paper_fig2 sweep=paper_fig2
    slimgpt-figures fig2 outputs/multiruns/paper_fig2 --out experiments/fig2_first_layer
"""

from pathlib import Path

from slimgpt import plots
from slimgpt.runner.record import RunRecord
from slimgpt.tables import markdown_table

from .common import dense_line, dense_metric, ppl_key, pruned, settings

SWEEPS = ("paper_fig2", "paper_fig2_llama7b")
HEADER = ["layer 0 pruned", "total ratio", "heads left", "FFN left", "{key}", "{key} / dense", "error layer 0",
          "error last layer", "growth"]


def read(records: list[RunRecord], key: str, dense: float | None) -> tuple[list[list], dict[str, list]]:
    """Table rows (by share of layer 0 removed) and the per-layer output error curve of each run."""
    rows, curves = [], {}
    for record in sorted(records, key=lambda r: r.spec("pruner.ratio")):
        prune = pruned(record)
        params, heads, ffn = (prune.layer_values(part)[0] for part in ("params", "heads", "ffn"))
        share = 1 - params[1] / params[0]
        errors = prune.layer_values("output_error")
        curves[f"layer 0 −{share:.0%}"] = errors
        ppl = record.metric(key)
        rows.append([f"{share:.1%}", f"{prune.value('achieved_ratio'):.2%}", f"{heads[1]}/{heads[0]}",
                     f"{ffn[1]}/{ffn[0]}", ppl, None if dense is None else ppl / dense,
                     errors[0], errors[-1], None if not errors[0] else errors[-1] / errors[0]])
    return rows, curves


def make(records: list[RunRecord], out: Path) -> str:
    """Draws ``fig2_layer_error.png`` into ``out``; returns the table, the dense line and the caption."""
    key = ppl_key(records)
    dense = dense_metric(records, key)
    rows, curves = read(records, key, dense)
    caption = ("Scaled: " + settings(records[0]) +
               ", no recovery; only layer 0 pruned (uniform inside layer_range (0, 1)).")
    plots.plot_layer_curves(curves, out / "fig2_layer_error.png", ylabel="‖y − y_dense‖² / ‖y_dense‖²", logy=True,
                            title="Pruning only layer 0: output error vs depth (Figure 2)", caption=caption)
    header = [name.format(key=key) for name in HEADER]
    return markdown_table(header, rows) + dense_line(key, dense) + "\n\n" + caption
