"""Tensors swapped into a model for one call and put back, even when the call raises.

The functional views write straight into modules' ``_parameters``/``_buffers`` dictionaries (or
``__dict__``), as ``torch.func.functional_call`` does, but each place once: a module placed at two
paths, or a parameter tied under two names, is one place, so putting back restores exactly the
objects that were there.
"""

from __future__ import annotations

import torch
from torch import nn

from .._core.identity import group_by_identity
from ..rewriting.walk import positions

Place = tuple[nn.Module, str]  # (the module holding a tensor, its attribute name)
Write = tuple[dict, str, torch.Tensor]


def named_places(model: nn.Module) -> tuple[dict[str, Place], dict[str, Place]]:
    """Every parameter and buffer name of ``model`` (tied and shared names included) and its place.

    Returns:
        ``({name: (module, attr)}, {name: (module, attr)})`` for parameters and buffers, in
        ``named_parameters(remove_duplicate=False)`` / ``named_buffers`` order.
    """
    parameters: dict[str, Place] = {}
    buffers: dict[str, Place] = {}
    for path, module, _ in positions(model):
        prefix = f"{path}." if path else ""
        for name, tensor in module._parameters.items():
            if tensor is not None:
                parameters[prefix + name] = (module, name)
        for name, tensor in module._buffers.items():
            if tensor is not None:
                buffers[prefix + name] = (module, name)
    return parameters, buffers


def scratch_buffers(places: dict[str, Place], given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of the buffers not ``given`` that a module in training mode may update in place.

    A substituted forward writes these in place of the model's own (BatchNorm running
    statistics), so the model's ``state_dict()`` is left unchanged; a buffer at several names
    gets one copy under all of them.

    Args:
        places: ``{name: (module, attr)}`` of the buffers (see :func:`named_places`).
        given: the buffers the caller substitutes (these receive the updates; not copied, nor
            is a buffer given under another of its names).
    """
    scratch = {}
    for names, tensor in group_by_identity((name, module._buffers[attr]) for name, (module, attr) in places.items()):
        if not any(name in given for name in names) and any(places[name][0].training for name in names):
            scratch.update(dict.fromkeys(names, tensor.clone()))
    return scratch


def swap(writes: list[Write]) -> list[Write]:
    """Make each write, in order; returns the writes that undo them, last first.

    A place written twice is undone to what was there before the first write.
    """
    undo = []
    for place, key, value in writes:
        undo.append((place, key, place[key]))
        place[key] = value
    return undo[::-1]


def call_with(module: nn.Module, writes: list[Write], x):
    """``module(x)`` with ``writes`` made for the call and undone afterwards, also when it raises."""
    undo = swap(writes)
    try:
        return module(x)
    finally:
        swap(undo)
