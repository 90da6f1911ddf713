"""Activation checkpointing as a rewriter: :func:`checkpoint_activations`.

Every wrapper is a ``Sequential`` whose own ``forward`` runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``. A matched ``Sequential`` (a
transformer block) becomes a sibling of its own class plus the :class:`ActivationCheckpoint` mixin
(made once per class with :func:`~modify._core.sibling.derived_class`): the same children,
parameters, paths and ``state_dict`` keys. Any other match (a leaf, a ``Parallel``, a plain
``torch.nn`` module) becomes :class:`Checkpointed`, sugar for a ``Sequential`` holding it as its
only child ``"0"``. Both compute exactly what the module computes, so the walk rebuilds them as any
other combinator (a ``lora`` over a checkpointed block keeps the checkpointing).
"""

from __future__ import annotations

from torch import nn
from torch.utils.checkpoint import checkpoint

from .._core.arguments import typechecked
from .._core.memory import in_cpu_memory, release_freed_memory
from .._core.sibling import Derived, derived_class, sibling
from ..combinators import Sequential
from .criteria import Where, as_criteria
from .selection import matching

class ActivationCheckpoint(Derived):
    """Mixin: run the module's own ``forward`` under non-reentrant activation checkpointing.

    Only what autograd saves changes: the module's inner activations are dropped after the
    forward and recomputed (with the same random state, so dropout masks agree) in the backward
    pass, as ``torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False)`` (Chen et al. 2016,
    "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174). Outputs and gradients are
    those of the module; ``torch.compile`` traces it as its checkpoint operator. Before and after
    each run (forward and recomputation) on CPU tensors the heap's freed pages go back to the system
    (:func:`~modify._core.memory.release_freed_memory`): glibc would otherwise keep the memory of
    the freed activations, and the resident size, not the live tensors, would set the peak.
    """

    def forward(self, x):
        return checkpoint(self._released_forward, x, use_reentrant=False)

    def _released_forward(self, x):
        """The module's forward between two hand-backs of the heap's freed pages."""
        cpu = in_cpu_memory(x)
        if cpu:
            release_freed_memory()
        out = super().forward(x)
        if cpu:
            release_freed_memory()
        return out

    def extra_repr(self) -> str:
        return ", ".join(filter(None, (super().extra_repr(), "checkpointed=True")))


class Checkpointed(ActivationCheckpoint, Sequential):
    """``Sequential(module)`` run under activation checkpointing: the wrapper of a match that is not a ``Sequential``.

    Sugar, like :class:`~modify.Residual`: a ``Sequential`` whose only child ``"0"`` is ``module``
    (its parameters' paths gain ``".0"``), whose forward is the ``Sequential``'s own (its checks,
    and an error naming the child's path) inside ``torch.utils.checkpoint.checkpoint(...,
    use_reentrant=False)``. Made by :func:`checkpoint_activations`; see :class:`ActivationCheckpoint`.

    Args:
        module: the module to checkpoint (a leaf, a ``Parallel``, a plain ``torch.nn`` module).

    Shape:
        That of ``module``.

    Example:
        >>> import torch, modify
        >>> from modify.rewriting.checkpoint import Checkpointed
        >>> layer = modify.Linear(4, 2)
        >>> light = Checkpointed(layer)
        >>> isinstance(light, modify.Sequential), light[0] is layer
        (True, True)
        >>> x = torch.randn(3, 4)
        >>> torch.equal(light(x), layer(x))
        True
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.train(module.training)


def checkpointed(module: nn.Module) -> nn.Module:
    """``module`` under checkpointing: a ``Sequential`` as a sibling of its class plus :class:`ActivationCheckpoint`,
    anything else wrapped as :class:`Checkpointed`; sharing all its state."""
    if isinstance(module, ActivationCheckpoint):
        return module
    if isinstance(module, Sequential):
        return sibling(module, cls=derived_class(ActivationCheckpoint, type(module)))
    return Checkpointed(module)


@typechecked
def checkpoint_activations(model: nn.Module, where: Where) -> nn.Module:
    """A sibling of ``model`` in which each matched module recomputes its activations in the backward pass.

    Activation checkpointing (Chen et al. 2016, arXiv:1604.06174; ``transformers``'
    ``gradient_checkpointing_enable()``): a matched module keeps only its input for the backward
    pass and runs its forward again there, trading one more forward per step for the memory of
    its inner activations. Every wrapper is a ``Sequential`` subclass (sugar, like ``Residual``)
    whose forward is the ``Sequential``'s own under the checkpoint. Each match (outermost first;
    nothing inside a match is matched again) that is a ``Sequential`` becomes a sibling of its own
    class with the :class:`ActivationCheckpoint` mixin (a ``LoRA`` block stays a ``LoRA``), with
    the same children, parameter objects, paths, ``state_dict`` keys and training mode; any other
    match (a leaf) becomes :class:`Checkpointed`, a ``Sequential`` holding it as child ``"0"``
    (its paths gain ``".0"``), in its training mode. Outputs and
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
