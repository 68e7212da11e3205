"""Statistics of a linear layer's input columns, accumulated over calibration batches (one protocol for
every pruning method: ``add_batch(x)``)."""

import math

import torch


class InputStats:
    """Running statistics of inputs ``x: [..., cols]`` of one linear layer.

    hessian: ``H = (2/N) Σ_n X_n X_nᵀ: [cols, cols]`` in fp32, a running mean over N sequences exactly as
        SparseGPT's ``add_batch`` (only if ``hessian=True``; it is ``cols²`` memory): one fp32 product over all
        tokens of a batch, of which a CPU computes only the upper triangle (:func:`add_gram`).
    sum, sq_sum: ``[cols]`` per-column sums of ``x`` and ``x²`` over all tokens (for Wanda's ``‖x_j‖₂`` and
        FLAP's fluctuation), fp32 (fp64 for ``sq_sum`` is unnecessary at these token counts).
    """

    def __init__(self, cols: int, device: torch.device | str, hessian: bool = True):
        self._hessian = torch.zeros(cols, cols, device=device) if hessian else None
        self._upper_only = False  # only the upper triangle of _hessian is current (add_gram on a CPU)
        self.sum = torch.zeros(cols, device=device)
        self.sq_sum = torch.zeros(cols, device=device)
        self.sequences = 0
        self.tokens = 0

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        """Adds ``x: [batch, seq, cols]`` (``batch`` sequences)."""
        n = x.shape[0] if x.dim() == 3 else 1
        X = x.reshape(-1, x.shape[-1]).to(torch.float32)  # [tokens, cols]
        column_sums = X.sum(0)  # a NaN/inf anywhere makes its column's sum non-finite: check X only then
        if not torch.isfinite(column_sums).all() and not torch.isfinite(X).all():
            raise FloatingPointError("non-finite (NaN/inf) activations in the calibration forward pass")
        if self._hessian is not None:
            self._hessian.mul_(self.sequences / (self.sequences + n))
            X_scaled = math.sqrt(2 / (self.sequences + n)) * X
            self._upper_only = add_gram(self._hessian, X_scaled)
        self.sum.add_(column_sums)
        self.sq_sum.add_(X.pow(2).sum(0))
        self.sequences += n
        self.tokens += X.shape[0]

    @property
    def hessian(self) -> torch.Tensor | None:
        """``[cols, cols]`` the Hessian (None without ``hessian=True``)."""
        if self._upper_only:
            upper = torch.triu(self._hessian)
            self._hessian = upper + torch.triu(upper, 1).T
            self._upper_only = False
        return self._hessian

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


#: rows per block of :func:`add_gram`'s upper-triangle product on a CPU (measured, one thread, 2,048 tokens ×
#: 1,536 columns: 0.07 s instead of 0.12 s for the full product, with a bit-identical upper triangle)
GRAM_BLOCK = 256


def add_gram(H: torch.Tensor, X: torch.Tensor) -> bool:
    """``H += Xᵀ X`` for ``X: [tokens, cols]``, ``H: [cols, cols]`` (fp32). On a CPU only the upper triangle is
    computed, block row by block row (``H[b, b:] += X[:, b]ᵀ X[:, b:]``, about half the multiply-adds); on
    other devices the full product. Returns whether only the upper triangle of ``H`` is current."""
    cols = H.shape[0]
    if H.device.type != "cpu" or cols <= GRAM_BLOCK:
        H.addmm_(X.T, X)
        return False
    for start in range(0, cols, GRAM_BLOCK):
        rows = slice(start, min(start + GRAM_BLOCK, cols))
        H[rows, start:].addmm_(X[:, rows].T, X[:, start:])
    return True
