"""Adapters: LoRA/DoRA blocks and their rewriters, PEFT's adapter files, mixed-adapter batches, summaries."""

from .blocks import LoRA
from .files import load_adapters, save_adapters
from .lora import lora, lora_parameters, merge_lora, strip_lora

__all__ = ["LoRA", "load_adapters", "lora", "lora_parameters", "merge_lora", "save_adapters", "strip_lora"]
