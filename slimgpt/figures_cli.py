"""``slimgpt-figures STUDY PATHS... --out DIR``: the markdown table and PNG figures of a paper study.

Reads the results.json files of a sweep (``outputs/multiruns/<sweep_name>/...``), extracts the numbers of
the study and draws them with :mod:`slimgpt.plots`. Studies (conf/experiment/paper_*.yaml):

    fig2      prune only layer 0: per-layer output error vs depth, perplexity per share of layer 0
    table6    layer-ratio schedules: params / perplexity table, per-layer ratios (Figure 4, with
              LLM-Pruner's layer range for comparison), per-layer output error, perplexity bars
    ablation  head score × FFN group size: perplexity, OBS errors and prune time per variant
    table1    method × pruning ratio × recovery: params, perplexity, the 7 tasks, average; PPL and
              zero-shot average vs ratio
    fig3      calibration samples / sequence length: perplexity (and zero-shot average) curves

Writes ``<out>/<study>.md`` (the study table, then the full ``slimgpt-report`` table) and
``<out>/<study>_*.png``; prints the study table.

    slimgpt-figures table6 outputs/multiruns/paper_table6 --out experiments/table6_schedules
"""

import argparse
import math
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from . import plots
from .eval.zeroshot import TASKS as ZEROSHOT_TASKS
from .runner.report import collect, find_results, to_markdown
from .runner.results import read_json

# ----------------------------------------------------------------------------------------------- extraction


def load_records(paths: Iterable[Path]) -> list[dict]:
    """The results.json records below ``paths`` that finished (status ``done``), in a stable order.

    A model evaluated by several runs (a re-run, or a job repeated in another sweep folder and served from
    the run cache) appears once: records are keyed by their final evaluation's signature.
    """
    records, seen = [], set()
    for record in (read_json(f) for f in find_results(paths)):
        finals = [e["key"] for e in record.get("evaluations", []) if e["role"] == "final"]
        identity = finals[0] if finals else id(record)
        if record.get("status") == "done" and identity not in seen:
            seen.add(identity)
            records.append(record)
    return records


def metric(record: dict, key: str, role: str = "final") -> float | None:
    """Metric ``key`` (``ppl/wiki``, ``zeroshot/avg``, ``params``) of the ``role`` evaluation of a record."""
    for entry in record.get("evaluations", []):
        if entry["role"] == role and key in entry["metrics"]:
            value = entry["metrics"][key]
            return float(value) if isinstance(value, (int, float)) else None
    return None


def ppl_key(records: list[dict]) -> str:
    """The first perplexity metric the records report (``ppl/wiki`` for the scaled studies)."""
    for record in records:
        for entry in record.get("evaluations", []):
            keys = sorted(k for k in entry["metrics"] if k.startswith("ppl/"))
            if keys:
                return keys[0]
    raise ValueError("no perplexity in these results: run the study with eval=ppl or eval=both")


def dense_metric(records: list[dict], key: str) -> float | None:
    """The dense baseline's ``key`` from the first record that has one (``baseline: true``)."""
    return next((v for v in (metric(r, key, "dense") for r in records) if v is not None), None)


def prune_report(record: dict) -> dict:
    """The engine's report of a record (``PruneReport.to_dict()``); errors if the job did not prune."""
    prune = record.get("prune") or {}
    if not prune.get("report"):
        raise ValueError(f"run '{record.get('name')}' has no prune report (stages: {record.get('stages')})")
    return prune["report"]


def layer_values(record: dict, key: str) -> list[float | None]:
    """Per-layer ``key`` of the prune report: ``output_error``, ``achieved_ratio``, ``target_ratio``."""
    return [layer.get(key) for layer in prune_report(record)["layers"]]


def spec(record: dict, dotted: str):
    """A value of the record's typed specs, e.g. ``pruner.ratio`` or ``pruner.options.head_score``."""
    value = record["specs"]
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def llm_pruner_layer_ratios(report: dict) -> list[float]:
    """Per-layer ratios LLM-Pruner's default setting gives for the same total budget as ``report``:
    uniform inside its layer range (first 4 and last 2 layers dense), computed from the report's layer sizes."""
    from .pruning.engine import plan_ratios
    from .pruning.methods.llm_pruner import default_layer_range

    weights = [layer["params"][0] for layer in report["layers"]]
    removed = report["params_before"] - report["params_after"]
    return plan_ratios(removed, weights, "uniform", None, default_layer_range(len(weights)))


