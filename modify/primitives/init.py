"""Custom initialisation: ``weight_init=`` / ``bias_init=`` of ``Linear``, ``Conv*``, ``Embedding``."""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch.distributions import Distribution

Init = Union[Distribution, Callable[[torch.Tensor], object], None]


@torch.no_grad()
def apply_init(parameter: torch.Tensor, init: Init, owner: str) -> None:
    """Fill ``parameter`` in place from ``init``.

    Args:
        parameter: the tensor to fill.
        init: a ``torch.distributions.Distribution`` with scalar batch and event shape (sampled
            to the parameter's shape), a callable ``init(tensor) -> None`` such as
            ``torch.nn.init.kaiming_normal_``, or ``None`` (leave as is).
        owner: ``"Linear.weight"`` and the like, for error messages.

    Raises:
        ValueError: a distribution whose batch or event shape is not scalar.
    """
    if init is None:
        return
    if isinstance(init, Distribution):
        if init.batch_shape != torch.Size() or init.event_shape != torch.Size():
            raise ValueError(
                f"{owner}: a weight/bias distribution must be scalar (batch and event shape ()), "
                f"got batch {tuple(init.batch_shape)} event {tuple(init.event_shape)}"
            )
        parameter.copy_(init.sample(parameter.shape))
        return
    init(parameter)
