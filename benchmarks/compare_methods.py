"""SlimGPT vs the baselines on one model, same structures, same calibration source, same evaluation.

A thin caller of the runner: every row is one ``slimgpt.runner.pipeline.run_job`` (prune → perplexity, no
recovery) of a fresh copy of the model, in its own process so that its peak memory is its own, with a fresh
run cache so that every row really prunes. Every method prunes the same coupled groups (KV groups of q/k/v
rows + o_proj columns; FFN channels of gate/up rows + a down_proj column) to the same *total*-parameter
ratio; perplexity at ``seq_len`` 128 on the ``wiki`` test split (a prefix of ``--ppl-tokens`` tokens).
Layer-wise methods get ``--samples × --seq-len`` calibration windows of ``wiki`` train; LLM-Pruner gets its
paper default ``--lp-samples × --lp-seq-len`` (10 × 64) and its own layer setting (uniform inside
``default_layer_range``; its ``--pruning_ratio`` is listed).

    python benchmarks/compare_methods.py --model smollm2-135m --ratios 0.2 0.5

Writes ``benchmarks/results/compare_methods_<model>.md`` and ``.json`` (atomically) and prints the table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from slimgpt.io import write_text_atomic
from slimgpt.pruning.options import EngineOptions
from slimgpt.pruning.schedules import Schedule
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.pipeline import Job, run_job
from slimgpt.runner.record import RunRecord
from slimgpt.runner.specs import CalibSpec, EvalSpec, FinetuneSpec, ModelSpec, PerplexitySpec, PrunerSpec
from slimgpt.tables import markdown_table

#: (row label, method, schedule, method options, calibration kind)
RUNS = {
    "slimgpt": ("SlimGPT", "slimgpt", "log_increase", {}, "layerwise"),
    "slimgpt_uniform": ("SlimGPT", "slimgpt", "uniform", {}, "layerwise"),
    "llm_pruner": ("LLM-Pruner element¹", "llm_pruner", "uniform", {"variant": "element1"}, "llm_pruner"),
    "llm_pruner_e2": ("LLM-Pruner element²", "llm_pruner", "uniform", {"variant": "element2"}, "llm_pruner"),
    "llm_pruner_vector": ("LLM-Pruner vector", "llm_pruner", "uniform", {"variant": "vector"}, "llm_pruner"),
    "flap": ("FLAP as released (AL-AM, dense stats)", "flap", "uniform", {}, "layerwise"),
    "flap_sequential": ("FLAP sequential (UL-UM, bias comp.)", "flap_sequential", "log_increase", {}, "layerwise"),
    "wanda_sp": ("Wanda-sp", "wanda_sp", "log_increase", {}, "layerwise"),
    "magnitude": ("Magnitude-sp", "magnitude", "log_increase", {}, "layerwise"),
    "random": ("Random", "random", "log_increase", {"seed": 0}, "layerwise"),
}
DEFAULT_RUNS = ["slimgpt", "slimgpt_uniform", "llm_pruner", "flap", "wanda_sp", "magnitude", "random"]


def make_job(key: str, ratio: float, args, run_dir: Path, cache_dir: Path) -> Job:
    """The runner job of row ``key`` at ``ratio`` (``"dense"``: evaluation only)."""
    evaluation = EvalSpec(perplexity=PerplexitySpec(corpora=("wiki",), seq_len=128, batch_size=args.batch_size,
                                                    max_tokens=args.ppl_tokens))
    common = dict(model=ModelSpec(args.model), finetune=FinetuneSpec(), evaluation=evaluation, run_dir=run_dir,
                  cache_dir=cache_dir, name=f"{key}-{ratio}")
    if key == "dense":
        return Job(calib=CalibSpec("wiki", args.samples, args.seq_len), pruner=PrunerSpec("slimgpt", 0.0),
                   schedule=Schedule("uniform"), stages=("eval",), **common)
    _, method, schedule, options, kind = RUNS[key]
    samples, seq_len = (args.lp_samples, args.lp_seq_len) if kind == "llm_pruner" else (args.samples, args.seq_len)
    layer_range = llm_pruner_range(args.model) if method == "llm_pruner" else None
    engine = EngineOptions(layer_range=layer_range, batch_size=args.batch_size, progress=False)
    return Job(calib=CalibSpec("wiki", samples, seq_len, seed=0), pruner=PrunerSpec(method, ratio, engine=engine,
               options=options), schedule=Schedule(schedule), stages=("prune", "eval"), **common)


def llm_pruner_range(model: str) -> tuple[int, int]:
    """LLM-Pruner's default layer range for ``model`` (its config's depth)."""
    from slimgpt.pruning.methods.llm_pruner import default_layer_range
    from slimgpt.sources import model_config

    return default_layer_range(model_config(model).num_hidden_layers)


def run_in_subprocess(key: str, ratio: float, args) -> RunRecord:
    """One job in a fresh process with a fresh run cache; returns its record."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--one", key, "--one-ratio", str(ratio), "--one-dir", tmp, *passthrough(args)]
        subprocess.run(cmd, check=True)
        return RunRecord.load(Path(tmp) / "run" / "results.json")


