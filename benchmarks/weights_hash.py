"""Did a change move a number? Prunes SmolLM2-135M with every method through the checkout at ``CODE`` and
writes a sha256 of the pruned weights per run to ``OUT`` (JSON). Run it on two checkouts and diff the files:
equal hashes mean bit-identical pruned models.

    OMP_NUM_THREADS=1 python benchmarks/weights_hash.py CODE OUT.json

Small calibration (8 × 128 tokens; LLM-Pruner 10 × 64) keeps it to a few minutes per checkout.
"""
import hashlib
import json
import sys
import time

sys.path.insert(0, sys.argv[1])
import torch  # noqa: E402
torch.set_num_threads(1)
import slimgpt  # noqa: E402
print("code:", slimgpt.__file__, flush=True)
RUNS = [
    ("slimgpt-log-0.2", 0.2, dict(schedule="log_increase", method="slimgpt")),
    ("slimgpt-log-0.5", 0.5, dict(schedule="log_increase", method="slimgpt")),
    ("slimgpt-uniform-query_head-0.3946", 0.3946, dict(schedule="uniform", method="slimgpt", head_granularity="query_head")),
    ("slimgpt-exact-0.2", 0.2, dict(schedule="log_increase", method="slimgpt", head_score="exact")),
    ("llm_pruner-0.2", 0.2, dict(schedule="uniform", method="llm_pruner", layer_range=(4, 28))),
    ("flap-0.2", 0.2, dict(schedule="log_increase", method="flap")),
    ("wanda_sp-0.2", 0.2, dict(schedule="log_increase", method="wanda_sp")),
    ("magnitude-0.2", 0.2, dict(schedule="log_increase", method="magnitude")),
    ("random-0.2", 0.2, dict(schedule="log_increase", method="random")),
]
out = {}
for name, ratio, kw in RUNS:
    model, tok = slimgpt.load_model("smollm2-135m")
    n, L = (10, 64) if kw["method"] == "llm_pruner" else (8, 128)
    calib = slimgpt.calibration_data("wiki", tok, n, L, seed=0)
    start = time.time()
    slimgpt.prune(model, calib, ratio, batch_size=4, progress=False, **kw)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
    out[name] = h.hexdigest()
    print(name, out[name][:16], f"{time.time() - start:.0f}s", model.config.layer_intermediate_sizes[:4], flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
