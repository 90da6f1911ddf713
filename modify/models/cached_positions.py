"""Position leaves of a :func:`~modify.models.kv_cache` sibling, which continue where their last call
stopped, and :class:`LastPosition`, which keeps only the position a decoder samples from."""

from __future__ import annotations

import torch

from .._core.arguments import typechecked
from .._core.checks import expect_tensor, expect_tensors
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..primitives import Positions, RotaryEmbedding
from .padding import TokenInput, no_padding, positions_from_mask
from ..traits import Linear, ParamFree, Restructure, Unary


class CachedTokenInput(TokenInput):
    """A :class:`~modify.models.TokenInput` whose positions continue where its last call stopped.

    Plain ids get positions ``offset .. offset + T - 1``; a padded batch's rows continue from the
    number of tokens each has seen (``seen + cumsum(mask) - 1``), so a left-padded prompt followed
    by one token at a time gets transformers' ``generate`` positions.

    Args:
        tokens: the leaf to copy ``limit`` from.

    Shape:
        As :class:`~modify.models.TokenInput`.

    Attributes:
        offset: positions handed out so far (tokens and padding).
        seen: ``(B,)`` tokens seen per row, ``None`` until a padded call.

    Raises:
        TypeError: ``tokens`` is not a ``TokenInput``.
        ModifyValueError: (at call) ``offset + T > limit``; what ``TokenInput`` refuses.

    Example:
        >>> import torch
        >>> from modify.models import CachedTokenInput, TokenInput
        >>> cached = CachedTokenInput(TokenInput(limit=8))
        >>> ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.tensor([[0, 1, 1], [1, 1, 1]])
        >>> cached((ids, mask))[1].tolist(), cached((ids[:, :1], mask[:, :1] * 0 + 1))[1].tolist()
        ([[0, 0, 1], [0, 1, 2]], [[2], [3]])
    """

    @typechecked
    def __init__(self, tokens: TokenInput):
        super().__init__(tokens.limit)
        self.offset, self.seen = 0, None

    def reset(self) -> None:
        """Start again from position 0."""
        self.offset, self.seen = 0, None

    def forward(self, x):
        ids = x if isinstance(x, torch.Tensor) else expect_tensors(self, x, 2)[0]
        ids = self.check_ids(ids, x)
        start, self.offset = self.offset, self.offset + ids.shape[-1]
        if self.limit is not None and self.offset > self.limit:
            self.offset = start
            raise ModifyValueError(self, f"expected (B, T) with {start} + T <= {self.limit}, got {describe(x)}")
        if isinstance(x, torch.Tensor) and self.seen is None:
            positions = torch.arange(start, self.offset, device=ids.device).expand(ids.shape)
            return ids, positions, no_padding(ids)
        mask = self.check_mask(ids, x[1], x) if isinstance(x, tuple) else torch.ones_like(ids, dtype=torch.bool)
        seen = self.seen if self.seen is not None else torch.full(ids.shape[:1], start, device=ids.device)
        self.seen = seen + mask.sum(-1)
        return ids, positions_from_mask(mask, seen), mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}".lstrip(", ")


class CachedPositions(Positions):
    """A :class:`Positions` leaf that continues where its last call stopped: ``offset .. offset + T - 1``.

    Args:
        positions: the leaf to copy ``limit`` from.

    Shape:
        ``(*, T)`` -> ``(*, T)`` int64, the positions ``offset .. offset + T - 1``.

    Attributes:
        offset: positions handed out so far.

    Raises:
        TypeError: ``positions`` is not a ``Positions``.
        ModifyValueError: (at call) ``offset + T > limit``, or a 0-d input.

    Example:
        >>> import torch
        >>> from modify import Positions
        >>> from modify.models import CachedPositions
        >>> cached = CachedPositions(Positions(limit=8))
        >>> cached(torch.zeros(1, 3)).tolist(), cached(torch.zeros(1, 1)).tolist()
        ([[0, 1, 2]], [[3]])
    """

    @typechecked
    def __init__(self, positions: Positions):
        super().__init__(positions.limit)
        self.offset = 0

    def reset(self) -> None:
        """Start again from position 0."""
        self.offset = 0

    def forward(self, x):
        x = expect_tensor(self, x)
        start = self.offset
        if x.dim() == 0 or (self.limit is not None and start + x.shape[-1] > self.limit):
            raise ModifyValueError(self, f"expected (*, T) with {start} + T <= {self.limit}, got {describe(x)}")
        self.offset = start + x.shape[-1]
        return torch.arange(start, self.offset, device=x.device).expand(x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}".lstrip(", ")


class CachedRotaryEmbedding(RotaryEmbedding):
    """A :class:`~modify.RotaryEmbedding` whose positions continue where its last call stopped.

    Shares the original's ``inv_freq`` buffer (the same tensor object).

    Args:
        rotary: the leaf to copy ``dim``, ``base``, ``scaling`` and ``inv_freq`` from.

    Shape:
        ``(*, T, dim) -> (*, T, dim)``, rotated for positions ``offset .. offset + T - 1``.

    Attributes:
        offset: positions rotated so far.

    Raises:
        TypeError: ``rotary`` is not a ``RotaryEmbedding``.
        ModifyValueError: (at call) last dimension not ``dim``, or fewer than two dimensions.

    Example:
        >>> import torch, modify
        >>> from modify.models import CachedRotaryEmbedding
        >>> rope, x = modify.RotaryEmbedding(8), torch.randn(1, 2, 5, 8)
        >>> cached = CachedRotaryEmbedding(rope)
        >>> pieces = torch.cat((cached(x[..., :3, :]), cached(x[..., 3:, :])), dim=-2)
        >>> torch.equal(pieces, rope(x)), cached.inv_freq is rope.inv_freq
        (True, True)
    """

    @typechecked
    def __init__(self, rotary: RotaryEmbedding):
        super().__init__(rotary.dim, rotary.base, rotary.scaling)
        self.inv_freq = rotary.inv_freq
        self.offset = 0

    def reset(self) -> None:
        """Start again from position 0."""
        self.offset = 0

    def forward(self, x):
        if isinstance(x, tuple):  # positions given (a padded batch's, from CachedTokenInput): count them only
            self.offset += expect_tensors(self, x, 2)[0].shape[-2]
            return super().forward(x)
        x = expect_tensor(self, x)
        if x.dim() < 2 or x.shape[-1] != self.dim:
            raise ModifyValueError(self, f"expected (*, T, {self.dim}), got {describe(x)}")
        start = self.offset
        self.offset = start + x.shape[-2]
        return self.rotate(x, torch.arange(start, self.offset, device=x.device))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}"


class LastPosition(Leaf, Unary, ParamFree, Linear, Restructure):
    """Keep the last position only: ``x -> x[..., -1:, :]``, a view.

    Placed before a language model's output head while decoding, it computes the logits of the
    one position that is sampled from (nanoGPT's ``logits = self.lm_head(x[:, [-1], :])``).

    Shape:
        ``(*, T, C) -> (*, 1, C)``.

    Raises:
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: fewer than two dimensions.

    Example:
        >>> import torch
        >>> from modify.models import LastPosition
        >>> LastPosition()(torch.arange(6.0).reshape(1, 3, 2)).tolist()
        [[[4.0, 5.0]]]
    """

    def forward(self, x):
        x = expect_tensor(self, x)
        if x.dim() < 2:
            raise ModifyValueError(self, f"expected (*, T, C), got {describe(x)}")
        return x[..., -1:, :]
