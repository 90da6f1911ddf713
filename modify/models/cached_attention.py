"""Cached attention: the leaf of a :func:`~modify.models.kv_cache` sibling that remembers keys and values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._core.arguments import typechecked
from .._core.errors import ModifyValueError, describe
from ..primitives import ScaledDotProductAttention
from ..primitives.attention import padded_mask


class CachedAttention(ScaledDotProductAttention):
    """A causal :class:`~modify.ScaledDotProductAttention` that remembers the keys and values it has seen.

    Each call writes its ``k``, ``v`` (axis -2) after the cached positions and attends from the
    new queries to every cached position, causally: the query at position ``offset + i`` sees
    keys ``0 .. offset + i``. Feeding a sequence in pieces therefore gives the outputs of feeding
    it whole. The cache is non-persistent buffers (not in ``state_dict``), with the key/value
    heads as given (grouped-query heads are repeated per call, not stored).

    Without ``capacity`` the storage doubles when full and a call attends to the positions
    written so far. With ``capacity`` (a static cache, as transformers' ``StaticCache``) the
    storage of ``capacity`` positions is allocated once and every call attends over the positions
    written (through a mask of a padded batch's tokens): under ``torch.compile`` with the offset
    a symbolic integer, every one-position step is one graph.

    Args:
        attention: the causal attention leaf to copy the settings of (``dropout``, ``scale``,
            ``training``).
        capacity: the most positions cached (static cache), or ``None`` (growing storage).

    Shape:
        ``q: (*, H, L, E)``, ``k: (*, H_kv, L, E)``, ``v: (*, H_kv, L, E_v)`` -> ``(*, H, L, E_v)``;
        the cache holds ``(*, H_kv, offset + L, E)`` (``capacity`` positions allocated if given).

    Attributes:
        cached_key, cached_value: the storage, ``None`` until the first call.
        cached_mask: ``(B, positions)`` bool, the cached positions that are tokens; ``None`` while
            nothing was padded (always kept with ``capacity``).
        offset: the number of positions cached.

    Raises:
        TypeError: ``attention`` is not a ``ScaledDotProductAttention``.
        ValueError: ``attention`` is not causal; ``capacity < 1``.
        ModifyValueError: (at call) ``k``/``v`` whose leading shape differs from the cache's
            (another batch: call :meth:`reset` first); more than ``capacity`` positions.

    Example:
        >>> import torch, modify
        >>> from modify.models import CachedAttention
        >>> q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        >>> cached = CachedAttention(modify.ScaledDotProductAttention(causal=True))
        >>> first = cached((q[..., :4, :], k[..., :4, :], v[..., :4, :]))  # a prompt of 4 positions
        >>> last = cached((q[..., 4:, :], k[..., 4:, :], v[..., 4:, :]))  # then one more
        >>> whole = modify.ScaledDotProductAttention(causal=True)((q, k, v))
        >>> torch.allclose(torch.cat((first, last), dim=-2), whole, atol=1e-6), cached.offset
        (True, 5)
        >>> static = CachedAttention(modify.ScaledDotProductAttention(causal=True), capacity=8)
        >>> first = static((q[..., :4, :], k[..., :4, :], v[..., :4, :]))
        >>> last = static((q[..., 4:, :], k[..., 4:, :], v[..., 4:, :]))
        >>> torch.allclose(torch.cat((first, last), dim=-2), whole, atol=1e-6), static.cached_key.shape[-2]
        (True, 8)
    """

    @typechecked
    def __init__(self, attention: ScaledDotProductAttention, capacity: int | None = None):
        if not attention.causal:
            raise ValueError("CachedAttention: the attention is not causal; only causal attention decodes with a cache")
        if capacity is not None and capacity < 1:
            raise ValueError(f"CachedAttention: capacity must be at least 1, got {capacity}")
        super().__init__(True, attention.dropout, attention.scale)
        self.train(attention.training)
        self.capacity = capacity
        self.register_buffer("cached_key", None, persistent=False)
        self.register_buffer("cached_value", None, persistent=False)
        self.register_buffer("cached_mask", None, persistent=False)
        self.offset = 0

    def reset(self) -> None:
        """Empty the cache."""
        self.cached_key = self.cached_value = self.cached_mask = None
        self.offset = 0

    def forward(self, x):
        q, k, v, key_mask = self.unpack(x)
        self._check_fits(k, x)
        start, length = self.offset, q.shape[-2]
        recording = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
        key_mask = self._append_mask(key_mask, k, recording)
        k, v = self._append(k, v, recording)
        if q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
            k, v = self._repeat_kv(q, k, v)
        total = k.shape[-2]
        mask = None
        if key_mask is not None:
            mask = padded_mask(key_mask[:, :total], length, total, causal=True, start=start)
        elif 1 < length < total:  # new queries sit at offset .. total - 1: the mask is the bottom rows
            mask = torch.ones(length, total, dtype=torch.bool, device=q.device).tril(total - length)
        dropout = self.dropout if self.training else 0.0
        causal = mask is None and length > 1
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.scale
        )

    def _check_fits(self, k: torch.Tensor, x: object) -> None:
        """Raise unless ``k`` extends the cache: the same leading shape, within ``capacity``."""
        if self.cached_key is not None and k.shape[:-2] != self.cached_key.shape[:-2]:
            detail = f"the cache holds keys {describe(self.cached_key)}, got {describe(k)}; reset the cache first"
            raise ModifyValueError(self, detail)
        if self.capacity is not None and self.offset + k.shape[-2] > self.capacity:
            detail = f"expected at most {self.capacity} positions, {self.offset} cached, got {describe(x)}"
            raise ModifyValueError(self, detail)

    def _append(self, k: torch.Tensor, v: torch.Tensor, recording: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` after the cached positions; return the keys and values to attend over.

        Storage is written in place, so a decoding step copies only its own keys and values (no
        concatenation of the whole cache) into storage that doubles when full, or of ``capacity``
        positions; either is returned up to the last position written. Where autograd records
        (``recording``) the cache is concatenated instead: an in-place write would invalidate the
        keys saved for the backward pass.
        """
        start, end = self.offset, self.offset + k.shape[-2]
        self.offset = end
        if recording:
            if start:
                k = torch.cat((self.cached_key[..., :start, :], k), dim=-2)
                v = torch.cat((self.cached_value[..., :start, :], v), dim=-2)
            self._buffers["cached_key"], self._buffers["cached_value"] = k, v
            return k, v
        stored = self.cached_key
        if stored is None or stored.dtype != k.dtype or stored.shape[-2] != self._size(stored, end):
            size = self._size(stored, end)
            self._buffers["cached_key"] = _storage(self.cached_key, k, start, size)
            self._buffers["cached_value"] = _storage(self.cached_value, v, start, size)
        self.cached_key[..., start:end, :] = k
        self.cached_value[..., start:end, :] = v
        return self.cached_key[..., :end, :], self.cached_value[..., :end, :]

    def _size(self, stored: torch.Tensor | None, end: int) -> int:
        """Positions of storage for ``end`` cached: ``capacity``, or the stored size, doubled while short."""
        if self.capacity is not None:
            return self.capacity
        size = 16 if stored is None else stored.shape[-2]
        while size < end:
            size *= 2
        return size

    def _append_mask(self, key_mask: torch.Tensor | None, k: torch.Tensor, recording: bool) -> torch.Tensor | None:
        """The ``(B, S)`` key mask of every cached position (``S >= offset + L``), ``None`` while nothing was padded."""
        padded = key_mask is not None and key_mask.numel() > 0
        if not padded and self.cached_mask is None and self.capacity is None:
            return None
        start, end = self.offset, self.offset + k.shape[-2]
        if not padded:
            key_mask = torch.ones(k.shape[0], k.shape[-2], dtype=torch.bool, device=k.device)
        if self.capacity is not None and not recording:
            if self.cached_mask is None or self.cached_mask.shape[-1] != self.capacity:
                self.cached_mask = _storage(self.cached_mask, key_mask, start, self.capacity)
            self.cached_mask[:, start:end] = key_mask
            return self.cached_mask
        if self.cached_mask is None:  # earlier positions had no padding
            self.cached_mask = torch.ones(k.shape[0], start, dtype=torch.bool, device=k.device)
        self.cached_mask = torch.cat((self.cached_mask[:, :start], key_mask), dim=-1)
        return self.cached_mask

    def extra_repr(self) -> str:
        capacity = "" if self.capacity is None else f", capacity={self.capacity}"
        return f"{super().extra_repr()}{capacity}, offset={self.offset}"


def _storage(store: torch.Tensor | None, new: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """Zeroed storage of ``size`` positions (axis -2, or -1 for a mask) holding ``store``'s first ``start``."""
    if new.dim() == 2:  # a (B, S) key mask
        grown = new.new_zeros(new.shape[0], size)
        if start:
            grown[:, :start] = store[:, :start]
        return grown
    grown = new.new_zeros(*new.shape[:-2], size, new.shape[-1])
    if start:
        grown[..., :start, :] = store[..., :start, :]
    return grown