# ----------------------------------------------------------------------------------------------- tables


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats to 4 significant digits, ``None`` as an empty cell."""

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _settings(record: dict, calib: bool = True) -> str:
    """One line of the scaled settings (model, calibration unless ``calib=False``, perplexity prefix) for
    captions; studies without a recovery stage add ", no recovery"."""
    spec_calib = record["specs"]["calib"]
    ppl = record["specs"]["eval"].get("perplexity") or {}
    tokens = ppl.get("max_tokens") or "all"
    calibration = (f", calibration {spec_calib['source']} {spec_calib['num_samples']}×{spec_calib['seq_len']} "
                   f"tokens" if calib else "")
    return (f"{record['specs']['model']['name']}{calibration}, perplexity on {tokens} tokens of the "
            f"{ppl.get('split', '?')} split (seq_len {ppl.get('seq_len', '?')})")


def _most_common(values: Iterable) -> object | None:
    """The most frequent value, the first seen on a tie (None for no values)."""
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _millions(n: float | None) -> str | None:
    return None if n is None else f"{n / 1e6:.1f}M"


# ----------------------------------------------------------------------------------------------- studies


def fig2(records: list[dict], out: Path) -> str:
    """Figure 2: only layer 0 pruned; per-layer output error vs depth and perplexity per share of layer 0."""
    key = ppl_key(records)
    dense = dense_metric(records, key)
    rows, curves = [], {}
    for record in sorted(records, key=lambda r: spec(r, "pruner.ratio")):
        report = prune_report(record)
        first = report["layers"][0]
        share = 1 - first["params"][1] / first["params"][0]
        errors = layer_values(record, "output_error")
        label = f"layer 0 −{share:.0%}"
        curves[label] = errors
        ppl = metric(record, key)
        rows.append([f"{share:.1%}", f"{report['achieved_ratio']:.2%}", f"{first['heads'][1]}/{first['heads'][0]}",
                     f"{first['ffn'][1]}/{first['ffn'][0]}", ppl, None if dense is None else ppl / dense,
                     errors[0], errors[-1], None if not errors[0] else errors[-1] / errors[0]])
    caption = ("Scaled: " + _settings(records[0]) +
               ", no recovery; only layer 0 pruned (uniform inside layer_range (0, 1)).")
    plots.plot_layer_curves(curves, out / "fig2_layer_error.png", ylabel="‖y − y_dense‖² / ‖y_dense‖²", logy=True,
                            title="Pruning only layer 0: output error vs depth (Figure 2)", caption=caption)
    header = ["layer 0 pruned", "total ratio", "heads left", "FFN left", key, f"{key} / dense", "error layer 0",
              "error last layer", "growth"]
    dense_line = f"\n\nDense {key}: {dense:.4g}." if dense is not None else ""
    return markdown_table(header, rows) + dense_line + "\n\n" + caption


def table6(records: list[dict], out: Path) -> str:
    """Table 6 / Figure 4: schedules at ≈50%; table, per-layer ratios, per-layer errors, perplexity bars."""
    key = ppl_key(records)
    dense = dense_metric(records, key)
    order = ["log_increase", "linear_increase", "uniform", "log_decrease", "linear_decrease"]
    records = sorted(records, key=lambda r: order.index(spec(r, "schedule.name")) if spec(r, "schedule.name") in
                     order else len(order))
    rows, ratios, errors, ppls = [], {}, {}, {}
    for record in records:
        name, report = spec(record, "schedule.name"), prune_report(record)
        ppl = metric(record, key)
        zs = metric(record, "zeroshot/avg")
        rows.append([name, _millions(report["params_after"]), f"{report['achieved_ratio']:.2%}",
                     f"{report['layer_ratio']:.2%}", ppl, zs, round(report["seconds"])])
        ratios[f"SlimGPT {name}"] = layer_values(record, "achieved_ratio")
        if any(e is not None for e in layer_values(record, "output_error")):
            errors[name] = layer_values(record, "output_error")
        ppls[name] = ppl
    if len(prune_report(records[0])["layers"]) >= 7:  # LLM-Pruner's range keeps 4 + 2 layers dense
        ratios["LLM-Pruner (uniform in its layer range)"] = llm_pruner_layer_ratios(prune_report(records[0]))
    caption = "Scaled: " + _settings(records[0]) + ", no recovery."
    plots.plot_layer_curves(ratios, out / "fig4_layer_ratios.png", ylabel="fraction of the layer's parameters removed",
                            steps=True, title="Per-layer pruning ratio at the same total budget (Figure 4)",
                            caption=caption)
    if errors:
        plots.plot_layer_curves(errors, out / "table6_layer_error.png", ylabel="‖y − y_dense‖² / ‖y_dense‖²",
                                logy=True, title="Output error vs depth per schedule", caption=caption)
    plots.plot_bars(ppls, out / "table6_ppl.png", ylabel=key, logy=True, reference=dense,
                    title="Perplexity per layer-ratio schedule (Table 6)", caption=caption)
    header = ["schedule", "params", "total ratio", "layer ratio", key, "zero-shot avg", "prune s"]
    dense_line = f"\n\nDense {key}: {dense:.4g}." if dense is not None else ""
    return markdown_table(header, rows) + dense_line + "\n\n" + caption


def _layer_sum(report: dict, part: str, key: str) -> float | None:
    """Sum over layers of ``layer[part][key]`` (e.g. the OBS error the attention pruning reported)."""
    values = [layer.get(part, {}).get(key) for layer in report["layers"]]
    values = [v for v in values if isinstance(v, (int, float))]
    return float(sum(values)) if values else None


# pruner.options.head_score -> its row label in the ablation table
HEAD_SCORE_LABELS = {
    "cholesky": "grouped Cholesky (paper)",
    "diagonal": "plain diagonal (paper's ablation)",
    "exact": "exact group error (ours)",
}


def ablation(records: list[dict], out: Path) -> str:
    """Head score (grouped Cholesky, exact group error, plain diagonal) × FFN group size: perplexity, OBS errors
    and prune time per variant and calibration seed; with several seeds, also the mean and range per variant
    (the bars show the mean)."""
    key = ppl_key(records)
    dense = dense_metric(records, key)
    rows, by_variant = [], {}
    order = {name: i for i, name in enumerate(HEAD_SCORE_LABELS)}
    for record in sorted(records, key=lambda r: (order.get(spec(r, "pruner.options.head_score"), len(order)),
                                                 -(spec(r, "pruner.options.ffn_min_group") or 0),
                                                 spec(r, "calib.seed") or 0)):
        report = prune_report(record)
        score = spec(record, "pruner.options.head_score")
        low, high = spec(record, "pruner.options.ffn_min_group"), spec(record, "pruner.options.ffn_max_group")
        ffn = f"fixed {high}" if low == high else f"dynamic {high}→{low}"
        heads = HEAD_SCORE_LABELS.get(score, str(score))
        ppl, head_error = metric(record, key), _layer_sum(report, "attention", "obs_error")
        rows.append([heads, ffn, spec(record, "calib.seed"), _millions(report["params_after"]), ppl, head_error,
                     _layer_sum(report, "mlp", "obs_error"), _layer_sum(report, "mlp", "steps"),
                     round(report["seconds"])])
        by_variant.setdefault((heads, ffn, f"{score} / {ffn}"), []).append((ppl, head_error))
    caption = "Scaled: " + _settings(records[0]) + ", no recovery."
    several = any(len(runs) > 1 for runs in by_variant.values())
    means = {label + (f" ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if several else ""):
             statistics.fmean(p for p, _ in runs) for (_, _, label), runs in by_variant.items()}
    plots.plot_bars(means, out / "ablation_ppl.png", ylabel=key + (" (mean over seeds)" if several else ""),
                    reference=dense, title="Head score × FFN group size", caption=caption)
    header = ["head score", "FFN groups", "calib seed", "params", key, "Σ head OBS error", "Σ FFN OBS error",
              "FFN OBS steps", "prune s"]
    text = markdown_table(header, rows)
    if several:
        summary = [[heads, ffn, len(runs), statistics.fmean(p for p, _ in runs), min(p for p, _ in runs),
                    max(p for p, _ in runs), statistics.fmean(e for _, e in runs)]
                   for (heads, ffn, _), runs in by_variant.items()]
        text += "\n\nPer variant, over calibration seeds:\n\n" + markdown_table(
            ["head score", "FFN groups", "seeds", f"mean {key}", "min", "max", "mean Σ head OBS error"], summary)
    dense_line = f"\n\nDense {key}: {dense:.4g}." if dense is not None else ""
    return text + dense_line + "\n\n" + caption


def _tuned(record: dict) -> bool:
    """Whether the record's model went through a recovery (LoRA) stage."""
    return bool((record["specs"].get("finetune") or {}).get("stages")) and "finetune" in record["stages"]


