"""Pruned models served by llama.cpp (issue 11; the real-engine view of paper Tables 3/4).

For the dense model and each pruning ratio (kv-group granularity; pruned widths as they come and padded with
zero FFN channels to a multiple of ``--pad-ffn``), every GGUF type is written with ``slimgpt.export.to_gguf``
and measured in llama.cpp on this machine with ``--threads`` threads:
  * file size; KV-cache MiB at 4096 tokens (F16 cache, from the written kv heads);
  * prompt tokens/s (one ``--prompt``-token batch) and generation tokens/s (``--gen`` single-token decodes),
    runs interleaved over all files, median of ``--repeats``;
  * perplexity in llama.cpp and in PyTorch on the same token ids (wiki test split, first ``--ppl-tokens``
    tokens, windows of 128 as in the paper), plus an F32 file per model to show the export is exact.

    OMP_NUM_THREADS=1 python benchmarks/serve_gguf.py --model smollm2-135m

Writes ``benchmarks/results/serve_gguf_<model>.md`` and ``.png`` (speed-up vs dense per type).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

import slimgpt
from slimgpt import plots
from slimgpt.eval.perplexity import perplexity_stats, tokenize_stream, to_windows
from slimgpt.export import kv_cache_mib, to_gguf
from slimgpt.export.llamacpp import LlamaCppModel
from slimgpt.io import write_text_atomic


def variants(args) -> list[tuple[str, float, int]]:
    """``(label, ratio, pad_ffn)``: dense, then each ratio unpadded and padded."""
    out = [("dense", 0.0, 1)]
    for ratio in args.ratios:
        out += [(f"{ratio:.0%}", ratio, 1), (f"{ratio:.0%} pad{args.pad_ffn}", ratio, args.pad_ffn)]
    return out


def build_models(args, workdir: Path) -> tuple[list[dict], torch.Tensor]:
    """Prunes once per ratio and writes every GGUF; returns one row per (variant, type) and the ppl windows."""
    _, tokenizer = slimgpt.load_model(args.model)
    calibration = slimgpt.calibration_data("wiki", tokenizer, args.samples, args.seq_len, seed=0)
    from slimgpt.assets import text_corpus

    windows = to_windows(tokenize_stream(tokenizer, text_corpus("wiki", "test"), args.ppl_tokens), 128)
    rows, models = [], {}
    for label, ratio, pad in variants(args):
        if ratio not in models:
            model, _ = slimgpt.load_model(args.model)
            if ratio:
                slimgpt.prune(model, calibration, ratio, schedule="log_increase", head_granularity="kv_group",
                              batch_size=8, progress=False)
            # the same token ids as ``windows`` (same stream, same cut)
            stats = perplexity_stats(model, tokenizer, "wiki", seq_len=128, max_tokens=args.ppl_tokens)
            models[ratio] = (model, stats["ppl"])
        model, torch_ppl = models[ratio]
        for dtype in (["f32"] if pad == 1 else []) + args.types:
            path = workdir / f"{label.replace(' ', '_').replace('%', 'p')}.{dtype}.gguf"
            summary = to_gguf(model, tokenizer, path, dtype, pad_ffn=pad, threads=args.threads)
            rows.append(dict(variant=label, ratio=ratio, dtype=dtype, path=path, mib=summary.file_bytes / 2**20,
                             kv_mib=kv_cache_mib(summary.kv_heads, summary.head_dim), torch_ppl=torch_ppl))
            print(summary.describe(), flush=True)
    return rows, windows


def measure_speed(rows: list[dict], args) -> None:
    """Adds median prompt and generation tokens/s; runs interleaved over all files, ``args.repeats`` rounds."""
    timed = [r for r in rows if r["dtype"] != "f32"]
    prompt = list(range(1000, 1000 + args.prompt))
    samples = {id(r): ([], []) for r in timed}
    engines = {id(r): LlamaCppModel(r["path"], n_ctx=args.prompt + args.gen + 8, threads=args.threads,
                                    n_batch=args.prompt) for r in timed}
    try:
        for _ in range(args.repeats):
            for r in timed:
                engine, (pp, tg) = engines[id(r)], samples[id(r)]
                pp.append(args.prompt / engine.time_prompt(prompt))
                tg.append(args.gen / engine.time_generation(prompt[0], args.gen))
    finally:
        for engine in engines.values():
            engine.close()
    for r in timed:
        r["pp"], r["tg"] = (statistics.median(x) for x in samples[id(r)])


def measure_perplexity(rows: list[dict], windows: torch.Tensor, args) -> None:
    """Adds llama.cpp's perplexity on ``windows`` ([N, 128] token ids) for every file."""
    for r in rows:
        with LlamaCppModel(r["path"], n_ctx=windows.shape[1], threads=args.threads) as engine:
            nll = sum(engine.nll_sum(w.tolist()) for w in windows)
        r["ppl"] = math.exp(nll / (windows.numel() - windows.shape[0]))


