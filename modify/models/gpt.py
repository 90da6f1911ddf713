"""GPT-2 (nanoGPT's ``GPT``) built from leaves, ``Sequential`` and ``Parallel`` alone.

Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"; the layout and
config follow Karpathy's nanoGPT ``model.py``, the weights Hugging Face's ``GPT2LMHeadModel``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Normal

from .._core.arguments import check_fields, check_positive, typechecked
from ..combinators import Parallel, Sequential
from ..primitives import GELU, Dropout, Embedding, Identity, Index, Linear, Rearrange, ScaledDotProductAttention, Split
from ..checkpoints.loading import Family, KeyFormat, hf_value, require
from ..checkpoints.pretrained import Pretrained
from .building import carried_residual, layer_norm
from .padding import CarryAdd, Pick, TokenInput


@dataclass
class GPTConfig:
    """Hyperparameters of :class:`GPT`, with nanoGPT's field names and defaults (GPT-2 small).

    Args:
        block_size: the longest sequence, i.e. the number of learned positions (1024).
        vocab_size: tokens in the vocabulary (50304: GPT-2's 50257 padded to a multiple of 64).
        n_layer: transformer blocks (12).
        n_head: attention heads per block (12).
        n_embd: width of the residual stream; a multiple of ``n_head`` (768).
        dropout: dropout probability on embeddings, attention weights and residual branches (0.0).
        bias: biases in the linear layers and layer norms, as GPT-2 (``True``).

    Raises:
        TypeError: a field of the wrong type.
        ValueError: a non-positive size, ``n_embd`` not a multiple of ``n_head``, or
            ``dropout`` outside ``[0, 1)``.

    Example:
        >>> from modify.models import GPTConfig
        >>> GPTConfig(n_layer=2, n_head=2, n_embd=32).n_embd // 2
        16
    """

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        check_positive(self, "block_size", "vocab_size", "n_layer", "n_head", "n_embd")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if isinstance(self.dropout, _UnequalDropouts):
            found = ", ".join(f"{name}={value:g}" for name, value in self.dropout.found.items())
            raise ValueError(
                f"GPTConfig: config.json's {found} differ, and GPT has one dropout for all three: pass dropout= "
                f"explicitly, e.g. GPT.from_pretrained(folder, dropout={self.dropout.found['resid_pdrop']:g})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")


class GPT(Pretrained, Sequential):
    """GPT-2: token ids to next-token logits, a tree of leaves (nanoGPT's ``GPT``).

    Learned token and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal
    self-attention, then a GELU(tanh) MLP, each inside a residual connection), a final
    LayerNorm and an output head tied to the token embedding: ``lm_head.weight`` *is*
    ``transformer.embed.lookup.wte.weight`` (one ``Parameter``; ``named_parameters()`` lists it
    once, ``state_dict()`` under both names). A ``Sequential`` subclass that only names the
    tree and keeps its :class:`GPTConfig` as ``config``. The blocks' stream is ``(x, mask)``: a
    padded batch's attention mask travels beside the hidden states (see
    :class:`~modify.models.TokenInput`)::

        transformer.embed     tokens (TokenInput: ids or (ids, mask) -> (ids, positions, mask))
                              -> lookup (Parallel: wte, wpe = Embedding, mask) -> add (CarryAdd) -> dropout
        transformer.h.<i>     attn, then mlp, each (x, mask) -> (x + branch(x), mask):
          attn.1.1            ln_1 -> c_attn -> split (Split): q, k, v -> heads (Parallel of Rearranges)
          attn.3.1            attend (SDPA, causal, on (q, k, v, mask)) -> merge (Rearrange) -> c_proj -> dropout
          mlp.1.1             ln_2 -> c_fc -> gelu -> c_proj -> dropout
        transformer.hidden    Index(0): the hidden states alone
        transformer.ln_f      LayerNorm -> ElementwiseAffine
        lm_head               Linear(n_embd, vocab_size, bias=False), weight tied to wte

    (``attn.0``/``attn.2`` are :class:`~modify.models.Pick` leaves routing the stream,
    ``attn.4`` a :class:`~modify.models.CarryAdd`), so the query projection of block 0 is
    ``transformer.h.0.attn.1.1.c_attn`` and every Hugging Face key maps to one of ours
    (``transformer.h.0.ln_1.weight`` is ``transformer.h.0.attn.1.1.ln_1.affine.weight``,
    ``transformer.h.0.attn.c_proj.weight`` is ``transformer.h.0.attn.3.1.c_proj.weight``).

    :meth:`from_pretrained` reads Hugging Face's ``GPT2LMHeadModel`` (``model_type`` ``gpt2``)
    or a bare ``GPT2Model`` (keys without the ``transformer.`` prefix); ``Conv1D`` weights,
    stored ``(in, out)``, are transposed. Config overrides are :class:`GPTConfig` fields
    (``dropout`` from the folder's ``resid_pdrop``, ``embd_pdrop`` and ``attn_pdrop`` when they agree,
    as transformers trains; when they differ, pass ``dropout=``; ``bias`` ``True``); a ``config.json`` with cross
    attention, another activation or ``n_inner`` other than ``4 n_embd`` is refused.

    Args:
        config: the hyperparameters.

    Shape:
        ``(B, T)`` int64 token ids, ``T <= block_size``, or ``(ids, attention_mask)`` with a
        ``(B, T)`` bool or integer mask (1: token, 0: padding, left or right) ->
        ``(B, T, vocab_size)`` logits; with a mask, those at tokens equal transformers'
        ``model(ids, attention_mask=mask, position_ids=(cumsum(mask) - 1).clamp(min=0))``.

    Attributes:
        config: the :class:`GPTConfig`. Initialisation as nanoGPT: linear and embedding
            weights ``N(0, 0.02)``, the residual projections (``c_proj``) ``N(0, 0.02 / sqrt(2 n_layer))``,
            biases zero, layer norms one/zero.

    Raises:
        ModifyValueError: (at call) ids that are not ``(B, T)``, ``T > block_size``, or a mask of
            another shape, naming ``transformer.embed.tokens`` and what arrived.
        ModifyTypeError: (at call) ids that are not integers, a float mask.

    Example:
        >>> import torch
        >>> from modify.models import GPT, GPTConfig
        >>> gpt = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32))
        >>> gpt(torch.randint(0, 50, (3, 10))).shape
        torch.Size([3, 10, 50])
        >>> gpt.lm_head.weight is gpt.transformer.embed.lookup.wte.weight
        True
        >>> ids, mask = torch.randint(0, 50, (2, 6)), torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
        >>> torch.allclose(gpt((ids, mask))[0, 2:], gpt(ids[:1, 2:])[0], atol=1e-5)  # a left-padded row
        True
    """

    @typechecked
    def __init__(self, config: GPTConfig):
        wte = Embedding(config.vocab_size, config.n_embd, weight_init=_normal(0.02))
        lm_head = Linear(config.n_embd, config.vocab_size, bias=False, weight_init=_normal(0.02), device="meta")
        lm_head.weight = wte.weight
        transformer = Sequential(
            embed=_embeddings(config, wte),  # (x, mask)
            h=Sequential(*(_block(config) for _ in range(config.n_layer))),  # (x, mask)
            hidden=Index(0),  # (B, T, C)
            ln_f=layer_norm(config.n_embd, config.bias),
        )
        super().__init__(transformer=transformer, lm_head=lm_head)
        self.config = config
        HF_KEYS.name_modules(self)  # reference names: transformers' layer names

    def reference_config(self) -> dict[str, Any]:
        """``GPT2Config``'s ``config.json`` fields for this model (see ``save_pretrained``)."""
        config = self.config
        if not config.bias:
            raise ValueError("GPT.save_pretrained: GPT-2's layout has biases everywhere; this GPT has bias=False")
        token = 50256 if config.vocab_size > 50256 else None
        return dict(
            model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=config.vocab_size,
            n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
            n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=config.dropout,
            embd_pdrop=config.dropout, attn_pdrop=config.dropout, initializer_range=0.02, scale_attn_weights=True,
            tie_word_embeddings=True, bos_token_id=token, eos_token_id=token,
        )


