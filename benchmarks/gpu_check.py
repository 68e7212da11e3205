"""GPU check (issue 14 §4): prune on CUDA and compare with the CPU, offline, in a few minutes.

    OMP_NUM_THREADS=4 python benchmarks/gpu_check.py [--out benchmarks/results] [--no-smollm2]

On a tiny random LLaMA (and SmolLM2-135M when the asset cache already holds it; nothing is downloaded):

1. **CUDA prune in fp16 and bf16** (weights in that dtype on the host, one layer at a time on the GPU, statistics
   in fp32, TF32 off — the engine switches it off while pruning; the script checks that it is off inside the
   prune): every layer finite, the target ratio met.
2. **Peak device memory vs the one-layer bound**: CUDA's peak allocation during the prune against
   ``bound = embeddings + the largest layer + input buffer(s) + one-pass buffers + 4 · ffn² · 4 B`` (the fp32
   Hessian, its inverse, the Cholesky factor and one workspace of the widest block), all in bytes. The model as a
   whole is never on the device, so the peak must stay below the bound (and, on SmolLM2, far below the model).
3. **CPU vs GPU**: the same fp32 prune on both; the units chosen in every block are compared (identical lists,
   block by block) and the largest weight difference is printed. fp32 matmuls on the two devices round
   differently, so a near-tie may flip a unit: the table says how many blocks agree.

Writes ``gpu_check.md`` and ``gpu_check.json`` to ``--out``. Without CUDA it prints why and exits with status 2,
running nothing.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

NO_CUDA = 2
TINY = "tiny:llama?num_layers=4,hidden=256,heads=8,kv_heads=2,ffn=688"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-smollm2", action="store_true", help="only the tiny model")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (or torch was built without CUDA); nothing was run. "
              "Run it on a machine with a GPU.", file=sys.stderr)
        return NO_CUDA
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    for name in models(args.no_smollm2):
        calibration = calibration_for(name, args.samples, args.seq_len)
        for dtype in (torch.float16, torch.bfloat16):
            rows.append(cuda_prune(name, calibration, dtype))
        rows.append(cpu_vs_gpu(name, calibration))
    write(rows, args.out)
    return 0 if all(row["ok"] for row in rows) else 1


def models(no_smollm2: bool) -> list[str]:
    """The tiny model, and SmolLM2-135M when it is already in the asset cache (no download)."""
    from slimgpt.assets import prepared

    return [TINY] + ([] if no_smollm2 or prepared("smollm2-135m") is None else ["smollm2-135m"])


def calibration_for(name: str, samples: int, seq_len: int) -> torch.Tensor:
    """``[samples, seq_len]`` token ids: random bytes for the tiny model, offline Wikipedia text for SmolLM2."""
    import slimgpt

    if name.startswith("tiny:"):
        return torch.randint(0, 256, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    _, tokenizer = slimgpt.load_model(name)
    return slimgpt.calibration_data("wiki", tokenizer, samples, seq_len, seed=0)


def one_layer_bound(model, calibration: torch.Tensor, track_error: bool) -> int:
    """Bytes the prune may hold on the device at once (see the module docstring)."""
    from slimgpt.pruning.engine import activation_bytes
    from slimgpt.pruning.structures import count_params

    layers = model.model.layers
    item = model.model.embed_tokens.weight.element_size()
    n, length, hidden = *calibration.shape, model.config.hidden_size
    inps = torch.empty(n, length, hidden, dtype=model.dtype, device="meta")
    ffn = max(layer.mlp.intermediate_size for layer in layers)
    return (count_params(model.model.embed_tokens) * item + max(count_params(layer) for layer in layers) * item
            + (1 + track_error) * inps.numel() * item + activation_bytes(inps, layers) + 4 * ffn * ffn * 4)


def cuda_prune(name: str, calibration: torch.Tensor, dtype: torch.dtype, device: str = "cuda") -> dict:
    """One prune on CUDA with the model's weights in ``dtype``; its device peak against the one-layer bound."""
    import slimgpt
    from slimgpt.pruning import engine

    model, _ = slimgpt.load_model(name, dtype=dtype)
    bound = one_layer_bound(model, calibration, track_error=True)
    tf32 = []
    real = engine.prune_layer

    def watch(*a, **k):
        tf32.append(torch.backends.cuda.matmul.allow_tf32)
        return real(*a, **k)

    engine.prune_layer = watch
    try:
        start = time.perf_counter()
        report = slimgpt.prune(model, calibration, 0.2, device=device, track_error=True, progress=False)
        seconds = time.perf_counter() - start
    finally:
        engine.prune_layer = real
    ok = report.peak_memory_bytes <= bound and not any(tf32) and abs(report.achieved_ratio - 0.2) < 0.02
    return {"check": f"CUDA prune {str(dtype).removeprefix('torch.')}", "model": name, "ok": ok,
            "seconds": round(seconds, 1), "peak_device_mib": round(report.peak_memory_bytes / 2**20, 1),
            "bound_mib": round(bound / 2**20, 1), "tf32_in_prune": any(tf32),
            "achieved_ratio": round(report.achieved_ratio, 4),
            "max_layer_error": max(r.output_error for r in report.layers)}


def chosen_units(name: str, calibration: torch.Tensor, device: str) -> tuple[list[list[int]], dict]:
    """The units removed in every block (in order) and the pruned state dict of an fp32 prune on ``device``."""
    import slimgpt
    from slimgpt.pruning import engine

    removed, real = [], engine.choose_units

    def record(*a):
        units, info = real(*a)
        removed.append(sorted(units))
        return units, info

    engine.choose_units = record
    try:
        model, _ = slimgpt.load_model(name)
        slimgpt.prune(model, calibration, 0.2, device=device, progress=False)
    finally:
        engine.choose_units = real
    return removed, model.state_dict()


def cpu_vs_gpu(name: str, calibration: torch.Tensor) -> dict:
    """The same fp32 prune on the CPU and the GPU: blocks with identical units, largest weight difference."""
    cpu_units, cpu_weights = chosen_units(name, calibration, "cpu")
    gpu_units, gpu_weights = chosen_units(name, calibration, "cuda")
    same = sum(a == b for a, b in zip(cpu_units, gpu_units))
    shapes_equal = all(cpu_weights[k].shape == gpu_weights[k].shape for k in cpu_weights)
    diff = (max(float((cpu_weights[k] - gpu_weights[k].cpu()).abs().max()) for k in cpu_weights)
            if shapes_equal else None)
    return {"check": "CPU vs GPU units (fp32)", "model": name, "ok": same == len(cpu_units),
            "blocks_same": f"{same}/{len(cpu_units)}", "max_weight_diff": diff}


def write(rows: list[dict], out: Path) -> None:
    """``gpu_check.md`` (a table per check kind) and ``gpu_check.json``."""
    from slimgpt.io import write_json_atomic, write_text_atomic
    from slimgpt.tables import markdown_table

    device = torch.cuda.get_device_name(0)
    lines = [f"# GPU check ({device}, torch {torch.__version__})", "",
             "Written by `benchmarks/gpu_check.py` (see its docstring for what each column means).", ""]
    for kind in dict.fromkeys(row["check"].split(" ")[0] for row in rows):
        part = [row for row in rows if row["check"].startswith(kind)]
        columns = list(dict.fromkeys(k for row in part for k in row))
        lines += [markdown_table(columns, [[row.get(c) for c in columns] for row in part]), ""]
    text = "\n".join(lines)
    print(text)
    write_text_atomic(out / "gpu_check.md", text)
    write_json_atomic(out / "gpu_check.json", {"device": device, "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
