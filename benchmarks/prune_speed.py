"""Pruning cost and pruned-model efficiency (issue: engine performance; paper Tables 3/4).

Measures, on this machine, for each ratio and each layer loop (``--passes``, back to back in one run):
  * prune wall time, and its ratio to ONE dense forward pass of the whole model over the same calibration
    tokens (same batch size) — the three-pass loop costs ≈3 layer forwards per layer, the one-pass loop ≈1
    (plus the statistics and the greedy steps); the prune time split into statistics / selection / output
    pass (summed over layers);
  * peak memory (CUDA max allocated on a GPU, else the peak RSS — includes the loaded model; each row runs in
    a fresh process, so the peak is that row's own);
  * parameters and weight memory of the pruned model vs dense;
  * greedy generation latency (batch 1, ``--prompt`` tokens in, ``--new`` tokens out, median of 3) vs dense.

    python benchmarks/prune_speed.py --model smollm2-135m --ratios 0.2 0.5 --samples 64 --seq-len 256 \
        --passes one three

Writes a markdown table to ``benchmarks/results/prune_speed_<model>.md`` (atomically), prints it, and draws
``prune_speed_<model>.png`` (weights and latency as % of dense per ratio).
"""

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import slimgpt
from slimgpt import plots
from slimgpt.io import write_text_atomic


def dense_forward_seconds(model, calibration: torch.Tensor, batch_size: int) -> float:
    """Wall time of one full forward pass (logits included) over ``calibration: [n, L]``."""
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, calibration.shape[0], batch_size):
            model(calibration[b:b + batch_size], use_cache=False)
    return time.perf_counter() - start


def generation_seconds(model, prompt: torch.Tensor, new_tokens: int, repeats: int = 3) -> float:
    """Median wall time of greedy generation of ``new_tokens`` after ``prompt: [1, P]``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure(model_name: str, ratio: float, passes: str, calibration: torch.Tensor, args) -> dict:
    """Loads a fresh model, times a dense forward and generation, prunes, times generation again."""
    torch.set_num_threads(args.threads)
    model, _ = slimgpt.load_model(model_name)
    prompt = calibration[:1, : args.prompt]
    row = {"ratio": ratio, "passes": passes, "params_dense": sum(p.numel() for p in model.parameters()),
           "mem_dense": weight_bytes(model)}
    row["forward_s"] = dense_forward_seconds(model, calibration, args.batch_size)
    row["gen_dense_s"] = generation_seconds(model, prompt, args.new)
    report = slimgpt.prune(model, calibration, ratio, schedule=args.schedule, batch_size=args.batch_size,
                           passes=passes)
    row.update(prune_s=report.seconds, peak_mb=report.peak_memory_bytes / 2**20, peak_kind=report.peak_memory_kind,
               params=report.params_after, mem=weight_bytes(model), achieved=report.achieved_ratio,
               ran=report.passes, widths=[(r.heads[1], r.ffn[1]) for r in report.layers],
               gen_s=generation_seconds(model, prompt, args.new),
               **{f"{phase}_s": sum(getattr(r, f"{phase}_seconds") for r in report.layers)
                  for phase in ("stats", "select", "output")})
    return row


def measure_in_fresh_process(model_name: str, ratio: float, passes: str, calibration: torch.Tensor, args) -> dict:
    """:func:`measure` in a new process (its peak RSS is this row's alone)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(measure, model_name, ratio, passes, calibration, args).result()


def table(rows: list[dict], args) -> str:
    head = (f"Model `{args.model}`, calibration {args.samples}×{args.seq_len} wiki tokens, batch {args.batch_size}, "
            f"schedule {args.schedule}, device {'cuda' if torch.cuda.is_available() else 'cpu'} "
            f"({os.cpu_count()} CPU cores); generation {args.prompt}→+{args.new} tokens, batch 1.\n\n")
    lines = ["| ratio | passes | achieved | params (M) | weights vs dense | prune (s) | stats / select / output (s) | "
             "dense fwd (s) | prune / fwd | peak mem (MiB) | gen latency vs dense |", "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['ratio']:.0%} | {r['ran']} | {r['achieved']:.3f} | {r['params'] / 1e6:.1f} of "
            f"{r['params_dense'] / 1e6:.1f} | {r['mem'] / r['mem_dense']:.0%} | {r['prune_s']:.1f} | "
            f"{r['stats_s']:.1f} / {r['select_s']:.1f} / {r['output_s']:.1f} | {r['forward_s']:.1f} | "
            f"{r['prune_s'] / r['forward_s']:.2f} | {r['peak_mb']:.0f} ({r['peak_kind']}) | "
            f"{r['gen_s'] / r['gen_dense_s']:.0%} ({r['gen_s']:.2f}s vs {r['gen_dense_s']:.2f}s) |"
        )
    return head + "\n".join(lines) + "\n" + same_widths(rows)


def same_widths(rows: list[dict]) -> str:
    """A line per ratio measured with several loops: whether they chose the same per-layer widths."""
    lines = []
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        runs = [r for r in rows if r["ratio"] == ratio]
        if len(runs) > 1:
            same = all(r["widths"] == runs[0]["widths"] for r in runs)
            lines.append(f"\n{ratio:.0%}: {' and '.join(r['ran'] for r in runs)} pass(es) chose "
                         f"{'the same' if same else 'DIFFERENT'} per-layer widths (heads, FFN).")
    return "".join(lines) + ("\n" if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--schedule", default="log_increase")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--passes", nargs="+", choices=["auto", "one", "three"], default=["one", "three"],
                        help="layer loops to measure, back to back per ratio (EngineOptions.passes)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per row")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    _, tokenizer = slimgpt.load_model(args.model)
    calibration = slimgpt.calibration_data("wiki", tokenizer, args.samples, args.seq_len, seed=0)
    rows = [measure_in_fresh_process(args.model, ratio, passes, calibration, args)
            for ratio in args.ratios for passes in args.passes]
    text = table(rows, args)
    print(text)
    write_text_atomic(args.out / f"prune_speed_{Path(args.model).name}.md", text)
    figure(rows, args.out / f"prune_speed_{Path(args.model).name}.png", text.split("\n\n")[0])


def figure(rows: list[dict], out: Path, caption: str) -> None:
    """Pruned-model weight memory and generation latency as % of dense, per ratio (paper Table 4's view)."""
    values = {}
    for r in rows:
        if r["passes"] != rows[0]["passes"]:
            continue  # the pruned models of the loops are the same (same widths)
        values[f"{r['ratio']:.0%} weights"] = 100 * r["mem"] / r["mem_dense"]
        values[f"{r['ratio']:.0%} latency"] = 100 * r["gen_s"] / r["gen_dense_s"]
    plots.plot_bars(values, out, ylabel="% of the dense model", reference=100.0,
                    title="Pruned model: weight memory and generation latency vs dense", caption=caption)


if __name__ == "__main__":
    main()
