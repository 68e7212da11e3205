"""Figure 3: perplexity (and zero-shot average) vs calibration sample count and calibration sequence length.

    slimgpt experiment=paper_fig3 sweep=paper_fig3_samples; slimgpt experiment=paper_fig3 sweep=paper_fig3_seqlen
    slimgpt-figures fig3 outputs/multiruns/paper_fig3_samples outputs/multiruns/paper_fig3_seqlen \\
        --out experiments/fig3_calibration
"""

from pathlib import Path

from slimgpt import plots
from slimgpt.runner.record import RunRecord
from slimgpt.tables import markdown_table

from .common import most_common, ppl_key, settings

#: The sample-count sweep and the sequence-length sweep (each holds the other value fixed).
SAMPLES_SWEEP, SEQ_LEN_SWEEP = "paper_fig3_samples", "paper_fig3_seqlen"
SWEEPS = (SAMPLES_SWEEP, SEQ_LEN_SWEEP)
AXES = (("samples", "calibration samples"), ("seq_len", "calibration sequence length"))

#: axis -> x value -> (perplexity, zero-shot average)
Points = dict[str, dict[int, tuple[float | None, float | None]]]


def read(records: list[RunRecord], key: str) -> tuple[list[list], Points]:
    """Table rows by (samples, seq_len) and the points of each curve.

    Each sweep holds one calibration value fixed; a run at both fixed values (e.g. 32×256) is a point of
    both curves even though it is loaded once (the run cache serves it to the second sweep).
    """
    rows, by_axis = [], {"samples": {}, "seq_len": {}}
    fixed_len = most_common(r.spec("calib.seq_len") for r in records if r.group == SAMPLES_SWEEP)
    fixed_n = most_common(r.spec("calib.num_samples") for r in records if r.group == SEQ_LEN_SWEEP)
    for record in records:
        n, length = record.spec("calib.num_samples"), record.spec("calib.seq_len")
        point = (record.metric(key), record.metric("zeroshot/avg"))
        on_samples = length == fixed_len if fixed_len is not None else record.group == SAMPLES_SWEEP
        on_seq_len = n == fixed_n if fixed_n is not None else not on_samples
        if on_samples:
            by_axis["samples"][n] = point
        if on_seq_len:
            by_axis["seq_len"][length] = point
        rows.append([n, length, n * length, *point])
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows, by_axis


def draw(by_axis: Points, key: str, out: Path, caption: str) -> None:
    """``fig3_<axis>_ppl.png`` per axis with points, ``fig3_<axis>_zeroshot.png`` with ≥ 2 zero-shot points."""
    for axis, label in AXES:
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
                          caption=caption, title=f"Zero-shot average vs {label} (Figure 3)")


def make(records: list[RunRecord], out: Path) -> str:
    """Draws the curves (see :func:`draw`); returns the table and the caption."""
    key = ppl_key(records)
    rows, by_axis = read(records, key)
    caption = (f"Scaled: {settings(records[0], calib=False)}; calibration: {records[0].spec('calib.source')} "
               f"windows (samples × seq_len as in the table); no recovery.")
    draw(by_axis, key, out, caption)
    return markdown_table(["samples", "seq_len", "tokens", key, "zero-shot avg"], rows) + "\n\n" + caption
