"""Export to llama.cpp: a dense or pruned SlimGPT model as a GGUF file (``slimgpt export`` on the command line).

    to_gguf(model, tokenizer, path, dtype="f16", regroup=False, pad_ffn=1) -> ExportSummary
Types: f32, f16, bf16 (written directly) and q8_0, q4_k_m, q5_k_m (llama.cpp's quantizer, which needs the
``gguf`` extra). Layouts llama.cpp cannot run are rewritten exactly or refused (``UnsupportedLayoutError``).
"""

from .gguf import GGUF_TYPES, ExportSummary, plan_layouts, to_gguf
from .layout import LayerLayout, UnsupportedLayoutError, kv_cache_mib
from .tokenizer import UnsupportedTokenizerError

__all__ = ["GGUF_TYPES", "ExportSummary", "LayerLayout", "UnsupportedLayoutError", "UnsupportedTokenizerError",
           "kv_cache_mib", "plan_layouts", "to_gguf"]
