"""``TransposedLinear``: a ``Linear`` whose weight is stored ``(in, out)``, as GPT-2's ``Conv1D``."""

from __future__ import annotations

import torch

from .._core.checks import expect_last_dim
from .linear import Linear, reset_like_torch


class TransposedLinear(Linear):
    """Affine map ``y = x W + b`` with ``W`` stored ``(in_features, out_features)``.

    The layout of ``transformers``' ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``; Radford
    et al. 2019), computed as it computes it (``torch.addmm`` on the flattened input), so a
    converted GPT-2 holds the checkpoint's own weight tensor. It is a :class:`~modify.Linear` for
    ``select`` and ``lora``, adapted as PEFT adapts ``Conv1D`` with ``fan_in_fan_out=True``: the
    same ``lora_A (r, in)`` and ``lora_B (out, r)``, merged as ``W + s (B A)^T``.

    Args:
        in_features, out_features, bias, weight_init, bias_init, device, dtype: as
            :class:`~modify.Linear`.

    Shape:
        ``(*, in_features) -> (*, out_features)``.

    Attributes:
        weight: ``(in_features, out_features)``, ``torch.nn.Linear``'s init transposed.
        bias: ``(out_features,)``, or ``None`` with ``bias=False``.

    Raises:
        As :class:`~modify.Linear`.

    Example:
        >>> import torch
        >>> from modify.primitives.transposed_linear import TransposedLinear
        >>> layer = TransposedLinear(3, 2)
        >>> layer.weight.shape, layer(torch.zeros(4, 5, 3)).shape
        (torch.Size([3, 2]), torch.Size([4, 5, 2]))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(layer(x), x @ layer.weight + layer.bias)
        True
    """

    @staticmethod
    def weight_shape(in_features: int, out_features: int) -> tuple[int, int]:
        """The weight's layout: ``(in_features, out_features)``, as GPT-2's ``Conv1D``."""
        return in_features, out_features

    def reset_parameters(self) -> None:
        """``torch.nn.Linear``'s init on the ``(out, in)`` view of the weight."""
        reset_like_torch(self.weight.t(), self.bias, self.weight_init, self.bias_init, type(self).__name__)

    def forward(self, x):
        x = expect_last_dim(self, x, self.in_features)
        flat = x.reshape(-1, self.in_features)
        y = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return y.view(*x.shape[:-1], self.out_features)
