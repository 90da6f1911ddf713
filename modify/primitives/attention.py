"""Attention leaves: ``ScaledDotProductAttention`` and ``RotaryEmbedding``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._core.arguments import check_finite, check_sizes, typechecked
from .._core.checks import checks_enabled, expect_floating, expect_tensors, is_dynamo_compiling
from .._core.errors import ModifyTypeError, ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Linear, Matrix, NonLinear, ParamFree, Ternary, Unary, Vector


class ScaledDotProductAttention(Leaf, Ternary, ParamFree, NonLinear, Matrix):
    """``softmax(q k^T * scale [+ causal mask]) v`` on a ``(q, k, v)`` tuple.

    Runs ``torch.nn.functional.scaled_dot_product_attention`` (Vaswani et al. 2017). Grouped-query
    attention (Ainslie et al. 2023) is handled: when ``k``/``v`` have fewer heads than ``q`` (axis
    -3), each is repeated ``q_heads / kv_heads`` times, as Llama's ``repeat_kv``. A padded batch
    adds a fourth element, the ``(B, S)`` bool key mask of its tokens (see
    :class:`~modify.models.TokenInput`): a padded key is never attended to, and each query also
    sees its own position, so a padded query's output stays finite. An empty key mask means no
    padding.

    Args:
        causal: mask future positions (the upper triangle), as GPT decoders do.
        dropout: attention dropout probability, applied in training only.
        scale: the logit scale; ``None`` means ``1 / sqrt(head_dim)``.

    Shape:
        ``q: (*, H, L, E)``, ``k: (*, H_kv, S, E)``, ``v: (*, H_kv, S, E_v)`` -> ``(*, H, L, E_v)``;
        ``H`` a multiple of ``H_kv``; with a key mask, ``(q, k, v, key_mask)`` with ``key_mask: (B, S)``
        bool for ``(B, H_kv, S, E)`` keys (or empty, ``(0,)``).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``dropout`` outside ``[0, 1)``; ``scale`` nan or infinite.
        ModifyTypeError: the input is not a tuple of tensors.
        ModifyValueError: a tuple of other than three or four values; a key mask that is not
            ``(B, S)`` bool; ``q``, ``k``, ``v`` of different
            ranks (or fewer than 2 dims); ``k`` and ``v`` of different lengths ``S``; ``H`` not a
            multiple of ``H_kv`` (or ``H_kv = 0``).

    Example:
        >>> import torch, modify
        >>> q = k = v = torch.randn(2, 4, 5, 8)
        >>> modify.ScaledDotProductAttention(causal=True)((q, k, v)).shape
        torch.Size([2, 4, 5, 8])
        >>> tokens = torch.tensor([[False, True, True, True, True], [True] * 5])  # row 0 left-padded
        >>> padded = modify.ScaledDotProductAttention(causal=True)((q, k, v, tokens))
        >>> alone = modify.ScaledDotProductAttention(causal=True)((q[:1, :, 1:], k[:1, :, 1:], v[:1, :, 1:]))
        >>> torch.allclose(padded[:1, :, 1:], alone, atol=1e-6)
        True
    """

    @typechecked
    def __init__(self, causal: bool = False, dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ScaledDotProductAttention dropout must be in [0, 1), got {dropout}")
        check_finite("ScaledDotProductAttention", scale=scale)
        self.causal, self.dropout, self.scale = causal, float(dropout), scale

    def forward(self, x):
        q, k, v, key_mask = self.unpack(x)
        if q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
            k, v = self._repeat_kv(q, k, v)
        dropout = self.dropout if self.training else 0.0
        if key_mask is not None and key_mask.numel():
            mask = padded_mask(key_mask, q.shape[-2], k.shape[-2], self.causal)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal, scale=self.scale)

    def line_expression(self, writer, value: str) -> str:
        """``F.scaled_dot_product_attention`` alone where ``forward`` would call it so: 4-d ``q``,
        ``k``, ``v`` with as many heads, no key mask (else ``forward``; see :mod:`modify._core.straight_line`)."""
        v, me = value, writer.name(self)
        unmasked = f"(len({v}) == 3 or len({v}) == 4 and {v}[3].numel() == 0)"
        fits = f"{v}.__class__ is tuple and {unmasked} and {v}[0].dim() == {v}[1].dim() == {v}[2].dim() == 4 and {v}[1].shape[-3] == {v}[0].shape[-3]"
        call = (f"{writer.name(F.scaled_dot_product_attention)}({v}[0], {v}[1], {v}[2], "
                f"dropout_p={me}.dropout if {me}.training else 0.0, is_causal={me}.causal, scale={me}.scale)")
        return f"({call} if {fits} else {me}.forward({v}))"

    def unpack(self, x: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(q, k, v)`` or ``(q, k, v, key_mask)`` after checking shapes; ``key_mask`` ``None`` if absent."""
        values = expect_tensors(self, x, 4 if isinstance(x, tuple) and len(x) == 4 else 3)
        q, k, v = values[:3]
        key_mask = values[3] if len(values) == 4 else None
        if is_dynamo_compiling():
            return q, k, v, key_mask
        if not (q.dim() == k.dim() == v.dim() >= 2 and k.shape[-2] == v.shape[-2]) and checks_enabled():
            raise ModifyValueError(
                self, f"expected q (*, H, L, E), k (*, H_kv, S, E), v (*, H_kv, S, E_v) of one rank, got {describe(x)}"
            )
        if key_mask is not None and key_mask.numel() and (
            key_mask.dtype != torch.bool or key_mask.shape != (k.shape[0], k.shape[-2]) or k.dim() != 4
        ) and checks_enabled():
            raise ModifyValueError(self, f"expected a (B, S) bool key mask for (B, H, S, E) keys, got {describe(x)}")
        return q, k, v, key_mask

    def _repeat_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads, kv_heads = q.shape[-3], k.shape[-3]
        if checks_enabled() and (kv_heads == 0 or heads % kv_heads or v.shape[-3] != kv_heads):
            detail = f"query heads must be a multiple of key/value heads (at least 1), got {describe((q, k, v))}"
            raise ModifyValueError(self, detail)
        groups = heads // kv_heads
        return k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, dropout={self.dropout:g}, scale={self.scale}"