def table(rows: list[dict], args, started: str, load: tuple) -> str:
    dense = {r["dtype"]: r for r in rows if r["variant"] == "dense"}
    lines = ["| model | type | file MiB | file vs dense | prompt tok/s | vs dense | gen tok/s | vs dense | "
             "KV MiB @4k | ppl llama.cpp | ppl PyTorch |", "|" + "---|" * 11]
    for r in rows:
        d = dense[r["dtype"]]
        speed = (f"{r['pp']:.0f} | {r['pp'] / d['pp']:.2f}× | {r['tg']:.1f} | {r['tg'] / d['tg']:.2f}×"
                 if "pp" in r else "– | – | – | –")
        lines.append(f"| {r['variant']} | {r['dtype'].upper()} | {r['mib']:.1f} | {r['mib'] / d['mib']:.2f}× | "
                     f"{speed} | {r['kv_mib']:.1f} | {r['ppl']:.3f} | {r['torch_ppl']:.3f} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = (f"Model `{args.model}` pruned with SlimGPT (kv_group heads, log_increase schedule, calibration "
            f"{args.samples}×{args.seq_len} wiki tokens), exported with `slimgpt.export.to_gguf` (arch `deci`) and "
            f"run in llama.cpp (llama-cpp-python) on the CPU with {args.threads} thread(s). Prompt: one batch of "
            f"{args.prompt} tokens; generation: {args.gen} single-token decodes; median of {args.repeats} rounds, "
            f"files interleaved within each round. Perplexity: wiki test split, first {args.ppl_tokens} tokens, "
            f"windows of 128, the same token ids in both engines. `padN`: FFN widths padded with zero channels "
            f"to a multiple of N (exact).\n\n")
    foot = (f"\n\nMeasured {started} to {datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC, commit {commit}, "
            f"{os.cpu_count()} CPU cores, load average at start {load[0]:.1f} (other jobs shared the machine: "
            f"absolute tokens/s move between runs, the ratios within one run are the comparable numbers).\n")
    return head + "\n".join(lines) + foot


def figure(rows: list[dict], out: Path, caption: str, dtype: str = "q8_0") -> None:
    """Prompt and generation speed-up vs dense of every pruned ``dtype`` file (the first timed type if absent)."""
    timed = [r for r in rows if "pp" in r]
    dtype = dtype if any(r["dtype"] == dtype for r in timed) else timed[0]["dtype"]
    dense = next(r for r in timed if r["variant"] == "dense" and r["dtype"] == dtype)
    values = {}
    for r in timed:
        if r["dtype"] == dtype and r["variant"] != "dense":
            values[f"{r['variant']} prompt"] = r["pp"] / dense["pp"]
            values[f"{r['variant']} gen"] = r["tg"] / dense["tg"]
    plots.plot_bars(values, out, ylabel=f"tokens/s vs dense {dtype.upper()}", reference=1.0,
                    title=f"llama.cpp speed of pruned {dtype.upper()} files vs dense", caption=caption)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--pad-ffn", type=int, default=32)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    started, load = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}", os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve_gguf-") as workdir:
        rows, windows = build_models(args, Path(workdir))
        measure_speed(rows, args)
        measure_perplexity(rows, windows, args)
    text = table(rows, args, started, load)
    print(text)
    name = Path(args.model).name
    write_text_atomic(args.out / f"serve_gguf_{name}.md", text)
    figure(rows, args.out / f"serve_gguf_{name}.png", f"{args.model}, llama.cpp, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
