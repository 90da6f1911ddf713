"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .checkpoint import checkpoint_activations
from .fuse import fuse
from .mutable import mutable
from .quantize import quantize
from .selection import Selection, parameters, rewrite, select

__all__ = [
    "Selection", "checkpoint_activations", "fuse", "mutable", "parameters", "quantize", "rewrite", "select",
]
