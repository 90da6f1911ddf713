"""Known ``torch.nn`` layers as modify leaves holding the layer's own parameters and buffers.

Each leaf is built on the ``meta`` device (so nothing is allocated or re-randomised) and then
given the original ``Parameter`` and buffer objects: zero bytes copied, the original untouched.
A norm with an affine part becomes ``Sequential(norm=..., affine=ElementwiseAffine(...))``.
``transformers``' ``Conv1D`` (GPT-2's ``c_attn``) is known too, by its class name and module: it
becomes a :class:`~modify.primitives.transposed_linear.TransposedLinear` holding its ``(in, out)``
weight. Layers with options modify's leaves lack (``Embedding(max_norm=...)``, ``MaxPool2d(
return_indices=True)``, ``Softmax(dim=None)``) are not known: they stay whole as opaque leaves.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .. import primitives as P
from .._core.sibling import holding
from ..models.building import norm_with_affine
from ..primitives.transposed_linear import TransposedLinear

_META = "meta"


def _share(leaf: nn.Module, source: nn.Module, *names: str) -> nn.Module:
    """The meta-built ``leaf`` holding ``source``'s tensors ``names`` (the same objects), in its mode."""
    return holding(leaf, source, *names).train(source.training)


def _linear(m: nn.Linear) -> nn.Module:
    leaf = P.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=_META, dtype=m.weight.dtype)
    return _share(leaf, m, "weight", "bias")


def _conv(cls: type) -> Callable[[nn.Module], nn.Module]:
    def build(m: nn.Module) -> nn.Module:
        leaf = cls(
            m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
            groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode, device=_META, dtype=m.weight.dtype,
        )
        return _share(leaf, m, "weight", "bias")

    return build


def _embedding(m: nn.Embedding) -> nn.Module | None:
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        return None
    leaf = P.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx, device=_META, dtype=m.weight.dtype)
    return _share(leaf, m, "weight")


def _with_affine(norm: nn.Module, source: nn.Module, shape: tuple[int, ...], dim: int) -> nn.Module:
    norm.train(source.training)
    if source.weight is None:
        return norm
    affine = P.ElementwiseAffine(shape, bias=source.bias is not None, dim=dim, device=_META, dtype=source.weight.dtype)
    return norm_with_affine(norm, _share(affine, source, "weight", "bias")).train(source.training)


def _layer_norm(m: nn.LayerNorm) -> nn.Module:
    return _with_affine(P.LayerNorm(m.normalized_shape, m.eps), m, tuple(m.normalized_shape), -1)


def _rms_norm(m: nn.RMSNorm) -> nn.Module:
    return _with_affine(P.RMSNorm(m.normalized_shape, m.eps), m, tuple(m.normalized_shape), -1)


def _group_norm(m: nn.GroupNorm) -> nn.Module:
    return _with_affine(P.GroupNorm(m.num_groups, m.num_channels, m.eps), m, (m.num_channels,), 1)


def _batch_norm(cls: type) -> Callable[[nn.Module], nn.Module]:
    def build(m: nn.Module) -> nn.Module:
        norm = cls(m.num_features, m.eps, m.momentum, m.track_running_stats, device=_META)
        if m.track_running_stats:
            norm = _share(norm, m, "running_mean", "running_var", "num_batches_tracked")
        return _with_affine(norm, m, (m.num_features,), 1)

    return build


def _pool(m: nn.Module) -> nn.Module | None:
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            return None
        return P.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    return P.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)


def _softmax(cls: type) -> Callable[[nn.Module], nn.Module | None]:
    return lambda m: None if m.dim is None else cls(m.dim)


_LAYERS: dict[type, Callable[[nn.Module], nn.Module | None]] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv(P.Conv1d),
    nn.Conv2d: _conv(P.Conv2d),
    nn.Embedding: _embedding,
    nn.LayerNorm: _layer_norm,
    nn.RMSNorm: _rms_norm,
    nn.GroupNorm: _group_norm,
    nn.BatchNorm1d: _batch_norm(P.BatchNorm1d),
    nn.BatchNorm2d: _batch_norm(P.BatchNorm2d),
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: lambda m: P.AdaptiveAvgPool2d(m.output_size),
    nn.ReLU: lambda m: P.ReLU(),
    nn.GELU: lambda m: P.GELU(m.approximate),
    nn.SiLU: lambda m: P.SiLU(),
    nn.Tanh: lambda m: P.Tanh(),
    nn.Sigmoid: lambda m: P.Sigmoid(),
    nn.Softmax: _softmax(P.Softmax),
    nn.LogSoftmax: _softmax(P.LogSoftmax),
    nn.Identity: lambda m: P.Identity(),
    nn.Dropout: lambda m: P.Dropout(m.p) if m.p < 1 else None,
    nn.Flatten: lambda m: P.Flatten(m.start_dim, m.end_dim),
}


def _transposed_linear(m: nn.Module) -> nn.Module:
    leaf = TransposedLinear(*m._parameters["weight"].shape, bias=m.bias is not None, device=_META, dtype=m.weight.dtype)
    return _share(leaf, m, "weight", "bias")


def _is_conv1d(module: nn.Module) -> bool:
    """``transformers``' ``Conv1D`` (GPT-2): ``x @ weight + bias``, ``weight`` stored ``(in, out)``."""
    kind = type(module)
    weight = module._parameters.get("weight")  # not ``module.weight``: a Proxy while torch.fx traces
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers.") and getattr(weight, "ndim", 0) == 2


def known_layer(module: nn.Module) -> bool:
    """Whether ``module``'s class (exactly, not a subclass with its own ``forward``) has a leaf."""
    return type(module) in _LAYERS or _is_conv1d(module)


def convert_layer(module: nn.Module) -> nn.Module | None:
    """The modify leaf (or norm + affine ``Sequential``) for a known layer, or ``None``.

    The result holds ``module``'s own parameters and buffers and has its ``training`` flag.
    """
    build = _transposed_linear if _is_conv1d(module) else _LAYERS.get(type(module))
    if build is None:
        return None
    leaf = build(module)
    return None if leaf is None else leaf.train(module.training)

