"""Functional views of a model: its forward with other tensors, without rewriting it.

:func:`functional_call` runs a model with substituted parameters, :func:`flat` reparametrises it
by one flat vector, :class:`HyperNetwork` predicts a model's parameters. They build no sibling
model; each call swaps tensors in and puts the model's own back (:mod:`modify.functional.swap`).
"""

from .call import functional_call
from .flat import FlatParam, flat
from .hypernetwork import HyperNetwork

__all__ = ["FlatParam", "HyperNetwork", "flat", "functional_call"]
