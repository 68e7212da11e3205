"""Structured pruning: the layer-wise engine, OBS kernels, layer-ratio schedules and methods."""

from .engine import prune
from .methods import METHODS, Method, Selection, register
from .report import LayerReport, PruneReport
from .schedules import SCHEDULES, layer_ratios

__all__ = ["METHODS", "SCHEDULES", "LayerReport", "Method", "PruneReport", "Selection", "layer_ratios", "prune", "register"]
