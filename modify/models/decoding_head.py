"""The output head of a decoding sibling: the vocabulary product in the layout that is fast for few rows."""

from __future__ import annotations

import torch
from torch import nn

from .._core.checks import expect_last_dim
from .._core.sibling import sibling
from ..primitives import Linear

# A one-row head repays its transposed copy after about 18 steps at width 256 and 64 at width 768
# (docs/benchmarks.md, section 8: the product gains about 4 ms a step at either width, the copy
# grows with the width); copying from ``in_features / 8`` new tokens on (32 and 96) leaves a margin.
TOKENS_PER_WIDTH = 1 / 8


class DecodingHead(Linear):
    """A :class:`~modify.Linear` output head computed in the layout that is fast for a few rows.

    While decoding, the output head multiplies one row per sequence by a wide weight (GPT-2's
    ``(50257, C)``). ``F.linear(x, W)`` hands BLAS the weight transposed, a layout for which
    MKL's single-thread CPU kernels are up to 2-3x slower than for a plain one (measured in
    docs/benchmarks.md, section 8). So this head computes ``y = (W x^T)^T + b`` (the weight as
    the left, untransposed operand: no copy), and, for a single row where that is still slow,
    ``y = x W_t + b`` with ``W_t`` a contiguous ``(in_features, out_features)`` copy of the
    weight (GPT-2's ``Conv1D`` layout, Radford et al. 2019), made once by :meth:`of`. The
    results equal ``torch.nn.Linear``'s up to float rounding (another summation order), so
    greedy tokens may differ only where two logits tie to the last bits.

    :func:`~modify.models.generate` makes one for a plain float32 CPU head and drops it when it
    returns; the weight ``Parameter`` (and bias) is the head's own object, the copy a
    non-persistent buffer (not in ``state_dict``).

    Args:
        in_features, out_features, bias, weight_init, bias_init, device, dtype: as
            :class:`~modify.Linear` (no copy; see :meth:`of`).

    Shape:
        ``(*, in_features) -> (*, out_features)``, e.g. ``(B, 1, C) -> (B, 1, vocab)``; the
        output is a transposed view (``(W x^T)^T``), not contiguous for two rows or more.

    Attributes:
        weight: ``(out_features, in_features)``, shared with the head it was made of.
        bias: ``(out_features,)`` or ``None``, likewise.
        weight_t: ``(in_features, out_features)`` contiguous copy of ``weight``, or ``None``.

    Raises:
        TypeError, ValueError: a bad constructor argument, as :class:`~modify.Linear`.
        ModifyTypeError: (at call) the input is not a floating-point tensor.
        ModifyValueError: (at call) input whose last dimension is not ``in_features``.

    Example:
        >>> import torch, modify
        >>> from modify.models import DecodingHead
        >>> head = modify.Linear(16, 100)
        >>> fast = DecodingHead.of(head, transposed_copy=True)
        >>> fast.weight is head.weight, fast.weight_t.shape, "weight_t" in fast.state_dict()
        (True, torch.Size([16, 100]), False)
        >>> x = torch.randn(3, 1, 16)
        >>> torch.allclose(fast(x), head(x), atol=1e-6), torch.allclose(fast(x[:1]), head(x[:1]), atol=1e-6)
        (True, True)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_t", None, persistent=False)

    @classmethod
    def of(cls, head: Linear, *, transposed_copy: bool) -> DecodingHead:
        """A sibling of ``head`` of this class: its ``weight`` and ``bias`` objects, no ``__init__`` run.

        Args:
            head: the ``Linear`` head to share.
            transposed_copy: also make ``weight_t``, a contiguous ``(in_features, out_features)``
                copy of the weight (detached: gradients do not reach ``weight`` through it).

        Returns:
            The ``DecodingHead``; ``head`` is left unchanged.
        """
        copy = head.weight.detach().t().contiguous() if transposed_copy else None
        fast = sibling(head, cls=cls, buffers={**head._buffers, "weight_t": copy})
        fast._non_persistent_buffers_set.add("weight_t")
        return fast

    def forward(self, x):
        x = expect_last_dim(self, x, self.in_features)
        rows = x.reshape(-1, self.in_features)  # (N, C)
        if rows.shape[0] == 1 and self.weight_t is not None:
            y = rows @ self.weight_t if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        else:
            y = self.weight @ rows.t() if self.bias is None else torch.addmm(self.bias[:, None], self.weight, rows.t())
            y = y.t()  # (V, N) -> (N, V)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, transposed_copy={self.weight_t is not None}"


def decoding_head(head: nn.Module, rows: int, new_tokens: int) -> nn.Module:
    """``head`` as a :class:`DecodingHead` where that pays, else ``head`` itself.

    It pays for a plain float32 :class:`~modify.Linear` on the CPU (the layouts were measured
    there, with MKL; in bfloat16 they turn round). A quantized, LoRA-wrapped, transposed or other
    head is left as it is. The transposed copy is made for one row (``rows == 1``) and at least
    ``in_features / 8`` new tokens.

    Args:
        head: the model's output head.
        rows: the rows it multiplies a step (the batch, as ``LastPosition`` precedes it).
        new_tokens: the steps it will serve.

    Returns:
        A :class:`DecodingHead` sibling of ``head``, or ``head``.

    Example:
        >>> import modify
        >>> from modify.models.decoding_head import decoding_head
        >>> head = modify.Linear(64, 1000, bias=False)
        >>> decoding_head(head, rows=1, new_tokens=100).weight_t.shape, decoding_head(head, 8, 100).weight_t
        (torch.Size([64, 1000]), None)
    """
    if type(head) is not Linear or head.weight.dtype != torch.float32 or head.weight.device.type != "cpu":
        return head
    return DecodingHead.of(head, transposed_copy=rows == 1 and new_tokens >= head.in_features * TOKENS_PER_WIDTH)
