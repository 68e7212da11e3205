"""Resume a prune killed mid-way: a per-layer checkpoint of the layer loop (docs/method.md#streaming-and-resume).

A :class:`Checkpointed` store wraps the loop's :class:`~slimgpt.pruning.engine.LayerStore`. After each layer it
writes, in its folder:

    layer-00003.safetensors   the pruned weights of layer 3 (names as in the layer's ``state_dict``), its widths
                              (kv map, kv heads, FFN channels) in the file's metadata
    inputs-00004.safetensors  ``inps`` (and ``dense_inps`` with ``track_error``): the inputs of layer 4
    state.json                the commit point: fingerprint, layers done, the inputs file, reports so far

Each file is written under a temporary name and renamed into place; ``state.json`` is written last, so a
process killed at any point leaves the state of the last finished layer. A later call with the same arguments
(the fingerprint: model, calibration tokens, ratio, schedule, method and its options, engine options, planned
per-layer ratios/counts, device, dtype, one or three passes) restores layers ``0..k-1`` and the buffers and
continues at layer k: the result is bit-identical to an uninterrupted run, because layer k sees the same
inputs and every later step is the same computation. A checkpoint made with other arguments is refused. A
finished prune removes the folder. While a prune uses the folder it holds an exclusive ``flock`` on it
(``slimgpt.io.in_use`` sees it); a second process finding it locked prunes without a checkpoint.
"""

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..io import jsonable, move_atomic, read_json, remove_tree, write_json_atomic
from .engine import LayerStore, LoopState
from .methods import Method
from .options import EngineOptions
from .report import LayerReport
from .schedules import Schedule

log = logging.getLogger(__name__)

#: bump when the checkpoint layout changes (an older checkpoint is then refused, not misread)
FORMAT = 1
STATE = "state.json"
#: config keys that do not describe the architecture (paths, versions; the dtype the weights were saved in:
#: the dtype they are pruned in is fingerprinted on its own)
_VOLATILE_CONFIG = ("transformers_version", "architectures", "auto_map", "dtype", "torch_dtype")


#: how many leading values of each tensor :func:`sample_hash` reads
SAMPLE = 1024