def padded_mask(
    key_mask: torch.Tensor, length: int, total: int, causal: bool, start: int | None = None
) -> torch.Tensor:
    """``(B, 1, L, S)`` bool attention mask: keys that are tokens (and, if ``causal``, not after the query).

    The ``L`` queries sit at positions ``start .. start + L - 1`` (default: the last ones, ``S - L
    .. S - 1``). Each query may also attend to its own position, so a padded query's row is never
    empty (its output is finite, and unspecified). Built from comparisons of positions, so
    ``start`` may be a symbolic integer under ``torch.compile`` (one graph for every decoding step).
    """
    start = total - length if start is None else start
    keys = torch.arange(total, device=key_mask.device)
    queries = torch.arange(start, start + length, device=key_mask.device)[:, None]
    before = keys <= queries  # (L, S): the query's own and earlier positions
    allowed = key_mask[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        allowed = allowed & before
    return allowed | (keys == queries)


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_kind(scaling: dict | None) -> str:
    """The ``rope_type`` (or older ``type``) of a Hugging Face ``rope_scaling`` dict; ``"default"`` if none."""
    return (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))


def check_rope_scaling(owner: str, scaling: dict | None) -> None:
    """Check a ``rope_scaling`` dict: ``None``, ``"default"``, a ``"linear"`` one or a complete ``"llama3"`` one.

    Values must be real numbers (not bools, finite). ``"linear"`` needs a positive ``factor``.
    Llama 3's ``factor`` and ``low_freq_factor`` are positive, ``high_freq_factor`` above
    ``low_freq_factor`` (the smoothing divides by their difference) and
    ``original_max_position_embeddings`` at least 1.

    Raises:
        ValueError: naming ``owner``: an unsupported ``rope_type``, a missing key or a bad value.
        TypeError: naming ``owner``: a value that is not a real number.
    """
    kind = rope_kind(scaling)
    if kind == "default":
        return
    needed = {"llama3": LLAMA3_KEYS, "linear": ("factor",)}.get(kind)
    if needed is None:
        raise ValueError(f"{owner}: rope_type {kind!r} is not supported (supported: 'default', 'linear', 'llama3')")
    missing = [key for key in needed if key not in scaling]
    if missing:
        raise ValueError(f"{owner}: {kind} rope_scaling lacks {missing}, got {scaling}")
    for key in needed:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{owner}: {kind} rope_scaling[{key!r}] must be a number, got {value!r}")
    factor = scaling["factor"]
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"{owner}: {kind} rope_scaling factor must be positive and finite, got {scaling}")
    if kind == "linear":
        return
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    if not (math.isfinite(low) and low > 0 and math.isfinite(high)):
        raise ValueError(f"{owner}: llama3 factor and low_freq_factor must be positive and finite, got {scaling}")
    if not high > low or not scaling["original_max_position_embeddings"] >= 1:
        raise ValueError(
            f"{owner}: llama3 needs high_freq_factor > low_freq_factor and original_max_position_embeddings >= 1, "
            f"got {scaling}"
        )


