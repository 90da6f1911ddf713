"""Adapters: LoRA/DoRA blocks and their rewriters, PEFT's adapter files, mixed-adapter batches, summaries."""

from .blocks import LoRA
from .files import load_adapters, save_adapters
from .lora import lora, lora_parameters, merge_lora, strip_lora
from .mixed import MixedLoRA
from .summary import Summary, summary

__all__ = [
    "LoRA", "MixedLoRA", "load_adapters", "lora", "lora_parameters", "merge_lora", "save_adapters", "strip_lora",
    "Summary", "summary",
]
