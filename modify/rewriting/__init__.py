"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .criteria import any_of
from .checkpoint import checkpoint_activations
from .diff import Diff, diff
from .fuse import fuse
from .mutable import mutable
from .quantize import quantize
from .selection import Selection, parameters, rewrite, select

__all__ = [
    "Diff", "Selection", "any_of", "checkpoint_activations", "diff", "fuse", "mutable", "parameters", "quantize", "rewrite",
    "select",
]
