"""Figures of the paper-reproduction studies (``experiments/``), drawn from plain data into PNG files.

Every function takes lists/dicts of numbers (no results files, no models), draws one figure with
matplotlib's non-interactive Agg backend and writes it atomically (``slimgpt.io``). The data come from
the studies (``slimgpt.studies``: results.json of a sweep) or from a notebook; no logic lives here beyond
drawing.

    plot_layer_curves({"25%": [e0, e1, ...]}, "fig2.png", ylabel="relative output error", logy=True)
"""

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (CI, servers)
import matplotlib.pyplot as plt  # noqa: E402

from slimgpt.io import write_bytes_atomic  # noqa: E402

#: Figure size in inches: readable in a README at GitHub's column width.
FIGSIZE = (6.4, 4.0)


def _save(fig, out: str | Path) -> Path:
    """Writes ``fig`` as PNG to ``out`` atomically (via :mod:`slimgpt.io`) and closes it; returns the path."""
    out = Path(out)
    try:
        if out.suffix.lower() != ".png":
            raise ValueError(f"figures are PNG files; got the path '{out}' (use a .png name)")
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return write_bytes_atomic(out, buffer.getvalue())


def _check_series(series: Mapping[str, Sequence[float]], what: str) -> None:
    if not series:
        raise ValueError(f"{what}: no data to plot (an empty mapping)")
    for name, values in series.items():
        if len(values) == 0:
            raise ValueError(f"{what}: the series '{name}' is empty")


def _finish(ax, title: str | None, caption: str | None, xlabel: str, ylabel: str, logy: bool,
            bottom: float = 0.24) -> None:
    """Labels, scale, title, grid; the caption goes in a band of height ``bottom`` (figure fraction) below
    the axes and their tick labels."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    if caption:
        ax.figure.subplots_adjust(bottom=bottom)
        ax.figure.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", wrap=True)
    ax.grid(alpha=0.3)


def plot_layer_curves(
    series: Mapping[str, Sequence[float | None]],
    out: str | Path,
    *,
    ylabel: str,
    title: str | None = None,
    caption: str | None = None,
    logy: bool = False,
    steps: bool = False,
) -> Path:
    """One line per entry of ``series``: a value per decoder layer (x = layer index 0..n-1).

    Figure 2 (per-layer output error vs depth, ``logy=True``), Figure 4 (per-layer pruning ratio,
    ``steps=True``). ``None`` values (e.g. a layer without a measurement) are left as gaps.
    """
    _check_series(series, "plot_layer_curves")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, values in series.items():
        ys = [float("nan") if v is None else float(v) for v in values]
        if steps:
            ax.step(range(len(ys)), ys, where="mid", label=name)
        else:
            ax.plot(range(len(ys)), ys, marker="o", markersize=3, label=name)
    ax.legend(fontsize=8)
    _finish(ax, title, caption, "decoder layer", ylabel, logy)
    return _save(fig, out)


def plot_bars(
    values: Mapping[str, float],
    out: str | Path,
    *,
    ylabel: str,
    title: str | None = None,
    caption: str | None = None,
    logy: bool = False,
    reference: float | None = None,
    reference_label: str = "dense",
    errors: Mapping[str, float] | None = None,
) -> Path:
    """A bar per entry of ``values`` (in the given order), its value printed on top; optional reference line
    and error bars (``errors``: the half-width of each bar's interval, by the same names).

    Table 6 (perplexity per schedule, ``logy=True`` with the dense perplexity as ``reference``), ablations,
    Table 1's key rows (zero-shot accuracy with 95% intervals).
    """
    if not values:
        raise ValueError("plot_bars: no data to plot (an empty mapping)")
    if errors is not None and set(errors) != set(values):
        raise ValueError(f"plot_bars: errors name {sorted(errors)}, values name {sorted(values)}; give one per bar")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    names, ys = list(values), [float(v) for v in values.values()]
    yerr = None if errors is None else [float(errors[name]) for name in names]
    bars = ax.bar(range(len(ys)), ys, color="tab:blue", yerr=yerr, capsize=3 if yerr else 0)
    ax.bar_label(bars, labels=[f"{y:.4g}" for y in ys], fontsize=8)
    ax.set_xticks(range(len(ys)), names, rotation=20, ha="right", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"{reference_label} {reference:.4g}")
        ax.legend(fontsize=8, loc="lower right")
    _finish(ax, title, caption, "", ylabel, logy, bottom=0.32)  # room for the rotated names
    return _save(fig, out)


def plot_xy(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    caption: str | None = None,
    logx: bool = False,
    logy: bool = False,
    reference: float | None = None,
    reference_label: str = "dense",
) -> Path:
    """One line per entry of ``series``: ``(xs, ys)`` pairs, sorted by x.

    Figure 3 (perplexity vs calibration samples / sequence length, ``logx=True``), Table 1 (perplexity
    vs pruning ratio per method, with and without LoRA).
    """
    _check_series({k: v[0] for k, v in series.items()}, "plot_xy")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"plot_xy: series '{name}' has {len(xs)} x values but {len(ys)} y values")
        points = sorted(zip(map(float, xs), map(float, ys)))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"{reference_label} {reference:.4g}")
    if logx:
        ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    _finish(ax, title, caption, xlabel, ylabel, logy)
    return _save(fig, out)


__all__ = ["plot_bars", "plot_layer_curves", "plot_xy"]
