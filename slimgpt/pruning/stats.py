"""Statistics of a linear layer's input columns, accumulated over calibration batches (one protocol for
every pruning method: ``add_batch(x)``)."""

import math

import torch


class InputStats:
    """Running statistics of inputs ``x: [..., cols]`` of one linear layer.

    hessian: ``H = (2/N) Σ_n X_n X_nᵀ: [cols, cols]`` in fp32, a running mean over N sequences exactly as
        SparseGPT's ``add_batch`` (only if ``hessian=True``; it is ``cols²`` memory).
    sum, sq_sum: ``[cols]`` per-column sums of ``x`` and ``x²`` over all tokens (for Wanda's ``‖x_j‖₂`` and
        FLAP's fluctuation), fp32 (fp64 for ``sq_sum`` is unnecessary at these token counts).
    """

    def __init__(self, cols: int, device: torch.device | str, hessian: bool = True):
        self.hessian = torch.zeros(cols, cols, device=device) if hessian else None
        self.sum = torch.zeros(cols, device=device)
        self.sq_sum = torch.zeros(cols, device=device)
        self.sequences = 0
        self.tokens = 0

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        """Adds ``x: [batch, seq, cols]`` (``batch`` sequences)."""
        n = x.shape[0] if x.dim() == 3 else 1
        X = x.reshape(-1, x.shape[-1]).to(torch.float32)  # [tokens, cols]
        if not torch.isfinite(X).all():
            raise FloatingPointError("non-finite (NaN/inf) activations in the calibration forward pass")
        if self.hessian is not None:
            self.hessian.mul_(self.sequences / (self.sequences + n))
            X_scaled = math.sqrt(2 / (self.sequences + n)) * X
            self.hessian.addmm_(X_scaled.T, X_scaled)
        self.sum.add_(X.sum(0))
        self.sq_sum.add_(X.pow(2).sum(0))
        self.sequences += n
        self.tokens += X.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """``[cols]`` mean of each column over tokens."""
        return self.sum / max(self.tokens, 1)

    @property
    def variance(self) -> torch.Tensor:
        """``[cols]`` variance of each column over tokens (FLAP's fluctuation)."""
        return (self.sq_sum / max(self.tokens, 1) - self.mean.pow(2)).clamp_min(0)

    @property
    def norm(self) -> torch.Tensor:
        """``[cols]`` ``‖x_j‖₂`` over all tokens (Wanda)."""
        return self.sq_sum.sqrt()
