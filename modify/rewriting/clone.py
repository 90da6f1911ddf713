"""Shallow copies of single modules, for rewriters that replace a leaf by a changed sibling."""

from __future__ import annotations

import torch
from torch import nn

_DICTS = ("_parameters", "_buffers", "_modules")


def shallow_copy(module: nn.Module, cls: type | None = None, **parameters: nn.Parameter | None) -> nn.Module:
    """A new module object of ``module``'s class (or ``cls``) sharing its attributes, tensors and children.

    The copy has its own ``_parameters``/``_buffers``/``_modules`` dicts (so assigning on it never
    touches ``module``) and no hooks; ``parameters`` replace entries of its ``_parameters``.

    Raises:
        KeyError: a name in ``parameters`` that ``module`` has no parameter slot for.
    """
    copy = object.__new__(cls or type(module))
    copy.__dict__.update(module.__dict__)
    for attr in _DICTS:
        copy.__dict__[attr] = dict(module.__dict__[attr])
    copy.__dict__["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    for attr, value in module.__dict__.items():
        if attr.endswith("hooks") and isinstance(value, dict):
            copy.__dict__[attr] = type(value)()
    for name, value in parameters.items():
        if name not in copy._parameters:
            raise KeyError(f"{type(module).__name__} has no parameter '{name}'")
        copy._parameters[name] = value
    return copy


def unique_parameters(module: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """Each distinct parameter of ``module`` with all the names it goes by (tied weights), in order."""
    groups: dict[int, tuple[list[str], nn.Parameter]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), ([], parameter))[0].append(name)
    return list(groups.values())


def describe_dtypes(groups: list[tuple[list[str], torch.Tensor]]) -> str:
    """``"torch.float32: 0.weight, 0.bias; torch.float64: 1.weight"`` for an error message."""
    by_dtype: dict[torch.dtype, list[str]] = {}
    for names, tensor in groups:
        by_dtype.setdefault(tensor.dtype, []).append(names[0])
    parts = [f"{dtype}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}" for dtype, names in by_dtype.items()]
    return "; ".join(parts)
