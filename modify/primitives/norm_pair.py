"""A norm followed by its ``ElementwiseAffine``, run as one ``F.layer_norm``/``F.rms_norm`` call.

The tree keeps the two leaves (``Sequential(norm=LayerNorm(n), affine=ElementwiseAffine(n))``);
only the call is fused, when nothing could tell the difference: no hooks on either leaf (nor
global module hooks), no JIT tracing, the affine covering exactly the normalised axes, in the
input's dtype. One autograd node instead of two, as ``torch.nn.LayerNorm`` (and
:func:`modify.fuse`, which also merges the leaves) gets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module

from .norms import ElementwiseAffine, LayerNorm, RMSNorm, expect_trailing


def _unhooked(module: torch.nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)  # fmt: skip


def _no_global_hooks() -> bool:
    return not (_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks)  # fmt: skip


def fusable(norm: torch.nn.Module, affine: torch.nn.Module) -> bool:
    """Whether ``norm`` then ``affine`` may run as one call (checked at every call: both may change)."""
    kind = type(norm)
    return (
        (kind is LayerNorm or kind is RMSNorm)
        and type(affine) is ElementwiseAffine
        and affine.dim == -1
        and affine.shape == norm.normalized_shape
        and _unhooked(norm)
        and _unhooked(affine)
        and _no_global_hooks()
        and not torch._C._get_tracing_state()
    )


def norm_affine(norm: LayerNorm | RMSNorm, affine: ElementwiseAffine, x: object) -> torch.Tensor | None:
    """``affine(norm(x))`` in one call, or ``None`` where the input's dtype differs from the weight's.

    The norm's input check runs as in ``norm.forward`` (its errors name the norm).
    """
    x = expect_trailing(norm, x, norm.normalized_shape)
    weight, bias = affine.weight, affine.bias
    if x.dtype != weight.dtype:
        return None
    if type(norm) is LayerNorm:
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
    y = F.rms_norm(x, norm.normalized_shape, weight, norm.eps)
    return y if bias is None else y + bias
