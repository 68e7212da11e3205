"""Recovery after pruning: LoRA fine-tuning (peft) on instruction data or plain text, merged into the model.

    from slimgpt.finetune import lora_finetune
    merged, metrics = lora_finetune(model, tokenizer, train, eval, out_dir="runs/x/lora", max_steps=30)
"""

from .data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, alpaca_prompt, build_examples
from .lora import LORA_TARGETS, NonFiniteLossError, lora_finetune

__all__ = [
    "LORA_TARGETS",
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "NonFiniteLossError",
    "alpaca_prompt",
    "build_examples",
    "lora_finetune",
]