def rope_inverse_frequencies(dim: int, base: float, scaling: dict | None = None) -> torch.Tensor:
    """Rotary inverse frequencies ``base^(-2i/dim)``, optionally with Llama 3's rescaling.

    Args:
        dim: rotated size (even).
        base: ``rope_theta``.
        scaling: Hugging Face's ``rope_scaling`` dict; ``rope_type`` ``"llama3"`` (keys
            ``factor``, ``low_freq_factor``, ``high_freq_factor``,
            ``original_max_position_embeddings``), ``"linear"`` (key ``factor``: frequencies
            divided by it) or ``"default"``/``None``.

    Returns:
        ``(dim // 2,)`` float32.

    Raises:
        ValueError, TypeError: a ``scaling`` that :func:`check_rope_scaling` refuses.
    """
    check_rope_scaling("RotaryEmbedding", scaling)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope_kind(scaling) == "default":
        return inv_freq
    if rope_kind(scaling) == "linear":  # positions divided by factor (Chen et al. 2023)
        return inv_freq / float(scaling["factor"])
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(Leaf, Unary, ParamFree, Linear, Vector):
    """Rotate each vector by its position, as Llama's rotary position embedding.

    Su et al. 2021, "RoFormer"; the "rotate half" layout of Hugging Face's Llama: pairs
    ``(x_i, x_{i + dim/2})`` are rotated by angle ``position * inv_freq_i``. Positions are
    ``0 .. T-1`` along axis -2, or given with the input as ``(x, positions)`` (a padded batch's
    per-row positions, see :class:`~modify.models.TokenInput`).

    Args:
        dim: head dimension (even).
        base: ``rope_theta`` (default ``10000.0``; Llama 3 uses ``500000.0``).
        scaling: ``rope_scaling`` as in Hugging Face's config (``{"rope_type": "llama3", ...}``).

    Shape:
        ``(*, T, dim) -> (*, T, dim)``, e.g. ``(B, n_heads, T, head_dim)``; or
        ``((B, H, T, dim), (B, T) int64 positions) -> (B, H, T, dim)``.

    Attributes:
        inv_freq: ``(dim // 2,)`` float32 buffer, not persistent (not in ``state_dict``).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: odd or non-positive ``dim``; ``base`` not positive and finite; a ``scaling``
            whose ``rope_type`` is not ``"default"`` or ``"llama3"``, or a ``"llama3"`` one
            without one of its four keys or with a value that is zero or not a number.
        ModifyTypeError: the input is not a floating-point tensor (or a pair of it and integer
            positions).
        ModifyValueError: last dimension not ``dim``, or fewer than two dimensions; positions
            that are not ``(B, T)`` for a ``(B, H, T, dim)`` input.

    Example:
        >>> import torch, modify
        >>> rope = modify.RotaryEmbedding(8)
        >>> x = torch.randn(1, 2, 5, 8)
        >>> torch.allclose(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
        True
    """

    @typechecked
    def __init__(self, dim: int, base: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        check_sizes("RotaryEmbedding", dim=dim)
        if dim % 2:
            raise ValueError(f"RotaryEmbedding dim must be even, got {dim}")
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"RotaryEmbedding: base must be positive and finite, got {base}")
        self.dim, self.base, self.scaling = dim, float(base), scaling
        self.register_buffer("inv_freq", rope_inverse_frequencies(dim, self.base, scaling), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute ``inv_freq`` on the default device (see :meth:`ModifyModule.reset_buffers`)."""
        self.inv_freq = rope_inverse_frequencies(self.dim, self.base, self.scaling)

    def forward(self, x):
        positions = None
        if isinstance(x, tuple):
            x, positions = expect_tensors(self, x, 2)
            if checks_enabled() and (positions.is_floating_point() or positions.is_complex()):
                detail = f"expected a tensor or (x, integer positions), got {describe((x, positions))}"
                raise ModifyTypeError(self, detail)
        x = expect_floating(self, x)
        if checks_enabled() and (x.dim() < 2 or x.shape[-1] != self.dim):
            raise ModifyValueError(self, f"expected (*, T, {self.dim}), got {describe(x)}")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        elif checks_enabled() and (x.dim() != 4 or positions.shape != (x.shape[0], x.shape[-2])):
            detail = f"expected ((B, H, T, {self.dim}), (B, T) positions), got {describe((x, positions))}"
            raise ModifyValueError(self, detail)
        return self.rotate(x, positions)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` rotated for ``positions``: ``(T,)`` for all rows, or ``(B, T)`` per row (``x``: ``(B, H, T, dim)``)."""
        freqs = positions.float()[..., None] * self.inv_freq.float()  # (T, dim/2) or (B, T, dim/2)
        angles = torch.cat((freqs, freqs), dim=-1)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, T, dim): one rotation per row, shared by the heads
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        half = self.dim // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def extra_repr(self) -> str:
        scaling = f", scaling={self.scaling}" if self.scaling else ""
        return f"dim={self.dim}, base={self.base:g}{scaling}"