def _normal(std: float) -> Normal:
    return Normal(0.0, std, validate_args=False)  # no check: it would read values, impossible on the meta device


def _linear(config: GPTConfig, n_in: int, n_out: int, std: float = 0.02) -> Linear:
    return Linear(n_in, n_out, bias=config.bias, weight_init=_normal(std), bias_init=nn.init.zeros_)


def _embeddings(config: GPTConfig, wte: Embedding) -> Sequential:
    """``ids`` or ``(ids, mask)`` -> ``((B, T, C) token plus position embeddings, mask)`` (``embed``)."""
    wpe = Embedding(config.block_size, config.n_embd, weight_init=_normal(0.02))
    return Sequential(
        tokens=TokenInput(limit=config.block_size),  # (ids, positions, mask)
        lookup=Parallel(wte=wte, wpe=wpe, mask=Identity()),  # (B, T, C), (B, T, C), mask
        add=CarryAdd(),  # (B, T, C), mask
        dropout=Parallel(Dropout(config.dropout), Identity()),
    )


def _block(config: GPTConfig) -> Sequential:
    """One pre-LayerNorm block on ``(x, mask)``: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""
    C, H, p = config.n_embd, config.n_head, config.dropout
    projection_std = 0.02 / math.sqrt(2 * config.n_layer)
    qkv = Sequential(
        ln_1=layer_norm(C, config.bias),
        c_attn=_linear(config, C, 3 * C),  # (B, T, 3C)
        split=Split(C, dim=-1),  # q, k, v: (B, T, C)
        heads=Parallel(*(Rearrange("b t (h d) -> b h t d", h=H) for _ in "qkv")),  # (B, H, T, C/H) each
    )
    out = Sequential(
        attend=ScaledDotProductAttention(causal=True, dropout=p),  # (q, k, v, mask) -> (B, H, T, C/H)
        merge=Rearrange("b h t d -> b t (h d)"),  # (B, T, C)
        c_proj=_linear(config, C, C, projection_std),
        dropout=Dropout(p),
    )
    attn = Sequential(
        Pick(0, 0, 1),  # (x, x, mask)
        Parallel(Identity(), qkv, Identity()),  # (x, (q, k, v), mask)
        Pick(0, ("1.0", "1.1", "1.2", 2), 2),  # (x, (q, k, v, mask), mask)
        Parallel(Identity(), out, Identity()),  # (x, y, mask)
        CarryAdd(),  # (x + y, mask)
    )
    mlp = Sequential(
        ln_2=layer_norm(C, config.bias),
        c_fc=_linear(config, C, 4 * C),
        gelu=GELU("tanh"),
        c_proj=_linear(config, 4 * C, C, projection_std),
        dropout=Dropout(p),
    )
    return Sequential(attn=attn, mlp=carried_residual(mlp, carried=1))


def _transpose_conv1d(key: str, value: torch.Tensor) -> torch.Tensor:
    """GPT-2's ``Conv1D`` stores ``(in, out)``; our ``Linear`` holds ``(out, in)``."""
    if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
        return value.t()
    return value


