"""How the cost of a prune grows with model size: measured on three models, fitted, predicted up to 70B.

Two steps (issue: scale):

``measure`` prunes one model at fixed calibration in a fresh process per row and appends to
``benchmarks/results/prune_scaling.json`` (rows are replaced by key: model, ratio, path):
  * prune wall time and its phases summed over layers (statistics / selection / output, ``PruneReport``),
  * the peak RSS of the row's process (the whole process: the loaded model included),
  * one dense forward over the same calibration tokens (same batch size), and the ratio,
  * perplexity of the pruned model on the wiki test split (``--ppl-tokens`` tokens, windows of 128),
  * ``--path streaming`` prunes checkpoint to checkpoint with ``slimgpt.prune_checkpoint`` (when available).

    python benchmarks/prune_scaling.py measure --model smollm2-135m --ratios 0 0.2 0.5 --samples 16 --seq-len 256

``report`` fits a cost model to the rows of the two smaller models, checks its prediction for the largest
measured model against its measurement, predicts LLaMA-7B / 13B / 70B on two GPUs, and writes the table
(``prune_scaling.md``) and figure (``prune_scaling.png``) to ``benchmarks/results/`` and
``experiments/tables3_4_efficiency/``.

    python benchmarks/prune_scaling.py report

The cost model (FLOP counts of a model shape, :func:`cost_features`): the statistics phase costs
``a·F_fwd + b·F_hess`` (the layer forwards, ``2·tokens·params`` plus attention scores, and the Hessian
accumulation ``2·tokens·d²`` for the inputs of ``o_proj`` (d = hidden) and ``down_proj`` (d = FFN)); the
selection phase ``c·F_obs`` (the OBS solves on the columns still alive: ``a³`` per inverse, recomputed every 8
greedy steps, whose number grows with the channels removed, plus ``a²`` per channel for the downdates;
:func:`obs_flops`); the output
phase ``e·F_out`` (the compensated ``down_proj`` on the
kept channels). Coefficients are fitted by non-negative least squares (:func:`fit_nonnegative`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's slimgpt, also in spawned rows
RESULTS = Path(__file__).parent / "results"
STUDY = Path(__file__).parent.parent / "experiments" / "tables3_4_efficiency"
PHASES = ("stats", "select", "output")


# ------------------------------------------------------------------------------------------ the cost model


@dataclass(frozen=True)
class Shape:
    """The sizes of a LLaMA-family decoder that the cost depends on."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Linear weights of one decoder layer: q, o (hidden²), k, v (hidden · kv width), gate, up, down."""
        kv = self.kv_heads * self.head_dim
        return 2 * self.hidden ** 2 + 2 * self.hidden * kv + 3 * self.hidden * self.ffn

    @property
    def params(self) -> int:
        """Decoder linear weights plus embedding and head (untied; the norms and biases are negligible)."""
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden


#: published shapes of the paper's models (LLaMA-1 7B/13B; 70B as LLaMA-2-70B, the only 70B with GQA)
LLAMA = (Shape("LLaMA-7B", 32, 4096, 32, 32, 11008, 32000), Shape("LLaMA-13B", 40, 5120, 40, 40, 13824, 32000),
         Shape("LLaMA-2-70B", 80, 8192, 64, 8, 28672, 32000))


def shape_of(name: str, config) -> Shape:
    """The ``Shape`` of a Hugging Face config."""
    return Shape(name, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                 config.num_key_value_heads, config.intermediate_size, config.vocab_size)


def obs_flops(shape: Shape, ratio: float, layers: int | None = None, refresh: int = 8) -> float:
    """Nominal FLOPs of the OBS selection of a ``log_increase`` prune at mean layer ratio ``ratio``.

    Per layer ``i`` (ratio ``r_i`` of the schedule, ``k_i = r_i · ffn`` channels removed in the Dynamic Group
    Size steps ``g_1..g_s`` of the released code): ``hidden³`` (the heads' inverse), and for the FFN greedy,
    which works on the ``a_t`` channels still alive before step ``t`` (``a_1 = ffn``, ``a_{t+1} = a_t - g_t``):
    ``a_t³`` for the inverse at the first step and every ``refresh`` steps after it, plus ``a_t² · g_t`` for the
    downdate of every step.
    """
    from slimgpt.pruning.obs import dynamic_group_sizes
    from slimgpt.pruning.schedules import layer_ratios

    n = shape.layers if layers is None else layers
    h, f = shape.hidden, shape.ffn
    total = 0.0
    for r in layer_ratios("log_increase", ratio, [1.0] * n):
        removed = round(r * f)
        alive = f
        total += h ** 3 + (0 if removed else f ** 3)
        for step, group in enumerate(dynamic_group_sizes(removed) if removed else []):
            if step % refresh == 0:
                total += alive ** 3
            total += alive ** 2 * group
            alive -= group
    return total


