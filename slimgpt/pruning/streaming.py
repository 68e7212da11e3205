"""Streaming (out-of-core) pruning: the model is never whole in memory (docs/method.md#streaming-and-resume).

:func:`prune_checkpoint` prunes a safetensors checkpoint folder into another one. It builds the model on the
``meta`` device (shapes only), loads the embeddings and the final norm, and runs the one layer loop
(``slimgpt.pruning.engine.prune_model``) through :class:`StreamingLayers`: each decoder layer is read from the
source shards when the loop needs it (:class:`ShardReader`, memory-mapped, one layer's tensors at a time),
pruned like in memory, written to its own destination shard (:class:`ShardWriter`) and freed. Host memory
therefore peaks at about the embeddings + one layer + the calibration buffers + the Hessians, whatever the
depth. The pruned weights are bit-identical to ``slimgpt.prune`` on the loaded model with the same inputs
(the same loop, the same layer function, the same dtype casts). The output is a normal SlimGPT checkpoint:
``config.json`` with the per-layer widths, ``model-0000k-of-0000n.safetensors`` (one shard per layer, then
one for the embeddings, norm and head) and ``model.safetensors.index.json``; ``slimgpt.load_model`` loads it.
"""

import logging
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..io import atomic_dir, read_json, write_json_atomic
from ..modeling import SlimGPTForCausalLM
from .checkpoint import SAMPLE, save_tensors_atomic, sample_hash
from .engine import LayerStore, LoopState, prune_model, typed_arguments
from .methods import Method
from .report import PruneReport
from .schedules import Schedule

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: biases a method may add to every layer (``Method.adds_bias``) that a dense source checkpoint lacks
_ADDED_BIASES = ("self_attn.o_proj.bias", "mlp.down_proj.bias")


