"""``slimgpt export <model> --type q8_0 --out m.gguf``: a saved (pruned) model as a GGUF file for llama.cpp."""

from __future__ import annotations

import argparse
import sys

from .gguf import GGUF_TYPES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimgpt export",
        description="Write a dense or pruned model as GGUF (llama.cpp architecture 'deci', per-layer widths).")
    p.add_argument("model", help="a saved model directory (e.g. a run's pruned/ folder) or a known model name")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="f16", choices=GGUF_TYPES, dest="dtype",
                   help="tensor type of the 2-D weights (quantized types use llama.cpp's quantizer)")
    p.add_argument("--pad-ffn", type=int, default=1, metavar="N",
                   help="round each FFN width up to a multiple of N with zero channels (exact; 32 lets llama.cpp "
                        "use its fast F16/Q8_0 kernels and quantize every tensor)")
    p.add_argument("--regroup", action="store_true",
                   help="write uneven query groups (head_granularity=query_head) exactly by adding kv-head copies "
                        "and zero query heads, instead of refusing; the KV-cache cost is printed")
    p.add_argument("--threads", type=int, default=1, help="threads for llama.cpp's quantizer")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the export; returns 0, or 2 with one line on stderr when the model cannot be written."""
    args = parser().parse_args(argv)
    from .. import load_model
    from .gguf import to_gguf

    try:
        model, tokenizer = load_model(args.model)
        summary = to_gguf(model, tokenizer, args.out, args.dtype, regroup=args.regroup, pad_ffn=args.pad_ffn,
                          threads=args.threads)
    except (ValueError, OSError, ImportError) as err:
        print(f"slimgpt export: {err}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
