"""Our ``llm_pruner`` next to the released LLM-Pruner (``llama3.py``'s block-wise path) on the same model and
calibration tokens: perplexity and the kv heads / FFN channels each keeps (benchmarks/results/llm_pruner_fidelity.md).

Needs a checkout of https://github.com/horseee/LLM-Pruner (``--released PATH``; used as published, its
``LLMPruner/__init__.py`` is bypassed because it imports the ChatGLM tokenizer, which needs sentencepiece).
One spec per argument; each writes ``<out>/<tag>.json``:

    python benchmarks/llm_pruner_fidelity.py --released ../LLM-Pruner \\
        "real --p 0.83 --tag real" "ours --ratio 0.4983 --tag ours --opt gqa_scores=released"

``real``: ``MetaPruner`` set up exactly as ``llama3.py --block_wise --pruner_type taylor`` (``--p`` is its
``--pruning_ratio``; ``--dtype fp16`` as ``llama3.py`` loads the model). ``ours``: ``slimgpt.prune(..., "uniform",
method="llm_pruner", layer_range=(4, end))`` at the total ratio ``--ratio``. Both prune layers ``[4, end)``.
"""

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from slimgpt.data import calibration_data, documents, tokenize_stream

MODEL = "smollm2-135m"


def eval_windows(tokenizer) -> dict[str, torch.Tensor]:
    """``head``: the first 16 × 128 tokens of ``wiki`` test (= ``slimgpt.perplexity(..., max_tokens=2048)``);
    ``articles``: the first 128 tokens of each of the first 16 test articles with ≥ 128 tokens."""
    docs = documents("wiki", "test")
    head = tokenize_stream(tokenizer, docs, 2048).view(16, 128)
    articles = []
    for doc in docs:
        ids = tokenize_stream(tokenizer, [doc])
        if ids.numel() >= 128:
            articles.append(ids[:128])
        if len(articles) == 16:
            break
    return {"head": head, "articles": torch.stack(articles)}


@torch.no_grad()
def ppl(model, windows: torch.Tensor) -> float:
    """Perplexity over ``windows: [N, L]`` (each predicts its last ``L - 1`` tokens), as ``slimgpt.perplexity``."""
    model.eval()
    nll = 0.0
    for batch in windows.split(8):
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
    return math.exp(nll / (windows.shape[0] * (windows.shape[1] - 1)))


def calibration(tokenizer, source: str) -> torch.Tensor:
    """10 × 64 tokens (seed 0): ``wiki`` train, or ``lambada`` (book prose, a stand-in for bookcorpus)."""
    docs = documents("lambada", "test") if source == "lambada" else "wiki"
    return calibration_data(docs, tokenizer, 10, 64, seed=0)


def kept_rows(dense: torch.Tensor, pruned: torch.Tensor, size: int) -> list[int]:
    """Which blocks of ``size`` rows of ``dense: [out, in]`` survive in ``pruned: [out', in]`` (exact match)."""
    d, p = dense.float().view(-1, size, dense.shape[1]), pruned.float().view(-1, size, pruned.shape[1])
    return [int((d - block[None]).abs().flatten(1).amax(1).argmin()) for block in p]


def structure(dense, model) -> list[dict]:
    """Per layer: the kept kv heads, query heads and FFN channels (indices into the dense model)."""
    rows = []
    for i, (a, b) in enumerate(zip(dense.model.layers, model.model.layers)):
        hd = a.self_attn.head_dim
        rows.append({"layer": i, "kv": kept_rows(a.self_attn.k_proj.weight, b.self_attn.k_proj.weight, hd),
                     "q": kept_rows(a.self_attn.q_proj.weight, b.self_attn.q_proj.weight, hd),
                     "ffn": kept_rows(a.mlp.gate_proj.weight, b.mlp.gate_proj.weight, 1)})
    return rows


