"""``modify.flat``: a model as one flat parameter vector, for MAML and other functional training.

Follows PyTorch-Reparam-Module (T. Wang): ``flat_param`` is the only parameter, ``param_numel``
its size, ``f(x, flat_param=theta)`` runs the model on any vector (differentiably, so MAML's
second-order gradients flow), ``buffers=`` substitutes buffers. Unlike it, the wrapped model is
not stripped of its parameters: it keeps its ``Parameter`` objects and values, whose storage
becomes views of ``flat_param``; the forward runs a parameter-free sibling, into which each call
writes the views of its vector as plain attributes and puts the previous ones back afterwards
(also when it raises, and nested calls unwind in order); tied weights are stored once; mixed
dtypes raise a clear error instead of an ``assert``; BatchNorm statistics, ``torch.func.vmap``
over a batch of flat vectors and ``torch.compile(fullgraph=True)`` work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._core.arguments import typechecked
from .._core.identity import group_by_identity, once_per_object
from .._core.sibling import sibling
from ..combinators import Combinator
from ..rewriting.walk import rebuild
from .swap import Place, Write, call_with, named_places, scratch_buffers


def _split_name(name: str) -> tuple[tuple[str, ...], str]:
    """``"0.lin.weight"`` -> ``(("0", "lin"), "weight")``: the submodule path and the attribute."""
    *path, attr = name.split(".")
    return tuple(path), attr


def _owner(root: nn.Module, path: tuple[str, ...]) -> nn.Module:
    """The submodule of ``root`` at ``path`` (plain dict look-ups: this runs on every call)."""
    for name in path:
        root = root._modules[name]
    return root


def _stateless_maker() -> Callable[[nn.Module], nn.Module]:
    """``module ->`` a sibling of it (children included) with no registered parameters, one per module."""

    def stateless(module: nn.Module) -> nn.Module:
        return sibling(
            module,
            parameters={n: p for n, p in module._parameters.items() if p is None},
            children={n: None if c is None else once(c) for n, c in module._modules.items()},
        )

    once = once_per_object(stateless)
    return once


def _without_own_parameters(combinator: nn.Module) -> nn.Module:
    """A combinator subclass holding parameters of its own gets a sibling without them."""
    if all(p is None for p in combinator._parameters.values()):
        return combinator
    return sibling(combinator, parameters={n: p for n, p in combinator._parameters.items() if p is None})


def _describe_dtypes(groups: list[tuple[list[str], torch.Tensor]]) -> str:
    """``"torch.float32: 0.weight, 0.bias; torch.float64: 1.weight"`` for an error message."""
    by_dtype: dict[torch.dtype, list[str]] = {}
    for names, tensor in groups:
        by_dtype.setdefault(tensor.dtype, []).append(names[0])
    parts = [f"{dtype}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}" for dtype, names in by_dtype.items()]
    return "; ".join(parts)


def _check_uniform(groups: list[tuple[list[str], nn.Parameter]]) -> None:
    if not groups:
        raise ValueError("flat: the model has no parameters to flatten")
    if len({p.dtype for _, p in groups}) > 1:
        raise ValueError(f"flat: all parameters must share one dtype to fit one vector; got {_describe_dtypes(groups)}")
    devices = {p.device for _, p in groups}
    if len(devices) > 1:
        raise ValueError(f"flat: all parameters must be on one device; got {sorted(map(str, devices))}")


class FlatParam(nn.Module):
    """``model`` reparametrised by one vector ``flat_param`` (all parameters, tied ones once).

    Called as ``f(x, flat_param=None, buffers=None)``: the model's forward on ``x`` with its
    parameters read from ``flat_param`` (default: ``f.flat_param``) and, optionally, some buffers
    replaced. Any vector of the right size and dtype may be passed, including a non-leaf one
    (``theta - lr * grad``), so gradients of any order reach it.

    ``model`` keeps its ``Parameter`` objects and their values, but their storage becomes views of
    ``flat_param``: an optimizer step on either side is seen by the other. A later ``.to()`` (or
    ``.double()``, ``.cuda()``...) on either ends that sharing (each side then has its own
    storage). ``f.module`` is a sibling of ``model`` without registered parameters (shown with
    detached views of ``flat_param``); its buffers start shared with ``model``'s and its
    train/eval mode is its own. A call writes the views of its vector (and its ``buffers=``) into
    ``f.module`` as plain attributes for the duration of the forward, then puts back what was there,
    even when it raises: ``state_dict()`` is left unchanged, and a flat model called inside another
    one's forward (or its own) leaves the outer call's tensors in place. Like any module that swaps
    its tensors (``torch.func.functional_call`` does too), one ``f`` is not for concurrent threads.

    BatchNorm in training mode: ``f(x)`` is the model's own forward and updates the running
    statistics in use (``model``'s, shared) in place, as training ``model`` would. A substituted
    forward (``flat_param=`` given) leaves ``state_dict()`` unchanged, as
    :func:`~modify.functional_call` does: the statistics it updates are scratch copies, unless
    ``buffers=`` gives tensors to receive the updates. Under ``torch.func.vmap`` pass batched
    ``buffers=`` or use eval mode, as for ``torch.func.functional_call``.

    Args:
        model: the module to flatten; its parameters must share one dtype and device.

    Shape:
        ``flat_param``: ``(param_numel,)``; under ``torch.func.vmap`` a batch ``(B, param_numel)``
        of vectors, one per sample.

    Attributes:
        flat_param: the only parameter, ``(param_numel,)``, initialised with the model's values.
        param_numel: the number of distinct parameter elements (tied weights counted once).
        module: the parameter-free sibling the forward runs.

    Raises:
        ValueError: a model without parameters, or with mixed dtypes or devices; on a call, a
            ``flat_param`` of the wrong size or dtype, unknown or mis-shaped ``buffers``.
        TypeError: ``flat_param`` or ``buffers`` of the wrong kind.

    Example:
        >>> import torch, modify
        >>> net = modify.Sequential(modify.Linear(2, 3), modify.Tanh(), modify.Linear(3, 1))
        >>> f = modify.flat(net)
        >>> f.param_numel, tuple(f.parameters()) == (f.flat_param,)
        (13, True)
        >>> x = torch.randn(4, 2)
        >>> torch.equal(f(x), net(x))
        True
        >>> theta = f.flat_param
        >>> loss = f(x).square().sum()
        >>> g, = torch.autograd.grad(loss, theta, create_graph=True)
        >>> f(x, flat_param=theta - 0.1 * g).square().sum().backward()   # second order
    """

    @typechecked
    def __init__(self, model: nn.Module):
        super().__init__()
        groups = group_by_identity(model.named_parameters(remove_duplicate=False))
        _check_uniform(groups)
        flat = torch.cat([p.detach().reshape(-1) for _, p in groups])
        self.flat_param = nn.Parameter(flat, requires_grad=any(p.requires_grad for _, p in groups))
        self._names = tuple(tuple(map(_split_name, names)) for names, _ in groups)
        self._shapes = tuple(p.shape for _, p in groups)
        self._numels = tuple(p.numel() for _, p in groups)
        self.param_numel = flat.numel()
        with torch.no_grad():
            for (_, p), view in zip(groups, self._views(self.flat_param.data)):
                p.data = view
        stateless = _stateless_maker()
        self.module = rebuild(
            model,
            pre=lambda path, m: None if isinstance(m, Combinator) else stateless(m),
            post=lambda path, original, new: _without_own_parameters(new),
        )
        self._buffer_names = tuple((name, _split_name(name)) for name in named_places(self.module)[1])
        self._refresh_views()

    def _views(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """``theta`` cut into the parameters' shapes; 1-D pieces as they are (each view is an autograd node)."""
        pieces = theta.split_with_sizes(self._numels)
        return [piece if len(shape) == 1 else piece.view(shape) for piece, shape in zip(pieces, self._shapes)]

    def _refresh_views(self) -> None:
        """Show detached views of ``flat_param`` as the sibling's plain (unregistered) attributes."""
        for place, key, view in self._parameter_writes(self.flat_param.detach()):
            place[key] = view

    def _parameter_writes(self, theta: torch.Tensor) -> list[Write]:
        """Each view of ``theta`` as a plain attribute of the sibling, at every name it goes by.

        The owners are looked up on each call, not cached: a copy of this module (another
        rewriter's, or ``flat`` of a model holding it) runs its own sibling.
        """
        root = self.module
        return [
            (_owner(root, path).__dict__, attr, view)
            for names, view in zip(self._names, self._views(theta))
            for path, attr in names
        ]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._refresh_views()
        return self

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._refresh_views()

    def forward(self, x, flat_param: torch.Tensor | None = None, buffers: dict[str, torch.Tensor] | None = None):
        theta = self.flat_param if flat_param is None else self._checked(flat_param)
        writes = self._parameter_writes(theta)
        given = {} if buffers is None else self._checked_buffers(buffers)
        if flat_param is not None and self._buffer_names:  # a substituted forward leaves state_dict() as it was
            given = {**scratch_buffers(self._buffer_places(), given), **given}
        if given:
            writes += [(module._buffers, attr, given[name]) for name, (module, attr) in self._buffer_places(given).items()]
        # Written straight into the sibling (torch.func.functional_call's checks and bookkeeping
        # cost a third of a small model's call). The previous values come back, not the detached
        # views: a call nested in another's forward leaves the outer call's tensors in place.
        return call_with(self.module, writes, x)

    def _buffer_places(self, names: dict | None = None) -> dict[str, Place]:
        """``{name: (module, attr)}`` of the sibling's buffers (all, or those in ``names``), owners looked up now."""
        root = self.module
        return {
            name: (_owner(root, path), attr)
            for name, (path, attr) in self._buffer_names
            if names is None or name in names
        }

    def _checked(self, theta: object) -> torch.Tensor:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"FlatParam: flat_param must be a tensor, got {type(theta).__name__}")
        if theta.shape != (self.param_numel,):
            raise ValueError(
                f"FlatParam: flat_param must have shape ({self.param_numel},), got {tuple(theta.shape)} "
                "(for a batch of vectors, call it under torch.func.vmap)"
            )
        if theta.dtype != self.flat_param.dtype:
            raise ValueError(f"FlatParam: flat_param must be {self.flat_param.dtype}, got {theta.dtype}")
        return theta

    def _checked_buffers(self, buffers: object) -> dict[str, torch.Tensor]:
        if not isinstance(buffers, dict):
            raise TypeError(f"FlatParam: buffers must be a dict of tensors, got {type(buffers).__name__}")
        own = dict(self.module.named_buffers(remove_duplicate=False))
        unknown = [name for name in buffers if name not in own]
        if unknown:
            raise ValueError(f"FlatParam: the model has no buffers {unknown}; it has {list(own)}")
        for name, value in buffers.items():
            if not isinstance(value, torch.Tensor) or value.shape != own[name].shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"FlatParam: buffer {name!r} must have shape {tuple(own[name].shape)}, got {got}")
        return buffers

    def extra_repr(self) -> str:
        return f"param_numel={self.param_numel}, dtype={self.flat_param.dtype}"


@typechecked
def flat(model: nn.Module) -> FlatParam:
    """``FlatParam(model)``: the model reparametrised by one flat vector; see :class:`FlatParam`.

    Args:
        model: any module whose parameters share a dtype and device. The one rewriter that
            touches its input: only where the parameters' data live (now in ``flat_param``).

    Returns:
        The :class:`FlatParam` module.

    Example:
        >>> import torch, modify
        >>> net = modify.Linear(3, 2)
        >>> f = modify.flat(net)
        >>> thetas = torch.randn(5, f.param_numel)               # five parameter vectors
        >>> torch.func.vmap(lambda t: f(torch.ones(3), flat_param=t))(thetas).shape
        torch.Size([5, 2])
        >>> with torch.no_grad():
        ...     _ = f.flat_param.zero_()
        >>> net.weight.abs().sum().item()                       # the model's storage is flat_param's
        0.0
    """
    return FlatParam(model)