class ShardReader:
    """Reads tensors of a safetensors checkpoint folder on demand: ``model.safetensors``, or the shards that
    ``model.safetensors.index.json`` lists. Each call opens (memory-maps) the files it needs and closes them
    again, so only the tensors asked for are ever resident."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            weight_map = read_json(self.folder / INDEX)["weight_map"]
            self.files = {name: self.folder / file for name, file in weight_map.items()}
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, framework="pt") as f:
                self.files = {name: self.folder / SINGLE for name in f.keys()}
        else:
            raise FileNotFoundError(f"{self.folder} holds no safetensors weights ({SINGLE} or {INDEX}); streaming "
                                    "needs a checkpoint folder saved with safe_serialization")

    def names(self) -> list[str]:
        return sorted(self.files)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor whose name starts with ``prefix``, by the rest of its name (copies, files closed)."""
        by_file: dict[Path, list[str]] = {}
        for name, file in self.files.items():
            if name.startswith(prefix):
                by_file.setdefault(file, []).append(name)
        out = {}
        for file, names in by_file.items():
            with safe_open(file, framework="pt") as f:
                out.update({name[len(prefix):]: f.get_tensor(name) for name in names})
        return out

    def head(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The first ``SAMPLE`` values of tensor ``name`` (flattened, cast to ``dtype``), reading only those rows."""
        with safe_open(self.files[name], framework="pt") as f:
            part = f.get_slice(name)
            shape = part.get_shape()
            if not shape:
                return f.get_tensor(name).to(dtype).reshape(-1)
            row = math.prod(shape[1:])
            return part[: -(-SAMPLE // max(row, 1))].to(dtype).reshape(-1)[:SAMPLE]


class ShardWriter:
    """Writes a checkpoint one shard at a time (``model-0000k-of-0000n.safetensors``) and then its index."""

    def __init__(self, folder: Path, num_shards: int):
        self.folder, self.num_shards = Path(folder), num_shards
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def write(self, shard: int, tensors: dict[str, torch.Tensor]) -> None:
        """Writes shard ``shard`` (0-based) holding ``tensors`` (full names)."""
        file = f"model-{shard + 1:05d}-of-{self.num_shards:05d}.safetensors"
        save_tensors_atomic(tensors, self.folder / file, metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, file))
        self.total_size += sum(t.numel() * t.element_size() for t in tensors.values())

    def finish(self) -> None:
        """Writes ``model.safetensors.index.json`` over the shards written."""
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        write_json_atomic(self.folder / INDEX, index)


class StreamingLayers(LayerStore):
    """The layer store of a streamed prune: layer ``i`` is read from ``reader`` when the loop needs it (in ``dtype``,
    on the CPU), written to shard ``i`` of ``writer`` once pruned and then dropped back to the meta device (its
    pruned shapes stay: they give the config's per-layer widths). Layer 0 is read at once, since capturing the
    calibration inputs passes through it. ``finish`` writes the last shard: embeddings, final norm and the head
    (read from the source when it is not tied to the embeddings)."""

    def __init__(self, model: SlimGPTForCausalLM, reader: ShardReader, writer: ShardWriter, dtype: torch.dtype):
        super().__init__(model)
        self.reader, self.writer, self.dtype = reader, writer, dtype
        self.load(0)

    def load(self, index: int) -> nn.Module:
        layer = self.model.model.layers[index]
        if next(layer.parameters()).device.type != "meta":
            return layer
        tensors = {k: v.to(self.dtype) for k, v in self.reader.tensors(f"model.layers.{index}.").items()}
        for name, param in layer.named_parameters():
            if name not in tensors and name in _ADDED_BIASES:  # given by the method: zeros, like in memory
                tensors[name] = torch.zeros(param.shape, dtype=self.dtype)
        layer.load_state_dict(tensors, strict=True, assign=True)
        return layer

    def done(self, index: int, layer: nn.Module, loop: LoopState) -> None:
        self.writer.write(index, {f"model.layers.{index}.{k}": v for k, v in layer.state_dict().items()})
        layer.to_empty(device="meta")

    def finish(self, completed: bool) -> None:
        if not completed:
            return
        rest = {f"model.{k}": v for k, v in self.model.model.state_dict().items() if not k.startswith("layers.")}
        if not self.model.config.tie_word_embeddings:
            rest["lm_head.weight"] = self.reader.tensors("lm_head.")["weight"].to(self.dtype)
        self.writer.write(self.writer.num_shards - 1, rest)
        self.writer.finish()

    def sample(self) -> str:
        """The same hash as the model loaded in memory gives: values of meta tensors read from the source."""
        return sample_hash((name, p, self._head(name, p)) for name, p in self.model.named_parameters())

    def _head(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        if param.device.type != "meta":
            return param.reshape(-1)[:SAMPLE]
        return self.reader.head(name, self.dtype) if name in self.reader.files else None


def skeleton(folder: Path, reader: ShardReader, dtype: torch.dtype) -> SlimGPTForCausalLM:
    """The SlimGPT model of checkpoint ``folder`` with every decoder layer on the meta device (shapes only) and
    the embeddings, final norm and rotary embedding in memory (``dtype``, CPU), as ``load_model`` builds them."""
    from transformers import AutoConfig, GenerationConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from ..modeling.convert import slim_config

    config = slim_config(AutoConfig.from_pretrained(folder))
    with torch.device("meta"):
        model = SlimGPTForCausalLM(config)
    base = {f"model.{k}": v.to(dtype) for k, v in reader.tensors("model.").items() if not k.startswith("layers.")}
    model.load_state_dict(base, strict=False, assign=True)
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    model.tie_weights()
    missing = [name for name, p in model.model.named_parameters() if p.is_meta and not name.startswith("layers.")]
    if missing:
        raise KeyError(f"{folder} lacks the tensors model.{', model.'.join(missing)} (not a LLaMA-family checkpoint "
                       "with the usual tensor names?)")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


def check_streamable(method: Method) -> None:
    """Streaming has one layer in memory at a time: a method that needs the whole model before the loop
    (``prepare``/``plan``: LLM-Pruner's gradients, FLAP's global search) cannot stream."""
    if type(method).prepare is not Method.prepare or method.plans_widths:
        raise ValueError(f"method '{method.name}' needs the whole model before the layer loop (whole-model "
                         "statistics or a global plan), so it cannot stream; prune it in memory "
                         "(slimgpt.prune, model.streaming=false)")


def source_folder(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint folder of a local path or an offline asset name (``smollm2-135m``)."""
    from ..sources import TINY_PREFIX, _resolve

    name = str(name_or_path)
    if name.startswith(TINY_PREFIX):
        raise ValueError(f"'{name}' is built in memory and has no checkpoint to stream; save it with "
                         "save_pretrained and stream that folder")
    folder = Path(_resolve(name))
    if folder.is_dir():
        return folder
    try:  # a hub id: its files only (config, safetensors shards, tokenizer), not a loaded model
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as error:  # noqa: BLE001 - any failure means: no checkpoint to stream
        raise FileNotFoundError(f"streaming needs a local checkpoint folder, an asset name or a reachable hub id; "
                                f"'{name}' is none of these ({type(error).__name__})") from None


def prune_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: torch.Tensor,
    ratio: float,
    schedule: str | Schedule = "log_increase",
    method: str | Method = "slimgpt",
    ratio_of: str = "total",
    first_ratio: float | None = None,
    dtype: torch.dtype = torch.float32,
    checkpoint_dir: str | os.PathLike | None = None,
    **options,
) -> PruneReport:
    """Prunes the checkpoint ``src`` into ``dst`` one decoder layer at a time (see the module docstring).

    Args:
        src: a checkpoint folder (sharded or single-file safetensors) or an offline asset name.
        dst: the output folder: created (atomically: it appears only once complete), or an existing empty folder
            (e.g. a cache's temporary folder) written into.
        calibration: ``LongTensor[num_samples, seq_len]`` token ids.
        dtype: the dtype the model is loaded in (``load_model``'s); the statistics are fp32 whatever it is.
        checkpoint_dir: per-layer checkpoint to resume from (``slimgpt.pruning.checkpoint``).
        ratio, schedule, method, ratio_of, first_ratio, options: as for :func:`slimgpt.prune` (``options``:
            engine options and the method's).
    Returns:
        the :class:`PruneReport` (as ``slimgpt.prune`` gives; ``peak_memory_bytes`` is this prune's peak RSS).
    """
    schedule, method, engine = typed_arguments(schedule, method, first_ratio, options)
    check_streamable(method)
    folder, dst = source_folder(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"the destination {dst} exists and is not an empty folder")
    reader = ShardReader(folder)
    model = skeleton(folder, reader, dtype)
    if dst.is_dir():
        return _prune_into(model, reader, folder, dst, calibration, ratio, schedule, method, engine, ratio_of,
                           checkpoint_dir)
    with atomic_dir(dst) as tmp:
        return _prune_into(model, reader, folder, tmp, calibration, ratio, schedule, method, engine, ratio_of,
                           checkpoint_dir)


def _prune_into(model, reader, src: Path, dst: Path, calibration, ratio, schedule, method, engine, ratio_of,
                checkpoint_dir) -> PruneReport:
    """The streamed prune of ``model`` (a :func:`skeleton`) into the folder ``dst``: shards, index, config,
    generation config, modeling code and the source's tokenizer files."""
    from transformers.dynamic_module_utils import custom_object_save

    dtype = model.model.embed_tokens.weight.dtype
    writer = ShardWriter(dst, model.config.num_hidden_layers + 1)
    store = StreamingLayers(model, reader, writer, dtype)
    report = prune_model(model, calibration, ratio, schedule, method, engine, ratio_of, checkpoint_dir, store)
    model.config.dtype = dtype
    custom_object_save(model, dst, config=model.config)  # the modeling code, and auto_map in the config
    model.config.save_pretrained(dst)
    model.generation_config.save_pretrained(dst)
    for file in src.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens_map", "chat_template", "vocab", "merges")):
            shutil.copy2(file, dst / file.name)
    return report


__all__ = ["ShardReader", "ShardWriter", "StreamingLayers", "check_streamable", "prune_checkpoint", "skeleton"]