def sample_hash(named: Iterable[tuple[str, torch.Tensor, torch.Tensor | None]]) -> str:
    """sha256 of ``(name, tensor, head)`` triples: each tensor's name, shape and dtype, and its first ``SAMPLE``
    values ``head`` (flattened; None: not hashed, e.g. a tensor only on the meta device)."""
    digest = hashlib.sha256()
    for name, tensor, head in named:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if head is not None:
            head = head.reshape(-1)[:SAMPLE].detach().cpu().contiguous()
            digest.update(head.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint(
    store: LayerStore,
    calibration: torch.Tensor,
    ratio: float,
    ratio_of: str,
    schedule: Schedule,
    method: Method,
    engine: EngineOptions,
    device: torch.device,
    ratios: list[float],
    counts: list[tuple[int, int]] | None,
    one_pass: bool,
    dtype: torch.dtype,
) -> dict:
    """Everything that determines the pruned weights, as plain JSON: a checkpoint resumes only a prune whose
    fingerprint is equal. ``progress`` and ``buffers``/``buffer_dir`` are left out (they change no number)."""
    config = {k: v for k, v in store.model.config.to_dict().items() if not k.startswith("_") and
              k not in _VOLATILE_CONFIG}
    options = {k: v for k, v in dataclasses.asdict(engine).items() if k not in ("progress", "buffers", "buffer_dir")}
    calib = calibration.detach().cpu().contiguous()
    return _plain({
        "format": FORMAT, "config": config, "weights": store.sample(),
        "calibration": {"shape": list(calib.shape), "sha256": hashlib.sha256(calib.numpy().tobytes()).hexdigest()},
        "ratio": ratio, "ratio_of": ratio_of, "schedule": dataclasses.asdict(schedule), "method": method.name,
        "method_options": method.options(), "engine": options, "device": device.type, "dtype": str(dtype),
        "passes": "one" if one_pass else "three", "ratios": ratios, "counts": counts,
    })


def _plain(value):
    """``value`` as it reads back from JSON (tuples as lists, ...), so that fingerprints compare equal."""
    return json.loads(json.dumps(jsonable(value), default=str))


class Checkpointed(LayerStore):
    """``inner`` (the model in memory, or a streamed checkpoint) with a per-layer checkpoint in ``folder`` (see the
    module docstring); ``fingerprint`` is :func:`fingerprint` of the prune."""

    def __init__(self, inner: LayerStore, folder: str | os.PathLike, fingerprint: dict):
        self.inner, self.folder, self.fingerprint = inner, Path(folder), fingerprint
        self.model = inner.model
        self._lock: int | None = None

    # ----------------------------------------------------------------------------------------- the seam

    def resume(self, loop: LoopState) -> int:
        first = self.inner.resume(loop)
        if not self._acquire():
            return first
        state = self._read_state()
        if state is None:
            return first
        done = state["layers_done"]
        for index in range(first, done):  # the saved layer replaces every weight: no need to load the dense one
            layer = self.model.model.layers[index]
            restore_layer(layer, self.folder / _layer_file(index))
            self.inner.done(index, layer, loop)
        self._restore_buffers(loop, state)
        log.info("resuming the prune from layer %d of %d (checkpoint %s)", done, len(self.fingerprint["ratios"]),
                 self.folder)
        return done

    def load(self, index: int) -> nn.Module:
        return self.inner.load(index)

    def done(self, index: int, layer: nn.Module, loop: LoopState) -> None:
        if self._lock is not None:
            self._save(index, layer, loop)
        self.inner.done(index, layer, loop)

    def finish(self, completed: bool) -> None:
        self.inner.finish(completed)
        if self._lock is not None and completed:
            remove_tree(self.folder)
        self.release()

    def sample(self) -> str:
        return self.inner.sample()

    # ----------------------------------------------------------------------------------------- the files

    def _acquire(self) -> bool:
        """Takes the folder's lock; False (with a warning) when another live process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            warnings.warn(f"the prune checkpoint {self.folder} is in use by another process; this prune runs "
                          "without a checkpoint", stacklevel=4)
            return False
        except OSError:
            pass  # a file system without flock: no protection against a concurrent writer
        self._lock = fd
        return True

    def _read_state(self) -> dict | None:
        """The saved state, None when there is none; raises when it belongs to a different prune."""
        for stale in self.folder.glob(".tmp-*"):  # a write the killed process did not finish
            stale.unlink(missing_ok=True)
        if not (self.folder / STATE).exists():
            return None
        state = read_json(self.folder / STATE)
        saved = state.get("fingerprint", {})
        if saved != self.fingerprint:
            keys = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            self.release()
            raise ValueError(
                f"the prune checkpoint in {self.folder} was made with different arguments ({', '.join(keys)} "
                "differ); remove that folder to start this prune over, or give another checkpoint_dir")
        return state

    def release(self) -> None:
        """Drops the folder's lock (the folder stays)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _restore_buffers(self, loop: LoopState, state: dict) -> None:
        with safe_open(self.folder / state["inputs"], framework="pt") as f:
            loop.inps.copy_(f.get_tensor("inps"))
            if loop.dense_inps is not None:
                loop.dense_inps.copy_(f.get_tensor("dense_inps"))
        loop.reports[:] = [_layer_report(r) for r in state["reports"]]
        loop.seconds_before = state["seconds"]

    def _save(self, index: int, layer: nn.Module, loop: LoopState) -> None:
        """Writes layer ``index`` and the inputs of layer ``index + 1``, then commits them in ``state.json``."""
        save_layer(layer, self.folder / _layer_file(index))
        buffers = {"inps": loop.inps}
        if loop.dense_inps is not None:
            buffers["dense_inps"] = loop.dense_inps
        inputs = f"inputs-{index + 1:05d}.safetensors"
        save_tensors_atomic(buffers, self.folder / inputs)
        state = {"format": FORMAT, "fingerprint": self.fingerprint, "layers_done": index + 1, "inputs": inputs,
                 "seconds": loop.elapsed(), "reports": [dataclasses.asdict(r) for r in loop.reports]}
        write_json_atomic(self.folder / STATE, state)
        for old in self.folder.glob("inputs-*.safetensors"):
            if old.name != inputs:
                old.unlink(missing_ok=True)


def _layer_file(index: int) -> str:
    return f"layer-{index:05d}.safetensors"


def _layer_report(values: dict) -> LayerReport:
    pairs = ("heads", "kv_heads", "ffn", "params")
    return LayerReport(**{k: tuple(v) if k in pairs else v for k, v in values.items()})


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
                        ) -> None:
    """``safetensors`` file ``path`` written under a temporary name, flushed, then renamed into place."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        move_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def layer_widths(layer: nn.Module) -> dict:
    """The per-layer architecture of a (pruned) decoder layer, as the config stores it."""
    attn = layer.self_attn
    return {"kv_map": list(attn.kv_map), "num_kv_heads": attn.num_kv_heads, "ffn": layer.mlp.intermediate_size}


def save_layer(layer: nn.Module, path: Path) -> None:
    """Writes a decoder layer's weights (its ``state_dict``) and widths to the safetensors file ``path``."""
    save_tensors_atomic(layer.state_dict(), path, metadata={"format": "pt", "widths": json.dumps(layer_widths(layer))})


def restore_layer(layer: nn.Module, path: Path) -> None:
    """Gives a decoder layer the widths and weights saved by :func:`save_layer` (on the layer's device)."""
    with safe_open(path, framework="pt") as f:
        widths = json.loads(f.metadata()["widths"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    set_layer_weights(layer, widths, tensors)


def set_layer_weights(layer: nn.Module, widths: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Reshapes ``layer`` to ``widths`` (:func:`layer_widths`) and takes ``tensors`` (its ``state_dict``, any device)
    as its weights: every ``nn.Linear`` is rebuilt at the shape of its saved weight."""
    device = next(layer.parameters()).device
    device = torch.device("cpu") if device.type == "meta" else device
    layer.self_attn.set_heads(widths["kv_map"], widths["num_kv_heads"])
    layer.mlp.intermediate_size = widths["ffn"]
    for name, module in list(layer.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            weight, bias = tensors[f"{name}.weight"], tensors.get(f"{name}.bias")
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            setattr(layer.get_submodule(parent) if parent else layer, attr, new)
    layer.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True, assign=True)


__all__ = ["SAMPLE", "Checkpointed", "fingerprint", "layer_widths", "restore_layer", "sample_hash", "save_layer",
           "set_layer_weights"]
