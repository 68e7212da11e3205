"""The slimgpt+ study table and figure from the runs' results.json records.

    python experiments/slimgpt_plus/table.py outputs/multiruns/slimgpt_plus --out experiments/slimgpt_plus

Writes ``<out>/slimgpt_plus.md`` (one row per model × calibration × ratio × variant: params, held-out perplexity on
each corpus, its ratio to the faithful slimgpt at the same model, calibration and ratio, prune seconds; then the
full ``slimgpt-report`` table) and ``<out>/slimgpt_plus_ppl.png`` (perplexity per variant, one panel per ratio).
The records used are kept in ``<out>/records/`` and read again by the next call (``slimgpt.studies.kept_records``),
so that a later sweep adds rows to the table without the earlier sweep folders.
"""

import argparse
from pathlib import Path

from slimgpt.io import write_text_atomic
from slimgpt.runner.record import RunRecord
from slimgpt.runner.summary import table_rows, to_markdown
from slimgpt.studies import kept_records
from slimgpt.tables import markdown_table

#: slimgpt_plus options with their slimgpt values (an option at this value is not named in the variant)
OFF = {"head_score": "cholesky", "joint_split": False, "layer_ratios": "schedule", "refit": "none"}
SHORT = {"head_score": "exact", "joint_split": "joint", "layer_ratios": "sens", "refit": "refit"}
CORPORA = ("wiki", "lambada")


def variant(record: RunRecord) -> str:
    """A short name of the pruner: method, then what differs from the faithful slimgpt (``query_head``,
    ``exact``, ``joint``, ``sens``, ``refit``)."""
    method = record.spec("pruner.method")
    options = record.spec("pruner.options") or {}
    parts = []
    if record.spec("pruner.engine.head_granularity") != "kv_group":
        parts.append(record.spec("pruner.engine.head_granularity"))
    if method in ("slimgpt", "slimgpt_plus"):
        parts += [SHORT[k] + (f"={options[k]}" if k == "refit" else "")
                  for k, off in OFF.items() if k in options and options[k] != off]
        method = "slimgpt" if parts or method == "slimgpt" else method
        return method + "".join(f" +{p}" for p in parts)
    return method + "".join(f" +{p}" for p in parts)


def calib(record: RunRecord) -> str:
    return f"{record.spec('calib.source')} {record.spec('calib.num_samples')}×{record.spec('calib.seq_len')}"


def rows(records: list[RunRecord]) -> list[dict]:
    """One row per finished pruned run, sorted by model, calibration, ratio, perplexity; ratio columns against
    the faithful slimgpt of the same model, calibration and ratio."""
    out = []
    for r in records:
        if r.prune is None:
            continue
        of = r.spec("pruner.ratio_of") or "total"
        row = {"model": r.spec("model.name"), "calib": calib(r), "ratio": f"{r.spec('pruner.ratio'):.0%} of {of}",
               "variant": variant(r), "params": f"{r.metric('params') / 1e6:.1f}M"}
        for corpus in CORPORA:
            row[f"ppl/{corpus}"] = r.metric(f"ppl/{corpus}")
        row["prune s"] = round(r.prune.value("seconds") or 0)  # the prune's own time, also when served from the cache
        out.append(row)
    base = {(x["model"], x["calib"], x["ratio"]): x for x in out if x["variant"] == "slimgpt"}
    for x in out:
        ref = base.get((x["model"], x["calib"], x["ratio"]))
        for corpus in CORPORA:
            mine, theirs = x[f"ppl/{corpus}"], ref and ref[f"ppl/{corpus}"]
            x[f"× slimgpt ({corpus})"] = round(mine / theirs, 3) if mine and theirs else None
    return sorted(out, key=lambda x: (x["model"], x["calib"], x["ratio"], x["ppl/wiki"] or float("inf")))


def figure(table: list[dict], dense: dict, out: Path) -> None:
    """Perplexity (log) per variant, one panel per ratio, for the model and calibration with the most rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(x["model"], x["calib"]) for x in table]
    model, calibration = max(set(settings), key=settings.count)
    first = {"model": model, "calib": calibration}
    keep = [x for x in table if (x["model"], x["calib"]) == (first["model"], first["calib"])]
    ratios = sorted({x["ratio"] for x in keep})
    fig, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 5.5), squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        part = [x for x in keep if x["ratio"] == ratio]
        names = [x["variant"] for x in part]
        for k, corpus in enumerate(CORPORA):
            ys = [x[f"ppl/{corpus}"] or float("nan") for x in part]
            bars = ax.bar([i + 0.4 * k for i in range(len(part))], ys, width=0.4, label=corpus)
            ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7)
            if dense.get(corpus):
                ax.axhline(dense[corpus], linestyle="--", linewidth=1, color=f"C{k}", label=f"dense {corpus}")
        ax.set_xticks([i + 0.2 for i in range(len(part))], names, rotation=25, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{first['model']}, {ratio} parameters")
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("held-out perplexity (8,192 tokens, seq_len 128)")
    fig.suptitle(f"slimgpt vs slimgpt+ components, calibration {first['calib']}, no recovery", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    records, unfinished = kept_records(args.paths, args.out)
    table = rows(records)
    dense = {}
    for r in records:
        for corpus in CORPORA:
            if dense.get(corpus) is None:
                dense[corpus] = r.metric(f"ppl/{corpus}", "dense")
    figure(table, dense, args.out / "slimgpt_plus_ppl.png")
    dense_line = ", ".join(f"{c} {v:.4g}" for c, v in dense.items() if v)
    study = markdown_table(list(table[0]), [list(x.values()) for x in table])
    text = (study + f"\n\nDense perplexity: {dense_line}.\n\nAll runs (`slimgpt-report`):\n\n"
            + to_markdown(table_rows(records + unfinished)) + "\n")
    write_text_atomic(args.out / "slimgpt_plus.md", text)
    print(study)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