def cost_features(shape: Shape, samples: int, seq_len: int, ratio: float, layers: int | None = None) -> dict[str, float]:
    """Nominal FLOP counts of the parts of a prune of ``shape`` with ``samples × seq_len`` calibration tokens.

    ``fwd``: the decoder layers' forward (``2·N·params`` + causal attention scores ``2·N·L·hidden``);
    ``head``: the LM head of a dense forward (``2·N·hidden·vocab``, not part of a prune); ``hess``: Hessian
    accumulation ``2·N·(hidden² + ffn²)`` per layer; ``obs``: the OBS selection (:func:`obs_flops`);
    ``out``: the compensated ``down_proj`` on the kept channels, ``2·N·hidden·ffn·(1 - ratio)`` per layer.
    ``layers``: the pruned layers (default all) for every count but ``head``.
    """
    tokens = samples * seq_len
    h, f, n = shape.hidden, shape.ffn, shape.layers if layers is None else layers
    return {"fwd": 2.0 * tokens * n * (shape.layer_params + seq_len * h),
            "head": 2.0 * tokens * h * shape.vocab,
            "hess": 2.0 * tokens * n * (h ** 2 + f ** 2),
            "obs": obs_flops(shape, ratio, layers),
            "out": 2.0 * tokens * n * h * f * (1 - ratio)}


