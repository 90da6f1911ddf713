"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .criteria import any_of
from .diff import Diff, diff
from .fuse import fuse
from .mutable import mutable
from .selection import Selection, parameters, rewrite, select

__all__ = [
    "Diff", "Selection", "any_of", "diff", "fuse", "mutable", "parameters", "rewrite", "select",
]
