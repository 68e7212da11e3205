"""Peak host memory of a prune in memory vs streamed (``slimgpt.prune_checkpoint``), and whether the two give the
same weights. One mode per process (the peak RSS is per process):

    OMP_NUM_THREADS=1 python benchmarks/stream_memory.py memory OUT_DIR [--model smollm2-135m --ratio 0.5 ...]
    OMP_NUM_THREADS=1 python benchmarks/stream_memory.py stream OUT_DIR [...]
    OMP_NUM_THREADS=1 python benchmarks/stream_memory.py resume OUT_DIR [... --stop-at 15]

``resume`` prunes in memory with a checkpoint, is interrupted when it reaches layer ``--stop-at`` (an exception
raised from the layer function, standing for a pre-emption), then prunes a freshly loaded model with the same
checkpoint: its weights' sha256 should equal that of ``memory``.

Each run writes ``OUT_DIR/<mode>.json``: the peak RSS of the whole process (``ru_maxrss``: imports, model,
buffers, statistics), the RSS after the imports alone (the baseline both modes share), wall time, and the
sha256 of the pruned weights (taken after the peak was read, so hashing does not count).
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

import slimgpt
from slimgpt.memory import peak_rss_bytes
from slimgpt.pruning.streaming import source_folder


def weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resumed(folder, calibration, ratio: float, stop_at: int, checkpoint: Path, options: dict):
    """A prune stopped at layer ``stop_at`` and resumed from its checkpoint on a freshly loaded model."""
    from slimgpt.pruning import engine

    real = engine.prune_layer

    def stop(layer, index, *args):
        if index == stop_at:
            raise KeyboardInterrupt(f"stopped at layer {index}")
        return real(layer, index, *args)

    engine.prune_layer = stop
    try:
        slimgpt.prune(slimgpt.load_model(folder)[0], calibration, ratio, checkpoint_dir=checkpoint, **options)
    except KeyboardInterrupt as stopped:
        print(stopped, "- checkpoint:", json.loads((checkpoint / "state.json").read_text())["layers_done"], "layers")
    finally:
        engine.prune_layer = real
    model, _ = slimgpt.load_model(folder)
    slimgpt.prune(model, calibration, ratio, checkpoint_dir=checkpoint, **options)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("memory", "stream", "resume"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--stop-at", type=int, default=15, help="resume: the layer the first run is stopped at")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    folder = source_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    calibration = slimgpt.calibration_data("wiki", tokenizer, args.samples, args.seq_len, seed=0)
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    options = dict(batch_size=4, progress=False)
    if args.mode == "memory":
        model, _ = slimgpt.load_model(folder)
        slimgpt.prune(model, calibration, args.ratio, **options)
        peak, seconds = peak_rss_bytes(), time.perf_counter() - start
    elif args.mode == "resume":
        model = resumed(folder, calibration, args.ratio, args.stop_at, args.out / "checkpoint", options)
        peak, seconds = peak_rss_bytes(), time.perf_counter() - start
    else:
        dst = args.out / "streamed"
        slimgpt.prune_checkpoint(folder, dst, calibration, args.ratio, **options)
        peak, seconds = peak_rss_bytes(), time.perf_counter() - start
        model, _ = slimgpt.load_model(dst)
    result = {"mode": args.mode, "model": args.model, "ratio": args.ratio, "calibration": [args.samples, args.seq_len],
              "peak_rss_mib": peak / 2**20, "rss_after_imports_mib": baseline / 2**20, "seconds": seconds,
              "weights_sha256": weights_sha256(model)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.mode}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