def fit_nonnegative(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative least squares ``seconds ≈ features @ coef``, relative errors weighted equally.

    features: [rows, k] FLOP counts; seconds: [rows]. Each row is divided by its measured seconds, so a small
    model's phase counts as much as a large one's. Returns coef: [k] (seconds per FLOP, ≥ 0).
    """
    from scipy.optimize import nnls

    features, seconds = np.asarray(features, float), np.asarray(seconds, float)
    if features.ndim != 2 or features.shape[0] != seconds.shape[0] or features.shape[0] < features.shape[1]:
        raise ValueError(f"features {features.shape} and seconds {seconds.shape}: need [rows, k] and [rows] with "
                         "rows >= k")
    scale = features.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(features / seconds[:, None] / scale, np.ones_like(seconds))
    return coef / scale


@dataclass(frozen=True)
class CostModel:
    """Fitted seconds per FLOP of each part on the measuring machine (see :func:`fit_cost_model`)."""

    fwd: float  # statistics phase: layer forwards
    hess: float  # statistics phase: Hessian accumulation
    obs: float  # selection phase
    out: float  # output phase
    dense: float  # one dense forward, per FLOP of fwd + head

    def phases(self, shape: Shape, samples: int, seq_len: int, ratio: float, layers: int | None = None
               ) -> dict[str, float]:
        """Predicted seconds of each phase, the prune (of ``layers`` layers, default all) and one dense forward."""
        x = cost_features(shape, samples, seq_len, ratio, layers)
        dense = cost_features(shape, samples, seq_len, ratio)
        phases = {"stats": self.fwd * x["fwd"] + self.hess * x["hess"], "select": self.obs * x["obs"],
                  "output": self.out * x["out"]}
        return {**phases, "prune": sum(phases.values()), "forward": self.dense * (dense["fwd"] + dense["head"])}


def speed(row: dict, reference_peak: float | None) -> float:
    """How much faster than ``reference_peak`` the machine ran when ``row`` was measured: its own measured
    matmul peak (``cpu_matmul_flops``, taken in a fresh process right after the row) over the reference; 1 when
    no reference is given. Seconds × speed = the seconds the row would have taken at the reference peak."""
    return 1.0 if reference_peak is None else row["cpu_matmul_flops"] / reference_peak


def fit_cost_model(rows: list[dict], shapes: dict[str, Shape], reference_peak: float | None = None) -> CostModel:
    """Fits :class:`CostModel` to measured prune rows (keys: model, ratio, samples, seq_len, forward_s and
    ``<phase>_s``; ``cpu_matmul_flops`` with a ``reference_peak``); ``shapes`` maps each row's model to its
    ``Shape``. With ``reference_peak`` every row's seconds are first brought to that peak (:func:`speed`), so
    that rows measured under different load, or on another machine, fit one model. Pure: no I/O."""
    x = [cost_features(shapes[r["model"]], r["samples"], r["seq_len"], r["ratio"], r.get("pruned_layers"))
         for r in rows]
    full = [cost_features(shapes[r["model"]], r["samples"], r["seq_len"], r["ratio"]) for r in rows]
    def seconds(name: str) -> list[float]:  # measured seconds brought to the reference peak
        return [r[name] * speed(r, reference_peak) for r in rows]

    stats = fit_nonnegative([[f["fwd"], f["hess"]] for f in x], seconds("stats_s"))
    obs = fit_nonnegative([[f["obs"]] for f in x], seconds("select_s"))[0]
    out = fit_nonnegative([[f["out"]] for f in x], seconds("output_s"))[0]
    dense = fit_nonnegative([[f["fwd"] + f["head"]] for f in full], seconds("forward_s"))[0]
    return CostModel(float(stats[0]), float(stats[1]), float(obs), float(out), float(dense))


# ----------------------------------------------------------------------------------- GPU extrapolation


@dataclass(frozen=True)
class Device:
    """ASSUMED peak throughputs of a GPU (FLOP/s): dense fp16 tensor cores (fp32 accumulate) for the layer
    forwards, fp32 without TF32 for the statistics and the OBS math (the engine's numerics)."""

    name: str
    memory_gb: float
    fp16: float
    fp32: float


DEVICES = (Device("A100-80GB", 80, 312e12, 19.5e12), Device("RTX 4090 (24 GB)", 24, 165e12, 82.6e12))


def gpu_seconds(model: CostModel, cpu_peak: float, device: Device, shape: Shape, samples: int, seq_len: int,
                ratio: float) -> dict[str, float]:
    """Predicted phase seconds on ``device``, ASSUMING it reaches the same fraction of its peak for each part
    as this CPU reached of its measured fp32 matmul peak ``cpu_peak`` (FLOP/s) for that part."""
    x = cost_features(shape, samples, seq_len, ratio)

    def on_gpu(coef: float, flops: float, peak: float) -> float:
        return coef * flops * cpu_peak / peak  # (coef · cpu_peak) = the part's cost per FLOP at peak

    phases = {"stats": on_gpu(model.fwd, x["fwd"], device.fp16) + on_gpu(model.hess, x["hess"], device.fp32),
              "select": on_gpu(model.obs, x["obs"], device.fp32),
              "output": on_gpu(model.out, x["out"], device.fp16)}
    return {**phases, "prune": sum(phases.values())}


def memory_bytes(shape: Shape, samples: int, seq_len: int, weight_bytes: int, act_bytes: int) -> dict[str, float]:
    """Predicted memory of a prune (bytes): the whole model (in-memory path, host), one layer plus the Hessians
    and their OBS work copies (fp32, ×4: H, its inverse, a Cholesky factor, a copy), and the one-pass
    activation buffers (layer input and output, ``o_proj`` and ``down_proj`` inputs) in ``act_bytes``."""
    tokens = samples * seq_len
    one_layer = shape.layer_params * weight_bytes
    hessians = 4 * 4 * (shape.hidden ** 2 + shape.ffn ** 2)
    buffers = tokens * (3 * shape.hidden + shape.ffn) * act_bytes
    return {"model": shape.params * weight_bytes, "layer": one_layer + hessians, "buffers": buffers,
            "embeddings": 2 * shape.vocab * shape.hidden * weight_bytes}


def cpu_matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matmul FLOP/s of this process (one thread as configured), best of ``repeats``."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


# --------------------------------------------------------------------------------------------- measure


def measure_row(model_name: str, ratio: float, path: str, args: argparse.Namespace) -> dict:
    """One row in this process: load, one dense forward, prune (unless ratio 0), perplexity, peak RSS.

    ``path="streaming"``: ``slimgpt.prune_checkpoint`` from the model's folder into ``args.work`` (the dense
    model is never loaded: no dense forward), then the pruned checkpoint is loaded for the perplexity.
    ``prune_peak_rss_mb`` is the process peak right after the prune (before the perplexity).
    """
    import torch
    from transformers import AutoTokenizer

    import slimgpt
    from slimgpt.memory import peak_rss_bytes
    from slimgpt.sources import model_config

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if path == "streaming":
        model, tokenizer = None, AutoTokenizer.from_pretrained(slimgpt.sources._resolve(model_name))
    else:
        model, tokenizer = slimgpt.load_model(model_name)
    calibration = slimgpt.calibration_data("wiki", tokenizer, args.samples, args.seq_len, seed=0)
    row = {"model": model_name, "ratio": ratio, "ratio_of": args.ratio_of, "path": path, "samples": args.samples,
           "seq_len": args.seq_len,
           "batch_size": args.batch_size, "threads": args.threads,
           "shape": dataclasses.asdict(shape_of(model_name, model_config(model_name))),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if path == "streaming":
        dst = args.work / f"{Path(model_name).name}-{ratio:g}"
        shutil.rmtree(dst, ignore_errors=True)  # a previous run's checkpoint
        args.work.mkdir(parents=True, exist_ok=True)
        report = slimgpt.prune_checkpoint(model_name, dst, calibration, ratio, batch_size=args.batch_size,
                                          ratio_of=args.ratio_of, **_range(args))
        row.update(_report_fields(report), prune_peak_rss_mb=peak_rss_bytes() / 2**20)
        model, _ = slimgpt.load_model(dst)
    else:
        row["load_s"] = time.perf_counter() - start
        if not args.no_forward:
            from prune_speed import dense_forward_seconds

            row["forward_s"] = dense_forward_seconds(model, calibration, args.batch_size)
        if ratio > 0:
            report = slimgpt.prune(model, calibration, ratio, batch_size=args.batch_size, ratio_of=args.ratio_of,
                                   **_range(args))
            row.update(_report_fields(report),
                       prune_peak_rss_mb=peak_rss_bytes() / 2**20)
    row.update(params=sum(p.numel() for p in model.parameters()), weights_sha256=weights_sha256(model))
    if args.ppl_tokens:
        row["ppl"] = slimgpt.perplexity(model, tokenizer, "wiki", seq_len=128, max_tokens=args.ppl_tokens)
        row["ppl_tokens"] = args.ppl_tokens
    row["peak_rss_mb"] = peak_rss_bytes() / 2**20
    return row


def _range(args: argparse.Namespace) -> dict:
    """The ``layer_range`` option when ``--layer-range`` is given."""
    return {"layer_range": tuple(args.layer_range)} if args.layer_range else {}


def _report_fields(report) -> dict:
    """The prune's time, phases (summed over layers) and achieved ratio from its ``PruneReport``."""
    return dict(prune_s=report.seconds, pruned_layers=sum(layer.target_ratio > 0 for layer in report.layers), capture_s=report.capture_seconds, passes=report.passes,
                achieved=report.achieved_ratio, params_dense=report.params_before,
                **{f"{p}_s": sum(getattr(layer, f"{p}_seconds") for layer in report.layers) for p in PHASES})


def weights_sha256(model) -> str:
    """sha256 over the state dict (names and bytes, sorted by name): equal hashes = bit-identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def in_fresh_process(function, *args) -> dict:
    """``function(*args)`` in a new process, so that its peak RSS is its own."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(function, *args).result()


def save_row(row: dict, path: Path) -> None:
    """Adds ``row`` to the JSON list at ``path``, replacing the row with the same model, ratio and path."""
    from slimgpt.io import write_json_atomic

    rows = json.loads(path.read_text()) if path.exists() else []
    key = (row["model"], row["ratio"], row["path"])
    rows = [r for r in rows if (r["model"], r["ratio"], r["path"]) != key] + [row]
    write_json_atomic(path, rows)


def measure(args: argparse.Namespace) -> None:
    for ratio in args.ratios:
        row = in_fresh_process(measure_row, args.model, ratio, args.path, args)
        row["cpu_matmul_flops"] = in_fresh_process(cpu_matmul_peak)
        print(json.dumps(row), flush=True)
        save_row(row, args.out / "prune_scaling.json")


# ---------------------------------------------------------------------------------------------- report

#: the paper's LLaMA-7B prune on one A100 (Table 3, secondary source; docs/method.md#reference-numbers-from-the-paper)
PAPER_7B = {0.2: 678.0, 0.5: 1074.0}
PAPER_CALIBRATION = (256, 2048)  # C4 samples × tokens (docs/method.md#calibration-data)
PCIE = 25e9  # ASSUMED host <-> device bytes/s (PCIe 4.0 x16, effective) for one-pass buffers kept on the host


def host_memory_fit(rows: list[dict], shapes: dict[str, Shape]) -> float:
    """The fixed part of the host peak RSS (bytes: interpreter, libraries, tokenizer, data) as the mean residual
    of ``prune_peak_rss - memory_bytes(fp32 model + one layer + buffers)`` over ``rows``. Pure."""
    residuals = []
    for r in rows:
        m = memory_bytes(shapes[r["model"]], r["samples"], r["seq_len"], 4, 4)
        residuals.append(r["prune_peak_rss_mb"] * 2**20 - (m["model"] + m["layer"] + m["buffers"]))
    return float(np.mean(residuals))


def gpu_plan(shape: Shape, device: Device, samples: int, seq_len: int, batch_size: int = 8) -> dict:
    """Where the one-pass buffers go on ``device`` (fp16 weights and activations): on the device when they take
    at most half of what one layer and the Hessians leave free (the engine's rule), else on the host (their
    transfers cost ``2 · buffers`` bytes per layer at the assumed ``PCIE``). Bytes of each part."""
    m = memory_bytes(shape, samples, seq_len, 2, 2)
    free = device.memory_gb * 1e9 - m["layer"]
    on_device = m["buffers"] <= free / 2
    resident = m["buffers"] if on_device else m["buffers"] * batch_size / samples  # else one batch at a time
    return {**m, "buffers_on": "device" if on_device else "host", "device_peak": m["layer"] + resident,
            "transfer_s": 0.0 if on_device else 2 * shape.layers * m["buffers"] / PCIE}


def measured_table(rows: list[dict]) -> str:
    from slimgpt.tables import markdown_table

    header = ["model", "params", "ratio", "path", "pruned layers", "prune s", "stats / select / output s", "dense fwd s",
              "prune / fwd", "prune peak RSS GB", "ppl (tokens)", "weights sha256"]
    body = []
    for r in sorted(rows, key=lambda r: (r["params_dense"] if "params_dense" in r else 0, r["ratio"], r["path"])):
        pruned = r["ratio"] > 0
        layers = r["shape"]["layers"]
        body.append([r["model"], f"{r.get('params', 0) / 1e9:.3f}B", f"{r['ratio']:.0%}", r["path"],
                     f"{r.get('pruned_layers', layers)} of {layers}" if pruned else "-",
                     f"{r['prune_s']:.0f}" if pruned else "-",
                     " / ".join(f"{r[p + '_s']:.0f}" for p in PHASES) if pruned else "-",
                     f"{r['forward_s']:.0f}" if "forward_s" in r else "-",
                     f"{r['prune_s'] / r['forward_s']:.2f}" if pruned and "forward_s" in r else "-",
                     f"{r['prune_peak_rss_mb'] / 1024:.2f}" if "prune_peak_rss_mb" in r else "-",
                     f"{r['ppl']:.2f} ({r['ppl_tokens']})" if "ppl" in r else "-",
                     r.get("weights_sha256", "")[:12]])
    return markdown_table(header, body)


def check_table(model: CostModel, rows: list[dict], shapes: dict, base: float, fitted: list[str],
                reference_peak: float | None = None) -> str:
    """Measured vs predicted time and host memory of every measured in-memory prune row (predicted seconds at
    the row's own measured peak when the model was fitted at ``reference_peak``, see :func:`speed`)."""
    from slimgpt.tables import markdown_table

    body = []
    for r in rows:
        shape = shapes[r["model"]]
        k = speed(r, reference_peak)
        p = {name: t / k for name, t in
             model.phases(shape, r["samples"], r["seq_len"], r["ratio"], r.get("pruned_layers")).items()}
        mem = memory_bytes(shape, r["samples"], r["seq_len"], 4, 4)
        rss = base + mem["model"] + mem["layer"] + mem["buffers"]
        role = "fit" if r["model"] in fitted else "**check**"
        fwd = r.get("forward_s")
        body.append([r["model"], role, f"{r['ratio']:.0%}", f"{r['prune_s']:.0f}", f"{p['prune']:.0f}",
                     f"{100 * (p['prune'] / r['prune_s'] - 1):+.0f}%",
                     " / ".join(f"{r[q + '_s']:.0f} vs {p[q]:.0f}" for q in PHASES),
                     f"{fwd:.0f}" if fwd else "-",
                     f"{p['forward']:.0f}", f"{100 * (p['forward'] / fwd - 1):+.0f}%" if fwd else "-",
                     f"{r['prune_peak_rss_mb'] / 1024:.2f}", f"{rss / 2**30:.2f}",
                     f"{100 * (rss / 2**20 / r['prune_peak_rss_mb'] - 1):+.0f}%"])
    header = ["model", "role", "ratio", "prune s measured", "predicted", "error",
              "stats / select / output s: measured vs predicted", "dense fwd s measured",
              "predicted", "error", "peak RSS GB measured", "predicted", "error"]
    return markdown_table(header, body)


def cpu_prediction_line(model: CostModel, shapes: dict, samples: int, seq_len: int) -> str:
    """The predicted whole-model prune time on this CPU (all layers) of each measured model, both ratios."""
    parts = [f"{name} {ratio:.0%}: {model.phases(shape, samples, seq_len, ratio)['prune'] / 60:.0f} min"
             for name, shape in sorted(shapes.items(), key=lambda kv: kv[1].params) for ratio in (0.2, 0.5)]
    return "Predicted whole-model prune on this CPU (one thread, all layers): " + "; ".join(parts) + "."


def prediction_table(model: CostModel, cpu_peak: float) -> str:
    """Predicted prune time and memory of the paper's models on the two ASSUMED GPUs, with the paper's 7B."""
    from slimgpt.tables import markdown_table

    n, seq = PAPER_CALIBRATION
    body = []
    for shape in LLAMA:
        for device in DEVICES:
            plan = gpu_plan(shape, device, n, seq)
            for ratio in (0.2, 0.5):
                t = gpu_seconds(model, cpu_peak, device, shape, n, seq, ratio)
                paper = f"{PAPER_7B[ratio]:.0f} (measured)" if shape.name == "LLaMA-7B" and device.name.startswith(
                    "A100") else "-"
                body.append([shape.name, f"{shape.params / 1e9:.1f}B", device.name, f"{ratio:.0%}",
                             f"{t['prune'] + plan['transfer_s']:.0f}",
                             f"{t['stats']:.0f} / {t['select']:.0f} / {t['output']:.0f} / {plan['transfer_s']:.0f}",
                             paper, f"{plan['device_peak'] / 1e9:.1f}", plan["buffers_on"],
                             f"{plan['model'] / 1e9:.0f}",
                             f"{(plan['embeddings'] + plan['layer'] + (plan['buffers'] if plan['buffers_on'] == 'host' else 0)) / 1e9:.1f}"])
    header = ["model", "params", "GPU (assumed peaks)", "ratio", "prune s (predicted)",
              "stats / select / output / transfers s", "paper s", "device peak GB (predicted)", "buffers on",
              "host GB in-memory (predicted)", "host GB streaming (predicted)"]
    return markdown_table(header, body)


def streaming_lines(rows: list[dict]) -> list[str]:
    """One sentence per streaming row: its peak, time and weights against the in-memory row of the same prune."""
    lines = []
    for r in (r for r in rows if r["path"] == "streaming"):
        mem = next((m for m in rows if m["path"] == "in_memory" and (m["model"], m["ratio"]) == (r["model"], r["ratio"])
                    and "prune_s" in m), None)
        if mem is None:
            continue
        same = r["weights_sha256"] == mem["weights_sha256"]
        lines.append(
            f"{r['model']} at {r['ratio']:.0%}: streaming prune peak RSS {r['prune_peak_rss_mb'] / 1024:.2f} GB vs "
            f"in-memory {mem['prune_peak_rss_mb'] / 1024:.2f} GB (**{r['prune_peak_rss_mb'] / mem['prune_peak_rss_mb']:.2f}×**), "
            f"prune {r['prune_s']:.0f} s vs {mem['prune_s']:.0f} s, perplexity {r.get('ppl', float('nan')):.4f} vs "
            f"{mem.get('ppl', float('nan')):.4f}; weights {'bit-identical (equal sha256 of the state dict)' if same else 'DIFFERENT'}.")
    return lines


def report(args: argparse.Namespace) -> None:
    """Fits on ``args.fit`` models, checks on the others, predicts the paper's models; writes md and png."""
    from slimgpt.io import write_text_atomic

    rows = json.loads((args.out / "prune_scaling.json").read_text())
    shapes = {r["model"]: Shape(**r["shape"]) for r in rows}
    pruned = [r for r in rows if r["ratio"] > 0 and r["path"] == "in_memory"]
    fit_rows = [r for r in pruned if r["model"] in args.fit and "forward_s" in r]
    cpu_peak = float(np.median([r["cpu_matmul_flops"] for r in fit_rows]))  # the reference: the fit rows' peak
    model = fit_cost_model(fit_rows, shapes, cpu_peak)
    base = host_memory_fit(fit_rows, shapes)
    text = "\n\n".join([
        REPORT_HEAD.format(samples=rows[0]["samples"], seq_len=rows[0]["seq_len"], cpu=cpu_peak / 1e9,
                           fit=", ".join(args.fit)),
        "### Measured (CPU, one thread)", measured_table(rows), *streaming_lines(rows),
        "### The fit and its check (time and host memory, in-memory path)",
        check_table(model, pruned, shapes, base, args.fit, cpu_peak),
        f"Fitted: statistics {model.fwd * cpu_peak:.2f} × forward FLOPs + {model.hess * cpu_peak:.2f} × Hessian "
        f"FLOPs, selection {model.obs * cpu_peak:.1f} × its FLOPs, "
        f"output {model.out * cpu_peak:.2f} × FLOPs, dense forward {model.dense * cpu_peak:.2f} × FLOPs (each as "
        f"seconds at the measured matmul peak of {cpu_peak / 1e9:.0f} GFLOP/s; 1.00 = peak speed); host RSS = "
        f"{base / 2**30:.2f} GB fixed + fp32 model + one layer with its Hessians + one-pass buffers.",
        cpu_prediction_line(model, shapes, rows[0]["samples"], rows[0]["seq_len"]),
        "### Predicted: the paper's models on one GPU (PREDICTED, not measured)",
        prediction_table(model, cpu_peak), PREDICTION_NOTES])
    for folder in (args.out, args.study):
        write_text_atomic(folder / "prune_scaling.md", text + "\n")
        figure(model, cpu_peak, pruned, shapes, folder / "prune_scaling.png")
    print(text)


REPORT_HEAD = """Prune cost vs model size. Calibration {samples}×{seq_len} wiki tokens, batch 8, schedule log_increase, \
method slimgpt, one-pass layer loop, fp32, CPU one thread (2-core machine shared with other jobs; load varied). \
Each row is one fresh process (`python benchmarks/prune_scaling.py measure ...`); the fit uses {fit}; \
`python benchmarks/prune_scaling.py report` writes this file. Each row's machine speed is its fp32 matmul peak \
of one thread, measured in a fresh process right after the row (`cpu_matmul_flops`: 28-110 GFLOP/s here, with \
the load and the machine); the fit brings every row to the fit rows' median peak, {cpu:.0f} GFLOP/s, and the check \
predicts each row at its own peak."""

PREDICTION_NOTES = """ASSUMPTIONS of the predicted rows: calibration 256×2048 (the paper's); fp16 weights and \
activations on the GPU, fp32 statistics and OBS math without TF32 (the engine's numerics); peak throughputs \
A100-80GB 312 TFLOP/s fp16 tensor / 19.5 TFLOP/s fp32, RTX 4090 (24 GB) 165 / 82.6 TFLOP/s; each part runs \
at the same fraction of the GPU's peak as it ran of the CPU's measured matmul peak here (optimistic for the \
selection phase, a sequence of small greedy steps that a GPU runs far below peak); one-pass buffers that do \
not fit in half the free device memory stay on the host and cross PCIe twice per layer at 25 GB/s; host \
memory: fp16 model (in-memory path) vs embeddings + one layer (+ host buffers) for the streaming path \
(`slimgpt.prune_checkpoint`). The paper's 678 s / 1,074 s (LLaMA-7B, one A100, its Table 3) are measured by \
its authors with their released code (three forwards per layer, inverse recomputed every greedy step)."""


def figure(model: CostModel, cpu_peak: float, rows: list[dict], shapes: dict, out: Path) -> None:
    """Prune seconds vs parameters: measured CPU rows, the fitted CPU curve, the A100 prediction, the paper."""
    from slimgpt import plots

    sizes = sorted({shapes[r["model"]] for r in rows}, key=lambda s: s.params) + list(LLAMA)
    n, seq = PAPER_CALIBRATION
    series = {}
    for ratio in (0.2, 0.5):
        measured = sorted((shapes[r["model"]].params / 1e9, r["prune_s"]) for r in rows if r["ratio"] == ratio)
        series[f"measured CPU {ratio:.0%}"] = ([m[0] for m in measured], [m[1] for m in measured])
        series[f"predicted CPU {ratio:.0%}"] = ([s.params / 1e9 for s in sizes], [
            model.phases(s, rows[0]["samples"], rows[0]["seq_len"], ratio)["prune"] for s in sizes])
        series[f"predicted A100 {ratio:.0%}, 256×2048"] = ([s.params / 1e9 for s in LLAMA], [
            gpu_seconds(model, cpu_peak, DEVICES[0], s, n, seq, ratio)["prune"] for s in LLAMA])
    series["paper A100 (LLaMA-7B)"] = ([LLAMA[0].params / 1e9] * 2, list(PAPER_7B.values()))
    plots.plot_xy(series, out, xlabel="parameters (billions)", ylabel="prune seconds", logx=True, logy=True,
                  title="Prune time vs model size: measured (CPU) and predicted",
                  caption=f"CPU: {rows[0]['samples']}×{rows[0]['seq_len']} tokens, one thread; A100: predicted "
                          "from the CPU fit with assumed peaks (benchmarks/results/prune_scaling.md).")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="prune one model at fixed calibration, one fresh process per ratio")
    m.add_argument("--model", required=True)
    m.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.2, 0.5],
                   help="0 = dense row (forward and perplexity only)")
    m.add_argument("--ratio-of", choices=["layers", "total"], default="layers",
                   help="layers: a share of the decoder layers' parameters (comparable across sizes: the embeddings "
                        "are 2%% of LLaMA-7B but 43%% of Qwen2.5-0.5B, whose 50%% of total is out of reach)")
    m.add_argument("--layer-range", type=int, nargs=2, metavar=("START", "END"),
                   help="prune only these layers (a cost sample of a model too slow to prune whole here)")
    m.add_argument("--path", choices=["in_memory", "streaming"], default="in_memory")
    m.add_argument("--samples", type=int, default=16)
    m.add_argument("--seq-len", type=int, default=256)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--ppl-tokens", type=int, default=8192, help="0: no perplexity")
    m.add_argument("--no-forward", action="store_true", help="skip the dense forward timing")
    m.add_argument("--work", type=Path, default=Path("/tmp/prune_scaling"), help="streaming: pruned checkpoints")
    m.add_argument("--out", type=Path, default=RESULTS)
    r = sub.add_parser("report", help="fit, predict, write the table and figure")
    r.add_argument("--fit", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"], help="models the fit uses")
    r.add_argument("--out", type=Path, default=RESULTS)
    r.add_argument("--study", type=Path, default=STUDY, help="the study folder that also gets the table and PNG")
    args = parser.parse_args()
    measure(args) if args.command == "measure" else report(args)


if __name__ == "__main__":
    main()