def load_llama(dtype: torch.dtype):
    """The model as HF ``LlamaForCausalLM`` with eager attention (the traced graph then has ``repeat_kv``,
    as in the transformers the released code was written for) and no KV cache (its tracer cannot flatten one)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from slimgpt.assets import model_dir

    path = model_dir(MODEL)
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager", use_cache=False)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def import_released(path: Path):
    """``LLMPruner.torch_pruning`` and ``LLMPruner.pruner.hf_llama_pruner`` from a checkout, without running
    ``LLMPruner/__init__.py``."""
    package = types.ModuleType("LLMPruner")
    package.__path__ = [str(path / "LLMPruner")]
    sys.modules["LLMPruner"] = package
    import LLMPruner.torch_pruning as tp
    from LLMPruner.pruner import hf_llama_pruner

    return tp, hf_llama_pruner


def run_released(args):
    """``llama3.py``'s block-wise Taylor pruning, its ``MetaPruner`` arguments verbatim."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    tp, llama_pruner = import_released(args.released)
    model, tokenizer = load_llama(torch.float16 if args.dtype == "fp16" else torch.float32)
    for p in model.parameters():
        p.requires_grad_(True)
    forward_prompts = torch.tensor([[1, 306, 4658, 278, 6593, 310, 2834, 338],
                                    [1, 3439, 17632, 1925, 29892, 278, 6368, 310]])  # llama3.py's, for tracing
    layers = model.model.layers
    pruner = tp.pruner.MetaPruner(
        model, forward_prompts,
        importance=llama_pruner.TaylorImportance(group_reduction="sum", taylor="param_first"),
        global_pruning=False, iterative_steps=1, ch_sparsity=args.p, ignored_layers=[], channel_groups={},
        consecutive_groups={layer.self_attn.k_proj: layer.self_attn.head_dim for layer in layers},
        customized_pruners={LlamaRMSNorm: llama_pruner.hf_rmsnorm_pruner}, root_module_types=None,
        root_instances=[layers[i].self_attn.k_proj for i in range(4, args.end)]
        + [layers[i].mlp.gate_proj for i in range(4, args.end)])
    model.zero_grad()
    calib = calibration(tokenizer, args.calib)
    model(calib, labels=calib).loss.backward()
    pruner.step()
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(False)
    return model.float(), tokenizer


def run_ours(args):
    import slimgpt

    model, tokenizer = slimgpt.load_model(MODEL)
    options = dict(kv.split("=", 1) for kv in args.opt or [])
    slimgpt.prune(model, calibration(tokenizer, args.calib), args.ratio, "uniform", method="llm_pruner",
                  layer_range=(4, args.end), progress=False, **options)
    return model, tokenizer


def spec_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spec")
    ap.add_argument("mode", choices=["real", "ours"])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--p", type=float, help="real: llama3.py's --pruning_ratio")
    ap.add_argument("--ratio", type=float, help="ours: share of total parameters")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="real: dtype of the pruning pass")
    ap.add_argument("--calib", choices=["wiki", "lambada"], default="wiki")
    ap.add_argument("--end", type=int, default=28, help="pruned layers are [4, end)")
    ap.add_argument("--opt", nargs="*", help="ours: method options key=value")
    return ap


def run_spec(args, released: Path, out: Path, dense_cache: dict) -> None:
    args.released = released
    start = time.time()
    dense, _ = load_llama(torch.float32)
    model, tokenizer = (run_released if args.mode == "real" else run_ours)(args)
    before, after = sum(p.numel() for p in dense.parameters()), sum(p.numel() for p in model.parameters())
    result = {"spec": {k: v for k, v in vars(args).items() if k != "released"}, "params_before": before,
              "params_after": after, "total_ratio": 1 - after / before}
    for name, windows in eval_windows(tokenizer).items():
        if name not in dense_cache:
            dense_cache[name] = ppl(dense, windows)
        pruned = ppl(model, windows)
        result[f"ppl_{name}"] = {"dense": dense_cache[name], "pruned": pruned, "ratio": pruned / dense_cache[name]}
    result["layers"] = structure(dense, model)
    result["seconds"] = time.time() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result))
    print(args.tag, f"total ratio {result['total_ratio']:.4f}",
          {k: round(v["pruned"], 2) for k, v in result.items() if k.startswith("ppl_")}, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--released", type=Path, required=True, help="checkout of horseee/LLM-Pruner")
    ap.add_argument("--out", type=Path, default=Path("llm_pruner_fidelity"))
    ap.add_argument("specs", nargs="+", help='e.g. "real --p 0.33 --tag a"')
    args = ap.parse_args()
    dense_cache: dict = {}
    for spec in args.specs:
        run_spec(spec_parser().parse_args(spec.split()), args.released, args.out, dense_cache)


if __name__ == "__main__":
    main()
