"""Functional views of a model: its forward with other tensors, without rewriting it.

:func:`functional_call` runs a model with substituted parameters, :func:`flat` reparametrises it
by one flat vector, :class:`HyperNetwork` predicts a model's parameters,
:func:`chunked_cross_entropy` is a language model's loss without its whole logits. They rewrite nothing
(``flat`` runs a parameter-free sibling it keeps); each call swaps tensors in and puts back what
was there (:mod:`modify.functional.swap`), and a substituted forward updates scratch copies of
the buffers it is not given (BatchNorm statistics), so ``state_dict()`` is left unchanged.
"""

from .call import functional_call
from .flat import FlatParam, flat
from .hypernetwork import HyperNetwork
from .loss import chunked_cross_entropy

__all__ = ["FlatParam", "HyperNetwork", "chunked_cross_entropy", "flat", "functional_call"]
