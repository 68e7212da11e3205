"""SlimGPT vs the baselines on one model, same structures, same calibration source, same evaluation (issue 6).

Every method prunes the same coupled groups (KV groups of q/k/v rows + o_proj columns; FFN channels of
gate/up rows + a down_proj column) of a fresh copy of the model to the same *total*-parameter ratio, with
no recovery, then WikiText-style perplexity at ``seq_len`` 128 on the ``wiki`` test split (a prefix of
``--ppl-tokens`` tokens). Layer-wise methods get ``--samples × --seq-len`` calibration windows of ``wiki``
train; LLM-Pruner gets its paper default ``--lp-samples × --lp-seq-len`` (10 × 64) from the same source and
its own layer setting (uniform ratio inside ``default_layer_range``; its ``--pruning_ratio`` is listed).
Each run is a separate process, so "peak memory" (the process's peak RSS on CPU, CUDA max-allocated on a
GPU) is that run's own; it includes the loaded model and the evaluation.

    python benchmarks/compare_methods.py --model smollm2-135m --ratios 0.2 0.5

Writes ``benchmarks/results/compare_methods_<model>.md`` and ``.json`` (atomically) and prints the table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

import slimgpt
from slimgpt.io import write_text_atomic

#: (row label, method, schedule, method/engine options, calibration kind)
RUNS = {
    "slimgpt": ("SlimGPT", "slimgpt", "log_increase", {}, "layerwise"),
    "slimgpt_uniform": ("SlimGPT", "slimgpt", "uniform", {}, "layerwise"),
    "llm_pruner": ("LLM-Pruner element¹", "llm_pruner", "uniform", {"variant": "element1"}, "llm_pruner"),
    "llm_pruner_e2": ("LLM-Pruner element²", "llm_pruner", "uniform", {"variant": "element2"}, "llm_pruner"),
    "llm_pruner_vector": ("LLM-Pruner vector", "llm_pruner", "uniform", {"variant": "vector"}, "llm_pruner"),
    "flap": ("FLAP (UL-UM, bias comp.)", "flap", "log_increase", {}, "layerwise"),
    "wanda_sp": ("Wanda-sp", "wanda_sp", "log_increase", {}, "layerwise"),
    "magnitude": ("Magnitude-sp", "magnitude", "log_increase", {}, "layerwise"),
    "random": ("Random", "random", "log_increase", {"seed": 0}, "layerwise"),
}
DEFAULT_RUNS = ["slimgpt", "slimgpt_uniform", "llm_pruner", "flap", "wanda_sp", "magnitude", "random"]


def calibration(tokenizer, kind: str, args) -> torch.Tensor:
    """``[n, L]`` calibration windows of ``wiki`` train (seed 0) for a run's calibration kind."""
    n, length = (args.lp_samples, args.lp_seq_len) if kind == "llm_pruner" else (args.samples, args.seq_len)
    return slimgpt.calibration_data("wiki", tokenizer, n, length, seed=0)


def one_run(key: str, ratio: float, args) -> dict:
    """Loads a fresh model, prunes it with run ``key`` (``"dense"``: no pruning), evaluates it."""
    from slimgpt.eval.perplexity import perplexity
    from slimgpt.pruning.methods.llm_pruner import default_layer_range

    model, tokenizer = slimgpt.load_model(args.model)
    row = {"run": key, "ratio": ratio, "params_dense": sum(p.numel() for p in model.parameters())}
    if key != "dense":
        label, method, schedule, options, kind = RUNS[key]
        options = dict(options)
        if method == "llm_pruner":
            options["layer_range"] = default_layer_range(model.config.num_hidden_layers)
        calib = calibration(tokenizer, kind, args)
        report = slimgpt.prune(model, calib, ratio, schedule=schedule, method=method, batch_size=args.batch_size,
                               progress=False, **options)
        row.update(label=label, method=method, schedule=schedule, options=options, calibration=list(calib.shape),
                   achieved=report.achieved_ratio, layer_ratio=report.layer_ratio, prune_s=report.seconds,
                   peak_bytes=report.peak_memory_bytes, peak_kind=report.peak_memory_kind,
                   heads=model.config.layer_num_heads, ffn=model.config.layer_intermediate_sizes)
        if method == "llm_pruner":
            start, end = options["layer_range"]
            inside = sum(report.layers[i].params[0] for i in range(start, end))
            row["lp_pruning_ratio"] = ratio * report.params_before / inside
    start = time.perf_counter()
    row["ppl"] = perplexity(model, tokenizer, "wiki", seq_len=128, max_tokens=args.ppl_tokens,
                            batch_size=args.batch_size)
    row.update(ppl_s=time.perf_counter() - start, params=sum(p.numel() for p in model.parameters()))
    return row


