"""Does a saved (pruned) model run in llama.cpp as it does in PyTorch? One model, a few GGUF types.

For each type the model is exported with ``slimgpt.export.to_gguf`` and, in llama.cpp (1 thread): the file size,
the perplexity on the wiki test split (first ``--ppl-tokens`` tokens, windows of 128, the same token ids as
PyTorch's), and a greedy continuation of a prompt (does it load and generate). PyTorch's perplexity on the same
windows is the reference. Prints markdown (the table and the continuations).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/gguf_check.py <model dir> --types f32 q8_0 --pad-ffn 32
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

import slimgpt
from slimgpt.assets import text_corpus
from slimgpt.eval.perplexity import perplexity_stats, tokenize_stream, to_windows
from slimgpt.export import to_gguf
from slimgpt.export.llamacpp import LlamaCppModel

PROMPT = "The history of the Roman Empire"


def llama_cpp_row(path: Path, windows: torch.Tensor, prompt: list[int], steps: int) -> tuple[float, list[int]]:
    """llama.cpp's perplexity on ``windows`` ([N, L] ids) and a greedy continuation of ``prompt``."""
    with LlamaCppModel(path, n_ctx=max(windows.shape[1], len(prompt) + steps)) as engine:
        nll = sum(engine.nll_sum(w.tolist()) for w in windows)
        return math.exp(nll / (windows.numel() - windows.shape[0])), engine.generate(prompt, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved model directory (or a model name slimgpt.load_model knows)")
    parser.add_argument("--types", nargs="+", default=["f32", "q8_0"])
    parser.add_argument("--pad-ffn", type=int, default=32)
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    model, tokenizer = slimgpt.load_model(args.model)
    torch_ppl = perplexity_stats(model, tokenizer, "wiki", seq_len=128, max_tokens=args.ppl_tokens)["ppl"]
    windows = to_windows(tokenize_stream(tokenizer, text_corpus("wiki", "test"), args.ppl_tokens), 128)
    prompt = tokenizer(PROMPT)["input_ids"]
    print(f"heads per layer {model.config.layer_num_heads}\nkv heads per layer {model.config.layer_num_key_value_heads}")
    print("\n| type | file MiB | ppl llama.cpp | ppl PyTorch | greedy continuation in llama.cpp |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for dtype in args.types:
            summary = to_gguf(model, tokenizer, Path(scratch) / f"{dtype}.gguf", dtype, pad_ffn=args.pad_ffn)
            ppl, tokens = llama_cpp_row(summary.path, windows, prompt, args.steps)
            text = tokenizer.decode(tokens).replace("\n", " ").replace("|", "/")
            print(f"| {dtype.upper()} | {summary.file_bytes / 2**20:.1f} | {ppl:.3f} | {torch_ppl:.3f} | "
                  f"{PROMPT}**{text}** |", flush=True)


if __name__ == "__main__":
    main()
