import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(params=["llama", "qwen2"])
def family(request) -> str:
    """Both supported tiny families: LLaMA with GQA, Qwen2 with q/k/v biases."""
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Small models run faster on one thread than on two contended ones; the count is restored afterwards.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
