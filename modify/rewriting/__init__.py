"""Queries and non-destructive rewriters, all on one tree walk (:mod:`modify.rewriting.walk`)."""

from .flat import FlatParam, flat
from .functional import functional_call
from .fuse import fuse
from .hypernetwork import HyperNetwork
from .mutable import mutable
from .walk import Selection, parameters, rewrite, select

__all__ = [
    "FlatParam", "HyperNetwork", "Selection", "flat", "functional_call", "fuse", "mutable", "parameters", "rewrite",
    "select",
]
