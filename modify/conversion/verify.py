"""What keeps a converted model honest: the example run through both, and the sizes export fixed.

:func:`verify` runs the example ``args`` through the original and the converted tree (eval mode,
no gradient, the training flags restored after) and refuses a tree whose outputs differ, so a
capture that misread the code is a ``TypeError``, never a wrong model. :class:`FixedSizes` is the
check a converted model runs first when ``torch.export`` had to fix an input axis to the
example's size: another size is a ``ValueError`` naming the axis.
"""

from __future__ import annotations

import torch
from torch import nn

from .units import pick


class FixedSizes:
    """``fn`` of a :class:`~modify.Function`: the input unchanged once the fixed axes are checked.

    Args:
        fixed: ``{(input index, axis): size}``.
        arity: the number of inputs (``1``: a tensor, else a tuple).
        owner: the original model's class name, for the message.
    """

    def __init__(self, fixed: dict[tuple[int, int], int], arity: int, owner: str):
        self.fixed, self.arity, self.owner = fixed, arity, owner

    def __call__(self, x):
        inputs = (x,) if self.arity == 1 else x
        for (i, axis), size in self.fixed.items():
            if inputs[i].shape[axis] != size:
                raise ValueError(
                    f"modify.convert: the {self.owner} was captured with axis {axis} of input {i} fixed at {size} "
                    f"(torch.export specialised it); got size {inputs[i].shape[axis]} (shape {tuple(inputs[i].shape)})"
                )
        return x


def _training(*models: nn.Module) -> list[nn.Module]:
    return [m for model in models for m in model.modules() if m.training]


def verify(original: nn.Module, converted: nn.Module, args: tuple, kwargs: dict, output) -> None:
    """Raise the documented ``TypeError`` unless ``converted(args)`` equals the original's output.

    Both run in eval mode under ``no_grad`` (every module's training flag is restored after).
    """
    training = _training(original, converted)  # only these flags change (a model in eval mode: none)
    try:
        for module in training:
            module.training = False
        with torch.no_grad():
            expected = original(*args, **kwargs)
            if isinstance(expected, dict):
                expected = pick(expected, output, type(original).__name__)
            got = converted(args[0] if len(args) == 1 else tuple(args))
    finally:
        for module in training:
            module.training = True
    problem = _difference(expected, got)
    if problem:
        raise TypeError(
            f"modify.convert cannot convert the root module ({type(original).__name__}) exactly: on the example "
            f"input the converted tree {problem}. Pass the classes of the parts it cannot read in leaf_modules= "
            f"to keep them whole as opaque leaves."
        )


def _difference(expected: object, got: object) -> str:
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return f"returns {type(got).__name__} {tuple(getattr(got, 'shape', ()))}, not a tensor {tuple(expected.shape)}"
        if not expected.is_floating_point():
            return "" if torch.equal(got, expected) else "returns other values"
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
        close = torch.allclose(got, expected, atol=1e-4 * scale, rtol=1e-4, equal_nan=True)
        return "" if close else f"differs by {(got - expected).abs().max().item():.3g}"
    if isinstance(expected, (tuple, list)) and isinstance(got, tuple) and len(got) == len(expected):
        return next((p for p in (_difference(e, g) for e, g in zip(expected, got)) if p), "")
    return f"returns {type(got).__name__}, not {type(expected).__name__}"
