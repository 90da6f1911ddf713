"""``modify.functional_call``: a forward with substituted parameters, checked strictly."""

from __future__ import annotations

import torch
from torch import nn

from .._core.identity import group_by_identity
from .swap import Write, call_with, named_places, scratch_buffers

_MAX_LISTED = 6


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _tied(reference: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Name -> every name of the same tensor, for tied names only."""
    groups = group_by_identity(reference.items())
    return {name: names for names, _ in groups if len(names) > 1 for name in names}


def _misshaped(params: dict, reference: dict[str, torch.Tensor], kind: str) -> list[str]:
    """The problem with the given tensors of this kind whose shape differs from the model's."""
    misshaped = []
    for name, tensor in reference.items():
        if name not in params:
            continue
        value = params[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"functional_call: params[{name!r}] must be a tensor, got {type(value).__name__}")
        if value.shape != tensor.shape:
            misshaped.append(f"{name!r}: expected {tuple(tensor.shape)}, got {tuple(value.shape)}")
    if not misshaped:
        return []
    hint = " (for per-sample parameters, call it under torch.func.vmap)" if kind == "parameter" else ""
    return [f"mis-shaped {kind}s {'; '.join(misshaped[:_MAX_LISTED])}{hint}"]


def _missing(params: dict, parameters: dict[str, torch.Tensor]) -> list[str]:
    """The problem with parameters not given (a tied group counts as given if one name is)."""
    absent = parameters.keys() - params.keys()
    if not absent:
        return []
    tied = _tied(parameters)
    missing = [n for n in absent if not any(t in params for t in tied.get(n, ()))]
    if not missing:
        return []
    order = list(parameters)
    first_names = sorted({min(tied.get(n, [n]), key=order.index) for n in missing}, key=order.index)
    return [f"missing parameters {_listing(first_names)} (pass every parameter, or strict=False)"]


def _problems(model: nn.Module, params: dict, parameters: dict, buffers: dict, strict: bool) -> None:
    """Raise one ``ValueError`` listing every mis-shaped, unknown and (if ``strict``) missing name."""
    unexpected = [name for name in params if name not in parameters and name not in buffers]
    problems = _misshaped(params, parameters, "parameter") + _misshaped(params, buffers, "buffer")
    if unexpected:
        problems.append(f"{type(model).__name__} has no parameter or buffer {_listing(unexpected)}")
    if strict:
        problems += _missing(params, parameters)
    if problems:
        raise ValueError("functional_call: " + "; and ".join(problems))


def _untie(params: dict, reference: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Give every name of a tied tensor the value given for one of them."""
    tied = _tied(reference)
    out = {name: value for name, value in params.items() if name in reference}
    for name in reference.keys() - params.keys():
        given = [params[n] for n in tied.get(name, ()) if n in params]
        if given:
            out[name] = given[0]
    for name in out.keys() & tied.keys():
        if any(out[n] is not out[name] for n in tied[name]):
            raise ValueError(f"functional_call: tied {kind}s {_listing(tied[name])} were given different tensors")
    return out


def _writes(tensors: dict[str, torch.Tensor], places: dict, kind: str) -> list[Write]:
    return [(getattr(places[name][0], kind), places[name][1], value) for name, value in tensors.items()]


def functional_call(model: nn.Module, params: dict[str, torch.Tensor], x, *, strict: bool = True):
    """``model(x)`` computed with the tensors in ``params`` in place of the model's own.

    As ``torch.func.functional_call``, with the model left exactly as it was: its parameters,
    buffers and their identities are the same objects with the same values after the call, whether
    it returns or raises, with tied parameters and modules placed at several paths included.
    Buffers not given are not updated either: in training mode a BatchNorm updates copies of its
    running statistics (give ``params`` the buffers to receive the updates). The call is strict:
    ``params`` must give every parameter (one name of a tied group is enough; the others take its
    value) unless ``strict=False``, only names the model has, with the model's shapes. Buffers may
    be given too (optional), e.g. BatchNorm statistics. Under ``torch.func.vmap`` the shapes
    checked are the per-sample ones, so per-sample parameters work::

        torch.func.vmap(lambda p, x: modify.functional_call(model, p, x))(batched_params, xs)

    Argument types are checked with plain ``isinstance`` (no typeguard) to keep the overhead per
    call small. Like any call that swaps a module's tensors, not for concurrent threads on one model.

    Args:
        model: any module (a modify model, a plain ``torch.nn`` one).
        params: ``{name: tensor}`` with the names of ``model.named_parameters()`` (and optionally
            of ``model.named_buffers()``).
        x: the input value (a tensor or a tuple, passed as the single argument).
        strict: ``False`` lets ``params`` leave parameters out: the model's own tensors fill them
            (e.g. a hypernetwork predicting only LoRA adapters over a shared base).

    Shape:
        Each ``params[name]`` has the shape of the model's tensor of that name.

    Returns:
        The output value.

    Raises:
        TypeError: ``model`` not a module, ``params`` not a dict, a value that is not a tensor.
        ValueError: missing parameters (when ``strict``), unknown names, mis-shaped tensors (all
            listed in one error), or different tensors for names of one tied parameter.

    Example:
        >>> import torch, modify
        >>> lin = modify.Linear(3, 2)
        >>> params = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
        >>> modify.functional_call(lin, params, torch.ones(1, 3)).tolist()
        [[3.0, 3.0]]
        >>> batched = {k: v.expand(5, *v.shape) for k, v in params.items()}
        >>> torch.func.vmap(lambda p, x: modify.functional_call(lin, p, x))(batched, torch.ones(5, 3)).shape
        torch.Size([5, 2])
        >>> modify.functional_call(lin, {"bias": torch.ones(2)}, torch.zeros(1, 3), strict=False).tolist()
        [[1.0, 1.0]]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"functional_call: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"functional_call: strict must be a bool, got {type(strict).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"functional_call: params must be a dict of tensors, got {type(params).__name__}")
    parameter_places, buffer_places = named_places(model)
    parameters = {name: module._parameters[attr] for name, (module, attr) in parameter_places.items()}
    buffers = {name: module._buffers[attr] for name, (module, attr) in buffer_places.items()}
    _problems(model, params, parameters, buffers, strict)
    given_buffers = _untie(params, buffers, "buffer")
    given_buffers.update(scratch_buffers(buffer_places, given_buffers))
    writes = _writes(_untie(params, parameters, "parameter"), parameter_places, "_parameters")
    writes += _writes(given_buffers, buffer_places, "_buffers")
    return call_with(model, writes, x)
