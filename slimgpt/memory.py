"""Peak memory of this process: the one place that reads ``getrusage`` and CUDA's allocator peak."""

import resource
import sys

__all__ = ["peak_memory", "peak_memory_mb", "peak_rss_bytes"]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS).

    The peak is per process: in a sequential multirun (one process) it is the peak over all jobs so far.
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def peak_memory(device) -> tuple[int, str]:
    """``(bytes, kind)``: CUDA's peak allocation on ``device`` (a ``torch.device``) if it is a GPU, else the
    process's peak RSS; ``kind`` is ``"cuda_max_allocated"`` or ``"process_peak_rss"``."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return peak_rss_bytes(), "process_peak_rss"


def peak_memory_mb() -> dict[str, float]:
    """``{"rss_mb"}`` (peak RSS, MiB) plus ``"cuda_mb"`` (peak allocated GPU memory) when CUDA is in use."""
    peak = {"rss_mb": peak_rss_bytes() / 2**20}
    torch = sys.modules.get("torch")  # never import torch just to report that it was not used
    if torch is not None and torch.cuda.is_available():
        peak["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