def table1(records: list[dict], out: Path) -> str:
    """Table 1: ratio × method × recovery with params, perplexity, the 7 zero-shot tasks and their average
    (dense row first), plus perplexity and zero-shot average vs the achieved ratio per method and recovery."""
    key = ppl_key(records)
    tasks = [t for t in ZEROSHOT_TASKS if any(metric(r, f"zeroshot/{t}") is not None for r in records)]
    dense = next((r for r in records if metric(r, key, "dense") is not None), None)
    rows = []
    dense_cells = None if dense is None else _task_cells(dense, tasks, "dense")
    if dense is not None:
        rows.append(["0%", "dense", "", _millions(metric(dense, "params", "dense")), metric(dense, key, "dense"),
                     *dense_cells])
    ppl_series: dict[str, tuple[list, list]] = {}
    zs_series: dict[str, tuple[list, list]] = {}
    rest_series: dict[str, tuple[list, list]] = {}  # average without BoolQ
    common_schedule = _most_common(spec(r, "schedule.name") for r in records)
    for record in sorted(records, key=lambda r: (spec(r, "pruner.ratio"), _method_label(r, common_schedule),
                                                 _tuned(r))):
        report, method = prune_report(record), _method_label(record, common_schedule)
        label = f"{method} {'+LoRA' if _tuned(record) else 'w/o tune'}"
        achieved, avg = report["achieved_ratio"], metric(record, "zeroshot/avg")
        cells = _task_cells(record, tasks)
        rows.append([f"{spec(record, 'pruner.ratio'):.0%}", method, "LoRA" if _tuned(record) else "no",
                     _millions(report["params_after"]), metric(record, key), *cells])
        rest = cells[-1] if _no_boolq(tasks) else None
        for series, value in ((ppl_series, metric(record, key)), (zs_series, avg), (rest_series, rest)):
            if value is not None:
                xs, ys = series.setdefault(label, ([], []))
                xs.append(achieved)
                ys.append(value)
    settings = _settings(records[0])
    limit = spec(records[0], "eval.zeroshot.limit")
    caption = f"Scaled: {settings}" + (f"; zero-shot on the first {limit} questions per task" if tasks and limit
                                       else "") + "."
    plots.plot_xy(ppl_series, out / "table1_ppl.png", xlabel="fraction of total parameters removed", ylabel=key,
                  logy=True, reference=None if dense is None else metric(dense, key, "dense"),
                  title="Perplexity vs pruning ratio (Table 1)", caption=caption)
    if zs_series:
        plots.plot_xy(zs_series, out / "table1_zeroshot.png", xlabel="fraction of total parameters removed",
                      ylabel="7-task zero-shot average" if len(tasks) == 7 else "zero-shot average",
                      reference=None if dense is None else metric(dense, "zeroshot/avg", "dense"),
                      title="Zero-shot average vs pruning ratio (Table 1)", caption=caption)
    if rest_series:
        plots.plot_xy(rest_series, out / "table1_zeroshot_no_boolq.png", ylabel="zero-shot average without BoolQ",
                      xlabel="fraction of total parameters removed",
                      reference=None if dense_cells is None else dense_cells[-1],
                      title="Zero-shot average without BoolQ vs pruning ratio", caption=caption)
    header = ["ratio", "method", "tune", "params", key, *tasks, "avg", *(["avg w/o BoolQ"] if _no_boolq(tasks) else [])]
    return markdown_table(header, rows) + "\n\n" + caption


