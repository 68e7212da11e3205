"""Pruning methods, selectable by name (``slimgpt.prune(..., method=NAME)``)."""

from . import slimgpt  # noqa: F401  (registers)
from . import slimgpt_plus  # noqa: F401  (registers)
from . import flap  # noqa: F401  (registers)
from . import flap_sequential  # noqa: F401  (registers)
from . import llm_pruner  # noqa: F401  (registers)
from . import magnitude  # noqa: F401  (registers)
from . import random_units  # noqa: F401  (registers)
from . import wanda_sp  # noqa: F401  (registers)
from .base import METHODS, Method, Selection, make_method, register

__all__ = ["METHODS", "Method", "Selection", "make_method", "register"]
