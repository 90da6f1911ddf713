"""Adapters: LoRA/DoRA blocks and their rewriters, PEFT's adapter files, mixed-adapter batches, summaries."""

from .blocks import LoRA
from .lora import lora, lora_parameters, merge_lora, strip_lora

__all__ = ["LoRA", "lora", "lora_parameters", "merge_lora", "strip_lora"]