def _method_label(record: dict, common_schedule: str | None) -> str:
    """The method's name, plus its schedule and layer range where they differ from the table's usual setting
    (e.g. LLM-Pruner in its own setting: ``llm_pruner (uniform, layers 4-27)``)."""
    extras = []
    if spec(record, "schedule.name") != common_schedule:
        extras.append(str(spec(record, "schedule.name")))
    layer_range = spec(record, "pruner.options.layer_range")
    if layer_range:
        extras.append(f"layers {layer_range[0]}-{layer_range[1] - 1}")
    return spec(record, "pruner.method") + (f" ({', '.join(extras)})" if extras else "")


def _no_boolq(tasks: list[str]) -> list[str]:
    """The tasks other than BoolQ when BoolQ is among several (BoolQ alone swings with a small model's yes/no
    bias, so the tables also give the average without it); else empty."""
    return [t for t in tasks if t != "boolq"] if "boolq" in tasks and len(tasks) > 1 else []


def _task_cells(record: dict, tasks: list[str], role: str = "final") -> list[float | None]:
    """Per-task accuracies, their average as recorded, and the average without BoolQ (when it applies)."""
    if not tasks:
        return [None]
    values = {t: metric(record, f"zeroshot/{t}", role) for t in tasks}
    others = [values[t] for t in _no_boolq(tasks)]
    rest = [statistics.fmean(others)] if others and None not in others else ([None] if others else [])
    return [*values.values(), metric(record, "zeroshot/avg", role), *rest]


