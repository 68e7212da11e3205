"""A thin runtime over llama.cpp's C API: load a GGUF, score token ids, quantize, time prompt and generation.

The library comes from ``llama-cpp-python`` (``pip install 'slimgpt[gguf]'``; it compiles llama.cpp once,
then pip reuses the built wheel). Only its ctypes bindings of the C API ``llama.h`` are used
(``llama_model_load_from_file``, ``llama_decode``, ``llama_get_logits_ith``, ``llama_tokenize``,
``llama_model_quantize``), so any maintained build of the same llama.cpp would do.
"""

from __future__ import annotations

import collections
import ctypes
import os
import time
from pathlib import Path

import numpy as np

#: GGUF file types produced by llama.cpp's quantizer (``enum llama_ftype``).
LLAMA_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "bf16": 32}
INSTALL_HINT = "pip install 'slimgpt[gguf]'  (llama-cpp-python: builds llama.cpp's library once, CPU only)"
_LOG: collections.deque[str] = collections.deque(maxlen=50)
_STATE: dict = {}


def runtime():
    """The ``llama_cpp`` ctypes module, initialised once, with llama.cpp's log kept in memory (errors re-raised)."""
    if "lib" not in _STATE:
        try:
            from llama_cpp import llama_cpp as lib
        except ImportError as err:
            raise ImportError(f"the llama.cpp runtime is not installed: {INSTALL_HINT}") from err

        @lib.llama_log_callback
        def keep_log(level, text, user_data):
            if level >= 3:  # warnings and errors; the rest is model-loading chatter
                _LOG.append((text or b"").decode("utf-8", "replace").rstrip())

        lib.llama_log_set(keep_log, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _STATE.update(lib=lib, callback=keep_log)
    return _STATE["lib"]


def _recent_log() -> str:
    lines = [line for line in _LOG if line]
    _LOG.clear()
    return "; ".join(lines[-5:]) or "no message from llama.cpp"


def quantize(src: str | os.PathLike, dst: str | os.PathLike, kind: str, threads: int = 1) -> None:
    """Writes ``dst``, the GGUF ``src`` requantized by llama.cpp to ``kind`` (a key of ``LLAMA_FTYPES``)."""
    if kind not in LLAMA_FTYPES:
        raise ValueError(f"unknown GGUF type '{kind}'; llama.cpp types: {', '.join(LLAMA_FTYPES)}")
    lib = runtime()
    params = lib.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = LLAMA_FTYPES[kind]
    if lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {kind}: {_recent_log()}")


class LlamaCppModel:
    """A GGUF model and one llama.cpp context (sequence 0), CPU only. Use as a context manager.

    Args:
        path: the GGUF file.
        n_ctx: context length of the KV cache (tokens).
        threads: CPU threads for prompt and generation.
        n_batch: tokens per ``llama_decode`` call (longer prompts are split).
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, threads: int = 1, n_batch: int = 512):
        lib = self.lib = runtime()
        if not Path(path).is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}: {_recent_log()}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}: {_recent_log()}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.n_ctx, self.n_batch = n_ctx, n_batch

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Frees the context and the model (idempotent)."""
        if getattr(self, "ctx", None) is not None:
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None

    def reset(self) -> None:
        """Empties the KV cache (the next decode starts at position 0)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[int], start: int = 0, logits: str = "last") -> None:
        """Runs ``tokens`` at positions ``start..`` in chunks of ``n_batch``; ``logits``: "all" | "last" | "none"."""
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        lib = self.lib
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset:offset + self.n_batch]
            batch = lib.llama_batch_init(len(chunk), 0, 1)
            try:
                batch.n_tokens = len(chunk)
                for i, token in enumerate(chunk):
                    batch.token[i], batch.pos[i] = token, start + offset + i
                    batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
                    last = offset + i == len(tokens) - 1
                    batch.logits[i] = logits == "all" or (logits == "last" and last)
                code = lib.llama_decode(self.ctx, batch)
            finally:
                lib.llama_batch_free(batch)
            if code != 0:
                raise RuntimeError(f"llama_decode failed with code {code}: {_recent_log()}")

    def logits(self, tokens: list[int]) -> np.ndarray:
        """``float32[len(tokens), n_vocab]``: the logits at every position of ``tokens`` (fresh KV cache)."""
        if not tokens or len(tokens) > self.n_ctx:
            raise ValueError(f"need 1..{self.n_ctx} tokens (n_ctx), got {len(tokens)}")
        self.reset()
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        for offset in range(0, len(tokens), self.n_batch):  # llama.cpp keeps the logits of the last decode only
            chunk = tokens[offset:offset + self.n_batch]
            self.decode(chunk, start=offset, logits="all")
            for i in range(len(chunk)):
                out[offset + i] = self._logits_row(i)
        return out

    def nll_sum(self, window: list[int]) -> float:
        """Summed ``-log p(x_t | x_<t)`` over ``t = 1..len(window)-1`` of one window (fresh KV cache, fp64)."""
        logits = self.logits(window)[:-1].astype(np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        return float((log_z - logits[np.arange(len(window) - 1), window[1:]]).sum())

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """llama.cpp's tokenization of ``text`` (special-token text parsed as special tokens)."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buffer = (self.lib.llama_token * capacity)()
        count = self.lib.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, True)
        if count < 0:
            raise RuntimeError(f"llama_tokenize needs {-count} slots, had {capacity}")
        return list(buffer[0:count])

    def time_prompt(self, tokens: list[int]) -> float:
        """Seconds to process ``tokens`` as one prompt (fresh KV cache, logits of the last token only)."""
        self.reset()
        start = time.perf_counter()
        self.decode(tokens, logits="last")
        return time.perf_counter() - start

    def time_generation(self, first: int, steps: int) -> float:
        """Seconds for ``steps`` single-token greedy decodes after the one-token prompt ``first``."""
        self.reset()
        self.decode([first], logits="last")
        start = time.perf_counter()
        self._greedy(1, steps)
        return time.perf_counter() - start

    def generate(self, tokens: list[int], steps: int) -> list[int]:
        """Greedy continuation of ``tokens`` by ``steps`` tokens (fresh KV cache)."""
        self.reset()
        self.decode(tokens, logits="last")
        return self._greedy(len(tokens), steps)

    def _greedy(self, pos: int, steps: int) -> list[int]:
        """Appends ``steps`` argmax tokens at positions ``pos..`` (the last decode left its logits)."""
        out = []
        for step in range(steps):
            out.append(int(self._logits_row(-1).argmax()))
            self.decode([out[-1]], start=pos + step, logits="last")
        return out

    def _logits_row(self, i: int) -> np.ndarray:
        """``float32[n_vocab]`` logits of output ``i`` of the last decode (-1: the last one), copied."""
        row = self.lib.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()
