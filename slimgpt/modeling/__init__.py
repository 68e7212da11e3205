"""The SlimGPT architecture (per-layer widths in the config) and its registration with the Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_slimgpt import SlimGPTConfig
from .convert import SUPPORTED_MODEL_TYPES, as_slim
from .modeling_slimgpt import SlimGPTForCausalLM, SlimGPTModel

AutoConfig.register(SlimGPTConfig.model_type, SlimGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(SlimGPTConfig, SlimGPTForCausalLM, exist_ok=True)
# ``save_pretrained`` copies the two source files next to the weights and writes ``auto_map``.
SlimGPTConfig.register_for_auto_class()
SlimGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SUPPORTED_MODEL_TYPES", "SlimGPTConfig", "SlimGPTForCausalLM", "SlimGPTModel", "as_slim"]
