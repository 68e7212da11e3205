"""Helpers shared by several test files (test files never import each other; fixtures live in conftest.py)."""

import slimgpt
from slimgpt.pruning import Method, Selection
from slimgpt.runner.loggers import NoneLogger
from slimgpt.sources import tiny_model


def slim_tiny(family: str = "llama", **sizes) -> slimgpt.SlimGPTForCausalLM:
    """A tiny ``SlimGPTForCausalLM`` with room to prune: 8 query heads in 2 GQA groups, 128 FFN channels."""
    return slimgpt.as_slim(tiny_model(family, **{"heads": 8, "kv_heads": 2, "ffn": 128, **sizes}))


def replay_method(removed_per_block: list[list[int]]) -> Method:
    """A pruning method that removes the given units block after block, with no compensation — "plain
    removal" of the units another method chose (for A/B tests of compensation)."""

    class Replay(Method):
        name = "replay"
        needs_inputs = False

        def __init__(self):
            self.log = iter(removed_per_block)

        def select(self, block, stats, num_remove):
            return Selection(next(self.log))

    return Replay()


class RecordingLogger(NoneLogger):
    """Keeps every call, to check what the runner logs and that it always closes."""

    def __init__(self):
        self.events = []

    def start(self, **kwargs):
        self.events.append(("start", kwargs["name"]))

    def log(self, metrics):
        self.events.append(("log", metrics))

    def log_table(self, key, columns, rows):
        self.events.append(("table", key))

    def summary(self, values):
        self.events.append(("summary", values))

    def close(self, status):
        self.events.append(("close", status))
