"""``modify.HyperNetwork``: an MLP that predicts a target model's parameters, per sample.

Ha, Dai & Le 2016, "HyperNetworks" (arXiv:1609.09106). torchhyper predicts one set of target
parameters per batch; this one maps each row of ``z`` to its own set, so with
``torch.func.vmap`` + :func:`modify.functional_call` every sample runs its own target weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .._core.arguments import typechecked
from ..combinators import Sequential
from ..primitives.activations import ReLU
from ..primitives.linear import Linear


class HyperNetwork(nn.Module):
    """An MLP from a code ``z`` to a dict of parameters shaped like ``target.named_parameters()``.

    A plain ``torch.nn.Module`` outside the algebra (it returns a dict). It keeps only ``target``'s
    parameter names and shapes, never ``target`` itself. The MLP is ``Linear``/``ReLU`` layers of
    ``hidden_sizes`` and a ``head`` producing every parameter element at once; the head's weight
    starts at zero and its bias at ``target``'s current parameters, so at initialisation every
    ``z`` predicts ``target``'s own (well-initialised) parameters and training learns how they
    should depend on ``z`` (as LoRA starts from the base model). Tied parameters of ``target``
    are predicted once, under their first name (``functional_call`` fills in the others).

    Args:
        input_dim: size of ``z``.
        hidden_sizes: widths of the hidden layers (may be empty: a single linear map).
        target: the module whose parameters are predicted; on its device and dtype.
        params: names (as in ``target.named_parameters()``) of the only parameters to predict,
            e.g. those of :func:`~modify.lora_parameters` for per-sample LoRA adapters over one
            shared base; call the target with ``functional_call(..., strict=False)`` so that
            its own tensors fill in the rest. ``None``: every parameter.

    Shape:
        ``z``: ``(input_dim,)`` or ``(B, input_dim)``. Output: ``{name: (*shape)}`` or
        ``{name: (B, *shape)}``, one entry per predicted parameter of ``target``.

    Attributes:
        param_shapes: ``{name: torch.Size}`` of the predicted parameters.
        body: the hidden layers (``modify.Sequential``, default ``torch.nn.Linear`` init).
        head: ``Linear(hidden_sizes[-1] or input_dim, total parameter count)``.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: nothing to predict, a name in ``params`` that ``target`` lacks, a non-positive
            size; on a call, ``z`` that is
            not ``(input_dim,)`` or ``(B, input_dim)``.

    Example:
        >>> import torch, modify
        >>> target = modify.Sequential(modify.Linear(2, 8), modify.Tanh(), modify.Linear(8, 1))
        >>> hyper = modify.HyperNetwork(input_dim=3, hidden_sizes=(16,), target=target)
        >>> params = hyper(torch.randn(5, 3))                  # five sets of target weights
        >>> {k: tuple(v.shape) for k, v in params.items()}
        {'0.weight': (5, 8, 2), '0.bias': (5, 8), '2.weight': (5, 1, 8), '2.bias': (5, 1)}
        >>> xs = torch.randn(5, 10, 2)                          # per-sample inputs
        >>> ys = torch.func.vmap(lambda p, x: modify.functional_call(target, p, x))(params, xs)
        >>> ys.shape
        torch.Size([5, 10, 1])
    """

    @typechecked
    def __init__(
        self,
        input_dim: int,
        hidden_sizes: tuple[int, ...] | list[int],
        target: nn.Module,
        params: Iterable[str] | None = None,
    ):
        super().__init__()
        named = _chosen(target, params)
        sizes = [input_dim, *hidden_sizes]
        if min(sizes) < 1:
            raise ValueError(f"HyperNetwork: sizes must be positive, got {input_dim=}, {hidden_sizes=}")
        place = {"device": named[0][1].device, "dtype": named[0][1].dtype}
        self.input_dim = input_dim
        self.param_shapes = {name: p.shape for name, p in named}
        self._numels = [p.numel() for _, p in named]
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (Linear(a, b, **place), ReLU())]
        self.body = Sequential(*layers)
        self.head = Linear(sizes[-1], sum(self._numels), weight_init=nn.init.zeros_, **place)
        with torch.no_grad():
            self.head.bias.copy_(torch.cat([p.detach().reshape(-1) for _, p in named]))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(z, torch.Tensor) or z.dim() not in (1, 2) or z.shape[-1] != self.input_dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"HyperNetwork expects z of shape ({self.input_dim},) or (B, {self.input_dim}), got {got}")
        flat = self.head(self.body(z))  # (*lead, total)
        lead = flat.shape[:-1]
        pieces = flat.split(self._numels, dim=-1)
        return {name: piece.reshape(*lead, *shape) for (name, shape), piece in zip(self.param_shapes.items(), pieces)}

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, predicts={len(self.param_shapes)} tensors ({sum(self._numels)} values)"


def _chosen(target: nn.Module, params: Iterable[str] | None) -> list[tuple[str, nn.Parameter]]:
    """``target``'s named parameters, or those named in ``params`` (in the target's order)."""
    named = list(target.named_parameters())
    if params is not None:
        wanted = list(dict.fromkeys(params))
        unknown = sorted(set(wanted) - {name for name, _ in named})
        if unknown:
            raise ValueError(f"HyperNetwork: target {type(target).__name__} has no parameters {unknown[:6]}")
        named = [(name, p) for name, p in named if name in set(wanted)]
    if not named:
        given = "" if params is None else f" among params={params!r:.60}"
        raise ValueError(f"HyperNetwork: target {type(target).__name__} has no parameters to predict{given}")
    return named
