"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .fuse import fuse
from .lora import LoRA, lora, lora_parameters, merge_lora, strip_lora
from .mutable import mutable
from .select import Selection, parameters, rewrite, select

__all__ = [
    "LoRA", "Selection", "fuse", "lora", "lora_parameters", "merge_lora", "mutable", "parameters", "rewrite", "select",
    "strip_lora",
]
