"""``modify.functional_call``: a forward with substituted parameters, checked strictly."""

from __future__ import annotations

import torch
from torch import nn

_MAX_LISTED = 6


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _groups(named: list[tuple[str, torch.Tensor]]) -> dict[str, list[str]]:
    """Name -> every name of the same tensor (tied weights), for the tied names only."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in named:
        by_tensor.setdefault(id(tensor), []).append(name)
    return {name: names for names in by_tensor.values() if len(names) > 1 for name in names}


def _expand(params: dict, named: list[tuple[str, torch.Tensor]], kind: str, require: bool) -> dict[str, torch.Tensor]:
    """Check ``params`` against one kind of the model's tensors; give every tied name its value."""
    reference = dict(named)
    tied = _groups(named)
    out: dict[str, torch.Tensor] = {}
    missing, misshaped = [], []
    for name, tensor in reference.items():
        group = tied.get(name, (name,))
        given = [params[n] for n in group if n in params]
        if not given:
            if require and name == group[0]:
                missing.append(name)
            continue
        if any(g is not given[0] for g in given[1:]):
            raise ValueError(f"functional_call: tied {kind}s {_listing(list(group))} were given different tensors")
        value = given[0]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"functional_call: params[{name!r}] must be a tensor, got {type(value).__name__}")
        if value.shape != tensor.shape and name in params:
            misshaped.append(f"{name!r}: expected {tuple(tensor.shape)}, got {tuple(value.shape)}")
        out[name] = value
    if missing:
        raise ValueError(f"functional_call: missing {kind}s {_listing(missing)} (pass every parameter)")
    if misshaped:
        hint = " (for per-sample parameters, call it under torch.func.vmap)" if kind == "parameter" else ""
        raise ValueError(f"functional_call: mis-shaped {kind}s {'; '.join(misshaped[:_MAX_LISTED])}{hint}")
    return out


def functional_call(model: nn.Module, params: dict[str, torch.Tensor], x):
    """``model(x)`` computed with the tensors in ``params`` in place of the model's own.

    Built on ``torch.func.functional_call``; ``model`` is left as it was, also when the forward
    raises. Unlike it, the call is strict: ``params`` must give every parameter (one name of a tied
    group is enough; the others take its value), only names the model has, with the model's
    shapes. Buffers may be given too (optional), e.g. BatchNorm statistics. Under
    ``torch.func.vmap`` the shapes checked are the per-sample ones, so per-sample parameters
    work::

        torch.func.vmap(lambda p, x: modify.functional_call(model, p, x))(batched_params, xs)

    Argument types are checked with plain ``isinstance`` (no typeguard) to keep the overhead per
    call small.

    Args:
        model: any module (a modify model, a plain ``torch.nn`` one).
        params: ``{name: tensor}`` with the names of ``model.named_parameters()`` (and optionally
            of ``model.named_buffers()``).
        x: the input value (a tensor or a tuple, passed as the single argument).

    Shape:
        Each ``params[name]`` has the shape of the model's tensor of that name.

    Returns:
        The output value.

    Raises:
        TypeError: ``model`` not a module, ``params`` not a dict, a value that is not a tensor.
        ValueError: missing parameters, unknown names, mis-shaped tensors (all listed), or
            different tensors for names of one tied parameter.

    Example:
        >>> import torch, modify
        >>> lin = modify.Linear(3, 2)
        >>> params = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
        >>> modify.functional_call(lin, params, torch.ones(1, 3)).tolist()
        [[3.0, 3.0]]
        >>> batched = {k: v.expand(5, *v.shape) for k, v in params.items()}
        >>> torch.func.vmap(lambda p, x: modify.functional_call(lin, p, x))(batched, torch.ones(5, 3)).shape
        torch.Size([5, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"functional_call: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"functional_call: params must be a dict of tensors, got {type(params).__name__}")
    named_parameters = list(model.named_parameters(remove_duplicate=False))
    named_buffers = list(model.named_buffers(remove_duplicate=False))
    parameter_names = {name for name, _ in named_parameters}
    if not parameter_names.issuperset(params):
        buffer_names = {name for name, _ in named_buffers}
        unexpected = [name for name in params if name not in parameter_names and name not in buffer_names]
        if unexpected:
            raise ValueError(f"functional_call: {type(model).__name__} has no parameter or buffer {_listing(unexpected)}")
    tensors = _expand(params, named_parameters, "parameter", require=True)
    if not parameter_names.issuperset(params):
        tensors.update(_expand(params, named_buffers, "buffer", require=False))
    return torch.func.functional_call(model, tensors, (x,), tie_weights=False)