def run_in_subprocess(key: str, ratio: float, args) -> dict:
    """``one_run`` in a fresh process (its own peak memory); returns its row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--one", key, "--one-ratio", str(ratio), "--one-out", str(out),
               *passthrough(args)]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def passthrough(args) -> list[str]:
    return ["--model", args.model, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--lp-samples", str(args.lp_samples), "--lp-seq-len", str(args.lp_seq_len),
            "--ppl-tokens", str(args.ppl_tokens), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]


def table(rows: list[dict], args) -> str:
    dense = next((r for r in rows if r["run"] == "dense"), None)
    dense_text = f"Dense PPL {dense['ppl']:.2f}, {dense['params_dense'] / 1e6:.1f} M params." if dense else "Dense: pending."
    head = (
        f"Model `{args.model}`, no recovery. PPL: `wiki` test, "
        f"seq_len 128, first {args.ppl_tokens:,} tokens. Calibration: `wiki` train, seed 0, {args.samples}×"
        f"{args.seq_len} tokens (LLM-Pruner: {args.lp_samples}×{args.lp_seq_len}, its paper default). "
        f"Device {'cuda' if torch.cuda.is_available() else 'cpu'}, {args.threads} thread(s), a shared "
        f"{os.cpu_count()}-core machine (times are indicative). Peak memory: the run's process peak RSS "
        f"(model + pruning + evaluation). {dense_text}\n\n"
        f"Command: `python benchmarks/compare_methods.py {' '.join(command_args())}`\n\n"
    )
    lines = ["| target | method | schedule | params (M) | total ratio | layer ratio | PPL@128 | prune (s) | "
             "peak mem (MiB) |", "|" + "---|" * 9]
    order = {key: i for i, key in enumerate(RUNS)}
    for r in sorted((r for r in rows if r["run"] != "dense"), key=lambda r: (r["ratio"], order[r["run"]])):
        schedule = r["schedule"]
        if r["method"] == "llm_pruner":
            start, end = r["options"]["layer_range"]
            schedule = f"uniform in layers {start}..{end - 1} (`--pruning_ratio` {r['lp_pruning_ratio']:.2f})"
        lines.append(
            f"| {r['ratio']:.0%} | {r['label']} | {schedule} | {r['params'] / 1e6:.1f} | {r['achieved']:.3f} | "
            f"{r['layer_ratio']:.3f} | {r['ppl']:.2f} | {r['prune_s']:.1f} | {r['peak_bytes'] / 2**20:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def command_args() -> list[str]:
    """The command-line arguments of this (parent) run, for the table header."""
    return [a for a in sys.argv[1:]]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lp-samples", type=int, default=10)
    parser.add_argument("--lp-seq-len", type=int, default=64)
    parser.add_argument("--ppl-tokens", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (separate processes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-ratio", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--one-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def jobs(args) -> list[tuple[str, float]]:
    """Dense first, then runs by priority (each run at every ratio before the next run)."""
    return [("dense", 0.0)] + [(key, ratio) for key in args.runs for ratio in args.ratios]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        write_text_atomic(args.one_out, json.dumps(one_run(args.one, args.one_ratio, args)))
        return
    name, rows = Path(args.model).name, []
    with ThreadPoolExecutor(args.workers) as pool:  # each job is its own process
        futures = {pool.submit(run_in_subprocess, key, ratio, args): (key, ratio) for key, ratio in jobs(args)}
        for future in as_completed(futures):
            rows.append(future.result())
            print(f"{futures[future]}: ppl {rows[-1]['ppl']:.2f}, {rows[-1].get('prune_s', 0):.1f}s", flush=True)
            write_text_atomic(args.out / f"compare_methods_{name}.json", json.dumps(rows, indent=1))
            write_text_atomic(args.out / f"compare_methods_{name}.md", table(rows, args))
    print(table(rows, args))


if __name__ == "__main__":
    main()
