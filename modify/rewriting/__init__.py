"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .criteria import any_of
from .fuse import fuse
from .mutable import mutable
from .selection import Selection, parameters, rewrite, select

__all__ = [
    "Selection", "any_of", "fuse", "mutable", "parameters", "rewrite", "select",
]