def fig3(records: list[dict], out: Path) -> str:
    """Figure 3: perplexity (and zero-shot average) vs calibration sample count and sequence length."""
    key = ppl_key(records)
    rows, by_axis = [], {"samples": {}, "seq_len": {}}
    # each sweep holds one calibration value fixed; a run at both fixed values (e.g. 32×256) is a point of both
    # curves even though it is loaded once (the run cache serves it to the second sweep)
    fixed_len = _most_common(spec(r, "calib.seq_len") for r in records if r.get("group") == "paper_fig3_samples")
    fixed_n = _most_common(spec(r, "calib.num_samples") for r in records if r.get("group") == "paper_fig3_seqlen")
    for record in records:
        n, length = spec(record, "calib.num_samples"), spec(record, "calib.seq_len")
        point = (metric(record, key), metric(record, "zeroshot/avg"))
        on_samples = length == fixed_len if fixed_len is not None else record.get("group") == "paper_fig3_samples"
        on_seq_len = n == fixed_n if fixed_n is not None else not on_samples
        if on_samples:
            by_axis["samples"][n] = point
        if on_seq_len:
            by_axis["seq_len"][length] = point
        rows.append([n, length, n * length, *point])
    calib = records[0]["specs"]["calib"]["source"]
    caption = (f"Scaled: {_settings(records[0], calib=False)}; calibration: {calib} windows (samples × seq_len as in "
               f"the table); no recovery.")
    for axis, label in (("samples", "calibration samples"), ("seq_len", "calibration sequence length")):
        points = by_axis[axis]
        if not points:
            continue
        xs = sorted(points)
        series = {key: (xs, [points[x][0] for x in xs])}
        plots.plot_xy(series, out / f"fig3_{axis}_ppl.png", xlabel=label, ylabel=key, logx=True,
                      title=f"Perplexity vs {label} (Figure 3)", caption=caption)
        scored = [x for x in xs if points[x][1] is not None]  # runs evaluated with zero-shot
        if len(scored) >= 2:
            plots.plot_xy({"zero-shot avg": (scored, [points[x][1] for x in scored])},
                          out / f"fig3_{axis}_zeroshot.png", xlabel=label, ylabel="accuracy", logx=True,
                          caption=caption,
                          title=f"Zero-shot average vs {label} (Figure 3)")
    rows.sort(key=lambda row: (row[0], row[1]))
    return markdown_table(["samples", "seq_len", "tokens", key, "zero-shot avg"], rows) + "\n\n" + caption


STUDIES: dict[str, Callable[[list[dict], Path], str]] = {
    "fig2": fig2, "table6": table6, "ablation": ablation, "table1": table1, "fig3": fig3,
}


def make_study(study: str, paths: Iterable[Path], out: Path) -> str:
    """Writes ``<out>/<study>.md`` and the study's PNGs from the results below ``paths``; returns the table."""
    if study not in STUDIES:
        raise ValueError(f"unknown study '{study}'; choose one of {', '.join(STUDIES)}")
    paths = list(paths)
    records = load_records(paths)
    if not records:
        raise ValueError(f"no finished results.json under {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    text = STUDIES[study](records, out)
    full = to_markdown(collect(paths))
    _write_atomic(out / f"{study}.md", f"{text}\n\nAll runs (`slimgpt-report`):\n\n{full}\n")
    return text


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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


if __name__ == "__main__":
    raise SystemExit(main())