def passthrough(args) -> list[str]:
    return ["--model", args.model, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--lp-samples", str(args.lp_samples), "--lp-seq-len", str(args.lp_seq_len),
            "--ppl-tokens", str(args.ppl_tokens), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]


def row_of(key: str, ratio: float, record: RunRecord) -> dict:
    """The numbers of one job for the table and the JSON file."""
    row = {"run": key, "ratio": ratio, "ppl": record.metric("ppl/wiki"), "params": record.params.get("final")}
    if record.prune is not None:
        value = record.prune.value
        layer_range = record.spec("pruner.engine.layer_range")
        row.update(label=RUNS[key][0], method=record.spec("pruner.method"), schedule=record.spec("schedule.name"),
                   layer_range=layer_range, calibration=[record.spec("calib.num_samples"), record.spec("calib.seq_len")],
                   achieved=value("achieved_ratio"), layer_ratio=value("layer_ratio"), prune_s=value("seconds"),
                   peak_bytes=value("peak_memory_bytes"), params_before=value("params_before"))
        if layer_range is not None:
            start, end = layer_range
            inside = sum(params[0] for params in record.prune.layer_values("params")[start:end])
            row["lp_pruning_ratio"] = ratio * value("params_before") / inside
    return row


def table(rows: list[dict], args) -> str:
    dense = next((r for r in rows if r["run"] == "dense"), None)
    dense_text = f"Dense PPL {dense['ppl']:.2f}, {dense['params'] / 1e6:.1f} M params." if dense else "Dense: pending."
    head = (
        f"Model `{args.model}`, no recovery. PPL: `wiki` test, "
        f"seq_len 128, first {args.ppl_tokens:,} tokens. Calibration: `wiki` train, seed 0, {args.samples}×"
        f"{args.seq_len} tokens (LLM-Pruner: {args.lp_samples}×{args.lp_seq_len}, its paper default). "
        f"Device {'cuda' if torch.cuda.is_available() else 'cpu'}, {args.threads} thread(s), a shared "
        f"{os.cpu_count()}-core machine (times are indicative). Peak memory: the run's process peak RSS "
        f"(model + pruning + evaluation). {dense_text}\n\n"
        f"Command: `python benchmarks/compare_methods.py {' '.join(sys.argv[1:])}`\n\n"
    )
    header = ["target", "method", "schedule", "params (M)", "total ratio", "layer ratio", "PPL@128", "prune (s)",
              "peak mem (MiB)"]
    order = {key: i for i, key in enumerate(RUNS)}
    body = []
    for r in sorted((r for r in rows if r["run"] != "dense"), key=lambda r: (r["ratio"], order[r["run"]])):
        schedule = r["schedule"]
        if r["layer_range"] is not None:
            start, end = r["layer_range"]
            schedule = f"uniform in layers {start}..{end - 1} (`--pruning_ratio` {r['lp_pruning_ratio']:.2f})"
        body.append([f"{r['ratio']:.0%}", r["label"], schedule, f"{r['params'] / 1e6:.1f}", f"{r['achieved']:.3f}",
                     f"{r['layer_ratio']:.3f}", f"{r['ppl']:.2f}", f"{r['prune_s']:.1f}",
                     f"{r['peak_bytes'] / 2**20:.0f}"])
    return head + markdown_table(header, body) + "\n"


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
    parser.add_argument("--one-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        run_job(make_job(args.one, args.one_ratio, args, args.one_dir / "run", args.one_dir / "cache"), NoneLogger())
        return
    name, rows = Path(args.model).name, []
    jobs = [("dense", 0.0)] + [(key, ratio) for key in args.runs for ratio in args.ratios]
    with ThreadPoolExecutor(args.workers) as pool:  # each job is its own process
        futures = {pool.submit(run_in_subprocess, key, ratio, args): (key, ratio) for key, ratio in jobs}
        for future in as_completed(futures):
            key, ratio = futures[future]
            rows.append(row_of(key, ratio, future.result()))
            print(f"{key} {ratio}: ppl {rows[-1]['ppl']:.2f}, {rows[-1].get('prune_s', 0):.1f}s", flush=True)
            write_text_atomic(args.out / f"compare_methods_{name}.json", json.dumps(rows, indent=1))
            write_text_atomic(args.out / f"compare_methods_{name}.md", table(rows, args))
    print(table(rows, args))


if __name__ == "__main__":
    main()
