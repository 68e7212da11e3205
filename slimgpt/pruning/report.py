"""The pruning report: what was removed where, what it cost. JSON-able through :meth:`PruneReport.to_dict`."""

from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    """One decoder layer: target ratio, widths before/after, estimated errors, time.

    seconds: the whole layer; of it, ``stats_seconds``: the calibration forwards up to each ``out_proj`` and the
    statistics accumulated on the way; ``select_seconds``: the method's choices, compensation and surgery;
    ``output_seconds``: the pass producing the next layer's inputs (the dense forward of ``track_error`` is in
    none of the three).
    """

    layer: int
    target_ratio: float
    heads: tuple[int, int]
    kv_heads: tuple[int, int]
    ffn: tuple[int, int]
    params: tuple[int, int]
    attention: dict = field(default_factory=dict)
    mlp: dict = field(default_factory=dict)
    seconds: float = 0.0
    stats_seconds: float = 0.0
    select_seconds: float = 0.0
    output_seconds: float = 0.0
    #: relative output error vs the dense model, ``‖y - y_dense‖² / ‖y_dense‖²`` (with ``track_error``)
    output_error: float | None = None

    @property
    def achieved_ratio(self) -> float:
        return 1 - self.params[1] / self.params[0] if self.params[0] else 0.0


@dataclass
class PruneReport:
    """Result of :func:`slimgpt.prune`.

    ratio: requested fraction of parameters to remove: of the *total* parameters (embeddings included) when
    ``ratio_of == "total"``, of the pruned layers' prunable parameters when ``"layers"``.
    achieved_ratio: fraction of total parameters actually removed; layer_ratio: fraction of decoder-layer
    (prunable) parameters removed. peak_memory_bytes: CUDA peak allocation on a GPU, else the process's peak
    resident set size (``peak_memory_kind`` says which). passes: ``"one"`` or ``"three"``, the layer loop
    that ran (``engine["passes"]`` is what was asked; a method that needs no inputs runs one pass of the
    pruned layer); buffer_device: where the one-pass loop kept its activation buffers (None: no buffers).
    """

    method: str
    schedule: str
    first_ratio: float | None
    ratio: float
    ratio_of: str
    params_before: int
    params_after: int
    prunable_before: int
    prunable_after: int
    layers: list[LayerReport]
    seconds: float
    capture_seconds: float
    peak_memory_bytes: int
    peak_memory_kind: str
    calibration_shape: tuple[int, int]
    #: ``asdict`` of the :class:`~slimgpt.pruning.options.EngineOptions` and of the method's dataclass
    engine: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    passes: str = "three"
    buffer_device: str | None = None

    @property
    def achieved_ratio(self) -> float:
        return 1 - self.params_after / self.params_before

    @property
    def layer_ratio(self) -> float:
        return 1 - self.prunable_after / self.prunable_before

    def to_dict(self) -> dict:
        out = asdict(self)
        out["achieved_ratio"] = self.achieved_ratio
        out["layer_ratio"] = self.layer_ratio
        for layer, rep in zip(out["layers"], self.layers):
            layer["achieved_ratio"] = rep.achieved_ratio
        return out

    def table(self) -> str:
        """A plain-text per-layer table (heads, kv heads, FFN width, ratio)."""
        lines = [f"{'layer':>5} {'target':>7} {'got':>6} {'heads':>7} {'kv':>5} {'ffn':>11} {'sec':>6} "
                 f"{'stats':>6} {'select':>6} {'output':>6}"]
        for r in self.layers:
            lines.append(
                f"{r.layer:>5} {r.target_ratio:>7.3f} {r.achieved_ratio:>6.3f} {r.heads[0]:>3}>{r.heads[1]:<3}"
                f" {r.kv_heads[0]:>2}>{r.kv_heads[1]:<2} {r.ffn[0]:>5}>{r.ffn[1]:<5} {r.seconds:>6.2f}"
                f" {r.stats_seconds:>6.2f} {r.select_seconds:>6.2f} {r.output_seconds:>6.2f}"
            )
        lines.append(
            f"params {self.params_before:,} -> {self.params_after:,}  total ratio {self.achieved_ratio:.4f}"
            f" (target {self.ratio:.4f}), decoder-layer ratio {self.layer_ratio:.4f}, {self.seconds:.1f}s"
            f" ({self.passes} pass{'es' if self.passes != 'one' else ''} per layer)"
        )
        return "\n".join(lines)
