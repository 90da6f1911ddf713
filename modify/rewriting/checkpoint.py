"""Activation checkpointing as a rewriter: :func:`checkpoint_activations`.

Each matched module becomes a sibling of its own class plus the :class:`ActivationCheckpoint`
mixin (made once per class with :func:`~modify._core.sibling.derived_class`): the same children,
parameters, paths and ``state_dict`` keys, run through ``torch.utils.checkpoint.checkpoint(...,
use_reentrant=False)``. It computes exactly what the module computes, so the walk rebuilds it as
any other combinator (a ``lora`` over a checkpointed block keeps the checkpointing).
"""

from __future__ import annotations

from torch import nn
from torch.utils.checkpoint import checkpoint

from .._core.arguments import typechecked
from .._core.sibling import Derived, derived_class, sibling
from .criteria import Where, as_criteria
from .selection import matching

class ActivationCheckpoint(Derived):
    """Mixin: run the module's own ``forward`` under non-reentrant activation checkpointing.

    Only what autograd saves changes: the module's inner activations are dropped after the
    forward and recomputed (with the same random state, so dropout masks agree) in the backward
    pass, as ``torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False)`` (Chen et al. 2016,
    "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174). Outputs and gradients are
    those of the module; ``torch.compile`` traces it as its checkpoint operator.
    """

    def forward(self, x):
        return checkpoint(super().forward, x, use_reentrant=False)

    def extra_repr(self) -> str:
        return ", ".join(filter(None, (super().extra_repr(), "checkpointed=True")))


def checkpointed(module: nn.Module) -> nn.Module:
    """A sibling of ``module`` (its class plus :class:`ActivationCheckpoint`) sharing all its state."""
    if isinstance(module, ActivationCheckpoint):
        return module
    return sibling(module, cls=derived_class(ActivationCheckpoint, type(module)))


@typechecked
def checkpoint_activations(model: nn.Module, where: Where) -> nn.Module:
    """A sibling of ``model`` in which each matched module recomputes its activations in the backward pass.

    Activation checkpointing (Chen et al. 2016, arXiv:1604.06174; ``transformers``'
    ``gradient_checkpointing_enable()``): a matched module keeps only its input for the backward
    pass and runs its forward again there, trading one more forward per step for the memory of
    its inner activations. Each match (outermost first; nothing inside a match is matched again)
    becomes a sibling of its own class with the :class:`ActivationCheckpoint` mixin: a
    ``Sequential`` stays a ``Sequential`` of that class (a ``LoRA`` block stays a ``LoRA``), with
    the same children, parameter objects, paths, ``state_dict`` keys and training mode. Outputs and
    gradients equal ``model``'s. Composes with :func:`~modify.lora`, :func:`~modify.quantize`,
    ``torch.compile`` and FSDP2 in either order; applying it twice is a no-op.

    Args:
        model: the model; left unchanged.
        where: one criterion or a tuple of criteria (all must hold) as in :func:`modify.select`,
            e.g. the transformer blocks ``"transformer.h.*"`` of a GPT or ``"model.layers.*"`` of
            a Llama.

    Returns:
        The checkpointed sibling.

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``; a criterion of the wrong type.
        ValueError: ``where`` matches nothing.

    Example:
        >>> import torch, modify
        >>> net = modify.Sequential(modify.Residual(modify.Sequential(modify.Linear(8, 8), modify.GELU())), modify.Linear(8, 2))
        >>> light = modify.checkpoint_activations(net, where="0")
        >>> isinstance(light[0], modify.Residual), light[0].block is net[0].block, light[1] is net[1]
        (True, True, True)
        >>> x = torch.randn(4, 8)
        >>> torch.equal(light(x), net(x))
        True
    """
    return matching(model, as_criteria(where), "checkpoint_activations").apply(checkpointed)
