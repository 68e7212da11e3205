"""Pruning methods, selectable by name (``slimgpt.prune(..., method=NAME)``)."""

from . import slimgpt  # noqa: F401  (registers)
from .base import METHODS, Method, Selection, make_method, register

__all__ = ["METHODS", "Method", "Selection", "make_method", "register"]
