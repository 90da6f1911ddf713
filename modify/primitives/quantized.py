"""Linear layers with frozen low-bit weights, stored by torchao: ``QuantizedLinear``.

The weight tensors are torchao's (``NF4Tensor`` for ``"nf4"``, ``Int8Tensor`` for ``"int8"``):
tensor subclasses that ``F.linear`` dispatches on, so ``torch.compile`` and FSDP2 see ordinary
parameters. In eager mode an NF4 weight is dequantized by :func:`nf4_dequantized` (torchao's
values, bit for bit, without its full-size temporaries). torchao is imported on first use (it
takes seconds to import).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._core.checks import expect_last_dim
from .._core.memory import release_freed_memory
from .._core.sibling import sibling
from .linear import Linear

SCHEMES = ("nf4", "int8")
_SCALER_BLOCK = 256  # QLoRA's double quantization: 256 block scales share one float32 scale


def quantized_weight(weight: torch.Tensor, scheme: str, block_size: int, owner: str) -> torch.Tensor:
    """``weight`` ``(out, in)`` as torchao's quantized tensor of ``scheme``, in ``weight``'s dtype.

    ``"nf4"``: 4-bit NormalFloat in blocks of ``block_size`` with double-quantized block scales
    (Dettmers et al. 2023, arXiv:2305.14314; torchao's ``to_nf4``). ``"int8"``: symmetric int8
    with one scale per output row (torchao's ``Int8Tensor.from_hp(..., PerRow())``).

    Raises:
        ValueError: an unknown scheme; with ``"nf4"``, a weight whose size is not a multiple of
            ``block_size``; each message starts with ``owner``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"{owner}: scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    weight = weight.detach()
    with _quiet_import():
        from torchao.quantization import PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4
    if scheme == "int8":
        return Int8Tensor.from_hp(weight, granularity=PerRow())
    if block_size < 1 or weight.numel() % block_size:
        raise ValueError(
            f"{owner}: nf4 quantizes blocks of block_size={block_size} values; a weight of shape "
            f"{tuple(weight.shape)} ({weight.numel()} values) is not a whole number of blocks"
        )
    blocks = weight.numel() // block_size
    scaler_block_size = math.gcd(blocks, _SCALER_BLOCK)
    weight = weight.contiguous()
    if weight.numel() <= QUANTIZED_AT_ONCE:
        quantized = to_nf4(weight, block_size, scaler_block_size)
    else:
        quantized = nf4_in_chunks(weight, block_size, scaler_block_size, QUANTIZED_AT_ONCE)
    release_freed_memory()  # the quantizer's temporaries, which glibc would keep (layer after layer)
    return quantized


# values quantized at once: torchao's to_nf4 holds ~30 bytes of temporaries per value of a run of
# up to 1M values (its nearest-code search), plus full-size copies; a larger weight goes in chunks
QUANTIZED_AT_ONCE = 1 << 18


def nf4_in_chunks(weight: torch.Tensor, block_size: int, scaler_block_size: int, chunk: int = QUANTIZED_AT_ONCE):
    """torchao's ``to_nf4(weight, block_size, scaler_block_size)``, bit for bit, holding temporaries of one chunk.

    ``to_nf4`` makes several full-size temporaries (absolute values, scaled blocks, codes) and
    searches the nearest code of up to 1M values at once (~30 bytes a value); here
    each run of whole blocks of about ``chunk`` values goes through torchao's own steps
    (``get_block_absmax``, ``NF4Tensor.convert_to_norm_float_weight``), and the double quantization
    of the block scales (``NF4Tensor.double_quantize_scalers``) sees the scales of the whole
    tensor, so its shared mean and factors are ``to_nf4``'s (QLoRA, Dettmers et al. 2023).

    Args:
        weight: contiguous float ``(out, in)``, a whole number of ``scaler_block_size`` blocks.
        block_size, scaler_block_size: as ``to_nf4``'s.
        chunk: about how many values are quantized at once (rounded down to whole blocks).

    Returns:
        torchao's ``NF4Tensor``, equal in every packed tensor to ``to_nf4``'s.

    Example:
        >>> import torch
        >>> from modify.primitives.quantized import nf4_in_chunks
        >>> w = torch.randn(64, 128)
        >>> chunked = nf4_in_chunks(w, 64, 128, chunk=1024)
        >>> from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4
        >>> whole = to_nf4(w, 64, 128)
        >>> torch.equal(chunked.quantized_data, whole.quantized_data), torch.equal(chunked.scaler_mean, whole.scaler_mean)
        (True, True)
    """
    with _quiet_import():
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor, SubclassTensorArgs, get_block_absmax

    pair = 2 * block_size  # an even number of values per piece: torchao packs two codes a byte
    flat, step = weight.view(-1), max(chunk // pair, 1) * pair
    pieces = [flat[start : start + step] for start in range(0, flat.numel(), step)]
    first = NF4Tensor.from_tensor(pieces[0], block_size, math.gcd(pieces[0].numel() // block_size, scaler_block_size))
    codes = [first.quantized_data]
    for piece in pieces[1:]:
        codes.append(NF4Tensor.convert_to_norm_float_weight(piece, piece.numel() // block_size, block_size, first.nf4))
    absmax = torch.cat([get_block_absmax(piece, block_size) for piece in pieces])
    # block_size=1 over the block scales gives back those scales: the whole tensor's statistics
    scalers, factor, mean = NF4Tensor.double_quantize_scalers(absmax, 1, scaler_block_size)
    meta = SubclassTensorArgs(
        weight.size(), weight.stride(), weight.storage_offset(), weight.dtype, weight.device, weight.requires_grad
    )
    blocks = weight.numel() // block_size
    return NF4Tensor(meta, block_size, blocks, scaler_block_size, scalers, factor, mean, torch.cat(codes), first.nf4)


# codes (bytes, two values each) dequantized at once: ~5 bytes of temporaries per code, so ~160 KiB
DEQUANTIZED_RUN = 1 << 15


def nf4_dequantized(weight: torch.Tensor, run: int = DEQUANTIZED_RUN) -> torch.Tensor:
    """torchao's ``weight.get_original_weight()``, bit for bit, whose only full-size allocation is the result.

    ``get_original_weight`` holds about 12 bytes of temporaries per value at once (int64 codes, the
    two halves' values and their repeated scales, then their interleaving); freed after every
    call, such blocks of several MiB make glibc raise its mmap threshold and then fragment its heap
    (the resident size of a QLoRA step grew to three times its live memory). Here the result is
    allocated once and filled ``run`` codes at a time: each byte's two NF4 values come from a
    256-row table (``weight.nf4`` at the byte's high and low four bits, torchao's order), and are
    multiplied in place by their block's scale, which torchao's own ``dequantize_scalers`` gives
    for the whole tensor (Dettmers et al. 2023, arXiv:2305.14314). The same products of the same
    values in the weight's dtype, so the result equals torchao's exactly.

    Args:
        weight: torchao's ``NF4Tensor`` (contiguous, an even ``block_size``).
        run: about how many codes are dequantized at once (rounded down to whole blocks).

    Shape:
        ``weight``'s shape, ``(out_features, in_features)``.

    Returns:
        A new tensor in ``weight.dtype``.

    Example:
        >>> import torch
        >>> from modify.primitives.quantized import nf4_dequantized
        >>> from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4
        >>> weight = to_nf4(torch.randn(96, 128), 64, 64)
        >>> torch.equal(nf4_dequantized(weight, run=100), weight.get_original_weight())
        True
    """
    scales = weight.dequantize_scalers(weight.quantized_scalers, weight.quantization_factor, weight.scaler_block_size)
    byte = torch.arange(256, device=weight.device)
    pairs = torch.stack([weight.nf4[byte >> 4], weight.nf4[byte & 0b1111]], dim=-1)  # (256, 2)
    codes, block = weight.quantized_data, weight.block_size
    result = torch.empty(weight.numel(), dtype=weight.dtype, device=weight.device)
    step = max(run // (block // 2), 1) * (block // 2)  # whole blocks of codes
    for start in range(0, codes.numel(), step):
        piece = codes[start : start + step]
        values = result[2 * start : 2 * (start + piece.numel())]
        torch.index_select(pairs, 0, piece.int(), out=values.view(-1, 2))
        first = 2 * start // block
        values.view(-1, block).mul_(scales[first : first + values.numel() // block].unsqueeze(-1))
    return result.view(weight.shape)


class _NF4Linear(torch.autograd.Function):
    """torchao's ``LinearNF4`` (``F.linear`` on an ``NF4Tensor``) dequantizing through :func:`nf4_dequantized`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, nf4_dequantized(weight).to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad @ nf4_dequantized(weight).to(grad.dtype), None


def nf4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for torchao's ``NF4Tensor`` ``weight``, as torchao computes it.

    Eager calls dequantize through :func:`nf4_dequantized` (forward and backward; the weight gets no
    gradient); under ``torch.compile`` torchao's own ``F.linear`` is traced.
    """
    if torch.compiler.is_compiling() or weight.block_size % 2:
        return F.linear(x, weight, bias)
    out = _NF4Linear.apply(x, weight)
    return out + bias if bias is not None else out


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Import torchao without its load-time log lines (CUDA kernels absent on a CPU machine)."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def is_quantized(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is one of torchao's quantized tensors (without importing torchao)."""
    return type(tensor).__module__.startswith("torchao.")


class QuantizedLinear(Linear):
    """A ``Linear`` whose weight is frozen in 4-bit NormalFloat (``"nf4"``) or per-row int8 (``"int8"``).

    Made by :func:`modify.quantize` (or ``from_pretrained(..., quantize="nf4")``) from a
    ``Linear``: a sibling sharing its bias, configuration and training mode, whose ``weight`` is a
    frozen ``nn.Parameter`` holding torchao's quantized tensor (``NF4Tensor``: QLoRA's storage,
    Dettmers et al. 2023, arXiv:2305.14314; ``Int8Tensor``: weight-only int8). The forward is
    ``F.linear(x, weight, bias)`` computed as torchao does, from the dequantized weight in the
    weight's original dtype (the compute dtype); in eager mode an NF4 weight is dequantized by
    :func:`nf4_dequantized` in the forward and again in the backward (only the 4-bit weight is
    kept), equal to torchao's bit for bit. No gradient ever reaches the weight (it is detached),
    while the bias keeps its ``requires_grad``. Being a ``Linear``, it is matched by
    ``where=modify.Linear`` and adapted by :func:`modify.lora` (QLoRA). An NF4 weight of more than
    ``DEQUANTIZED_AT_ONCE`` values (a vocabulary-sized head) is dequantized in row chunks, forward
    and backward, so that its float copy never exists whole.

    Shape:
        ``(*, in_features) -> (*, out_features)``, as :class:`~modify.Linear`.

    Attributes:
        weight: frozen quantized ``(out_features, in_features)``; ``weight.dtype`` is the compute dtype.
        bias: ``(out_features,)`` float, shared with the layer it was made from, or ``None``.
        scheme: ``"nf4"`` or ``"int8"``.
        block_size: values per NF4 block (``64`` by default; unused by ``"int8"``).

    Raises:
        ModifyTypeError: the input is not a floating tensor.
        ModifyValueError: input whose last dimension is not ``in_features``.

    Example:
        >>> import torch, torch.nn.functional as F, modify
        >>> layer = modify.quantize(modify.Linear(64, 32), "nf4")
        >>> type(layer).__name__, layer.scheme, tuple(layer.dequantize().shape)
        ('QuantizedLinear', 'nf4', (32, 64))
        >>> x = torch.randn(4, 64)
        >>> torch.allclose(layer(x), F.linear(x, layer.dequantize(), layer.bias), atol=1e-5)
        True
    """

    scheme: str
    block_size: int
    constant_parameters = ("weight",)  # modify.mutable shares it as is and refuses to assign it
    DEQUANTIZED_AT_ONCE = 1 << 22  # weights; see _row_parts

    @classmethod
    def from_linear(cls, layer: Linear, scheme: str = "nf4", block_size: int = 64, path: str = "") -> QuantizedLinear:
        """A sibling of ``layer`` with its weight quantized (kept as is if already of ``scheme``).

        Raises:
            ValueError: see :func:`quantized_weight`; the message names ``path``.
        """
        owner = f"quantize: the Linear at '{path or '<root>'}'"
        weight = layer.weight
        if not is_quantized(weight):
            weight = quantized_weight(weight, scheme, block_size, owner)
        frozen = nn.Parameter(weight, requires_grad=False)
        new = sibling(layer, cls=cls, parameters={**layer._parameters, "weight": frozen})
        new.scheme, new.block_size = scheme, block_size
        return new

    def __deepcopy__(self, memo: dict) -> QuantizedLinear:
        """A deep copy; the weight's packed tensors are copied as they are (torchao's ``clone`` of an
        ``NF4Tensor`` would quantize its dequantized values again, with default block sizes)."""
        weight = self._parameters["weight"]
        names, context = weight.__tensor_flatten__()
        inner = {name: getattr(weight, name).clone() for name in names}
        copied = type(weight).__tensor_unflatten__(inner, context, weight.shape, weight.stride())
        memo[id(weight)] = nn.Parameter(copied, requires_grad=False)
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def reset_parameters(self) -> None:
        """Refused: a quantized weight is frozen (quantize a freshly initialised ``Linear`` instead)."""
        raise TypeError("QuantizedLinear: the quantized weight is frozen; reset the Linear it was made from")

    def dequantize(self) -> torch.Tensor:
        """The weight as a float tensor ``(out_features, in_features)`` in the compute dtype (a new tensor)."""
        weight = self.weight
        with torch.no_grad():
            return nf4_dequantized(weight) if self.scheme == "nf4" else weight.dequantize(weight.dtype)

    def float_leaf(self) -> Linear:
        """A plain :class:`~modify.Linear` holding :meth:`dequantize` (frozen) and this layer's bias."""
        weight = nn.Parameter(self.dequantize(), requires_grad=False)
        new = sibling(self, cls=Linear, parameters={**self._parameters, "weight": weight})
        del new.scheme, new.block_size
        return new

    def forward(self, x):
        weight = self.weight
        if weight.requires_grad:  # set by hand (``model.requires_grad_()``): still frozen
            weight = weight.detach()
        x = expect_last_dim(self, x, self.in_features)
        if self.scheme != "nf4":
            return F.linear(x, weight, self.bias)
        parts = self._row_parts(weight)
        if parts == 1:
            return nf4_linear(x, weight, self.bias)
        biases = self.bias.chunk(parts) if self.bias is not None else [None] * parts
        return torch.cat([nf4_linear(x, rows, bias) for rows, bias in zip(weight.chunk(parts), biases)], dim=-1)

    def _row_parts(self, weight: torch.Tensor) -> int:
        """In how many equal row chunks the forward dequantizes an NF4 weight (1: whole).

        A large layer's float copy (a vocabulary-sized head: 62 MiB in bf16 at 32000 x 1024) is
        made in the forward and backward in chunks of at most ``DEQUANTIZED_AT_ONCE`` weights, each
        a whole number of torchao's scale blocks.
        """
        if self.scheme != "nf4" or weight.numel() <= self.DEQUANTIZED_AT_ONCE:
            return 1
        common = math.gcd(weight.shape[0], weight.quantized_scalers.numel(), weight.quantization_factor.numel())
        wanted = math.ceil(weight.numel() / self.DEQUANTIZED_AT_ONCE)
        return next((parts for parts in range(wanted, common + 1) if common % parts == 0), 1)

    def extra_repr(self) -> str:
        block = f", block_size={self.block_size}" if self.scheme == "nf4" else ""
        return f"{super().extra_repr()}, scheme={self.scheme}{block}"
