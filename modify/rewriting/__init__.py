"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .flat import FlatParam, flat
from .functional import functional_call
from .fuse import fuse
from .hypernetwork import HyperNetwork
from .lora import LoRA, lora, lora_parameters, merge_lora, strip_lora
from .mutable import mutable
from .walk import Selection, parameters, rewrite, select

__all__ = [
    "FlatParam", "HyperNetwork", "LoRA", "Selection", "flat", "functional_call", "fuse", "lora", "lora_parameters",
    "merge_lora", "mutable", "parameters", "rewrite", "select", "strip_lora",
]