# Our state_dict keys -> Hugging Face GPT2LMHeadModel's.
HF_KEYS = KeyFormat(
    rules=(
        (r"transformer\.embed\.lookup\.wte\.weight", "transformer.wte.weight"),
        (r"transformer\.embed\.lookup\.wpe\.weight", "transformer.wpe.weight"),
        (r"transformer\.h\.(\d+)\.attn\.1\.1\.ln_1\.affine\.(\w+)", r"transformer.h.\1.ln_1.\2"),
        (r"transformer\.h\.(\d+)\.mlp\.1\.1\.ln_2\.affine\.(\w+)", r"transformer.h.\1.ln_2.\2"),
        (r"transformer\.h\.(\d+)\.(attn|mlp)\.[13]\.1\.(\w+)\.(\w+)", r"transformer.h.\1.\2.\3.\4"),
        (r"transformer\.ln_f\.affine\.(\w+)", r"transformer.ln_f.\1"),
        (r"lm_head\.weight", "lm_head.weight"),
    ),
    base_prefix="transformer",
    transform=_transpose_conv1d,
    ignore=("transformer.h.*.attn.bias", "transformer.h.*.attn.masked_bias"),
    fan_in_fan_out=True,
)


def _config_from_hf(hf: dict[str, Any], owner: str) -> dict[str, Any]:
    """``GPTConfig`` fields from a ``GPT2Config`` ``config.json``; refuses options not implemented."""
    n_embd = hf_value(hf, "n_embd", 768)
    n_inner = hf_value(hf, "n_inner", 4 * n_embd)
    require(n_inner == 4 * n_embd, owner, f"n_inner must be 4 * n_embd, got {n_inner}")
    activation = hf_value(hf, "activation_function", "gelu_new")
    tanh_gelu = activation in ("gelu_new", "gelu_pytorch_tanh")
    require(tanh_gelu, owner, f"activation_function {activation!r} is not supported (only tanh GELU)")
    require(hf_value(hf, "layer_norm_epsilon", 1e-5) == 1e-5, owner, "layer_norm_epsilon must be 1e-5")
    require(hf_value(hf, "scale_attn_weights", True), owner, "scale_attn_weights=False is not supported")
    inverse_layer_scale = hf_value(hf, "scale_attn_by_inverse_layer_idx", False)
    require(not inverse_layer_scale, owner, "scale_attn_by_inverse_layer_idx is not supported")
    require(not hf_value(hf, "add_cross_attention", False), owner, "cross attention is not supported")
    return dict(
        block_size=hf_value(hf, "n_positions", 1024),
        vocab_size=hf_value(hf, "vocab_size", 50257),
        n_layer=hf_value(hf, "n_layer", 12),
        n_head=hf_value(hf, "n_head", 12),
        n_embd=n_embd,
        dropout=_dropout_from_hf(hf),
        bias=True,
    )


_PDROPS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


class _UnequalDropouts(float):
    """``config.json``'s three dropouts when they differ: ``GPTConfig`` refuses it unless ``dropout=`` replaces it."""

    def __new__(cls, found: dict[str, float]) -> _UnequalDropouts:
        value = super().__new__(cls, max(found.values()))
        value.found = found
        return value


def _dropout_from_hf(hf: dict[str, Any]) -> float:
    """GPT's one ``dropout``: ``GPT2Config``'s ``resid_pdrop``, ``embd_pdrop``, ``attn_pdrop`` (0.1 each by default)."""
    found = {name: float(hf_value(hf, name, 0.1)) for name in _PDROPS}
    return found["resid_pdrop"] if len(set(found.values())) == 1 else _UnequalDropouts(found)


FAMILY = Family(GPTConfig, HF_KEYS, ("gpt2",), _config_from_hf)
GPT.family = FAMILY
