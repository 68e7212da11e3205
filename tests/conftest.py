import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(params=["llama", "qwen2"])
def family(request) -> str:
    """Both supported tiny families: LLaMA with GQA, Qwen2 with q/k/v biases."""
    return request.param
