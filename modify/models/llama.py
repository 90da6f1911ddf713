"""Llama (1, 2 and 3) built from leaves, ``Sequential`` and ``Parallel`` alone.

Touvron et al. 2023, "LLaMA" and "Llama 2"; Grattafiori et al. 2024, "The Llama 3 Herd of
Models". Config field names, layout and weights follow Hugging Face's ``LlamaForCausalLM``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.distributions import Normal

from .._core.arguments import check_fields, check_positive, typechecked
from ..combinators import Parallel, Sequential
from ..primitives import (
    Copy,
    Embedding,
    Identity,
    Index,
    Linear,
    Mul,
    Rearrange,
    RotaryEmbedding,
    ScaledDotProductAttention,
    SiLU,
)
from ..primitives.attention import check_rope_scaling
from ..checkpoints.loading import Family, KeyFormat, hf_value, require
from ..checkpoints.pretrained import Pretrained
from .building import carried_residual, rms_norm
from .padding import CarryAdd, Pick, TokenInput

# model_type -> the transformers class of that family, all read by Llama.from_pretrained.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

@dataclass
class LlamaConfig:
    """Hyperparameters of :class:`Llama`, with Hugging Face's ``LlamaConfig`` field names and defaults.

    Args:
        vocab_size: tokens in the vocabulary (32000).
        hidden_size: width of the residual stream (4096).
        intermediate_size: width of the SwiGLU MLP (11008).
        num_hidden_layers: decoder layers (32).
        num_attention_heads: query heads (32).
        num_key_value_heads: key/value heads for grouped-query attention; ``None`` means
            ``num_attention_heads`` (multi-head attention). Must divide ``num_attention_heads``.
        rms_norm_eps: epsilon of the RMS norms (1e-6).
        rope_theta: base of the rotary frequencies (10000.0; Llama 3 uses 500000.0).
        rope_scaling: ``None``, ``{"rope_type": "llama3", "factor": ..., "low_freq_factor": ...,
            "high_freq_factor": ..., "original_max_position_embeddings": ...}`` (Llama 3.1+) or
            ``{"rope_type": "linear", "factor": ...}`` (positions divided by ``factor``).
        max_position_embeddings: the context length trained for (2048); :func:`generate` crops to it.
        tie_word_embeddings: share one ``Parameter`` between ``embed_tokens`` and ``lm_head`` (``False``).
        attention_bias: biases in the q/k/v/o projections (``False``).
        mlp_bias: biases in the MLP projections (``False``).
        head_dim: size of each head; ``None`` means ``hidden_size // num_attention_heads``.
        attention_dropout: dropout on attention weights in training (0.0).
        initializer_range: standard deviation of the normal init of weights (0.02).
        model_type: the family, as in ``config.json``: ``"llama"``, ``"mistral"`` (the same
            layers) or ``"qwen2"`` (q/k/v projections always with biases, o_proj without).

    ``num_key_value_heads`` and ``head_dim`` are filled in after construction when ``None``.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: non-positive sizes (head_dim 0 included), non-finite epsilon or theta; heads
            not a multiple of key/value heads; an unsupported or incomplete ``rope_scaling``, or
            one with non-numeric, non-positive factors.

    Example:
        >>> from modify.models import LlamaConfig
        >>> config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
        >>> config.head_dim, config.num_key_value_heads
        (16, 2)
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    head_dim: int | None = None
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    model_type: str = "llama"

    def __post_init__(self) -> None:
        check_fields(self)
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        check_positive(self, *sizes, "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta")
        check_positive(self, "max_position_embeddings", "initializer_range")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim < 1:
            raise ValueError(
                f"LlamaConfig: hidden_size ({self.hidden_size}) gives head_dim 0 with {self.num_attention_heads} heads"
            )
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"LlamaConfig: {name} must be a finite positive number, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"LlamaConfig: attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"LlamaConfig: model_type must be one of {list(ARCHITECTURES)}, got {self.model_type!r}")
        check_rope_scaling("LlamaConfig", self.rope_scaling)


class Llama(Pretrained, Sequential):
    """Llama: token ids to next-token logits, a tree of leaves (Hugging Face's ``LlamaForCausalLM``).

    Token embedding, ``num_hidden_layers`` pre-norm decoder layers (RMSNorm; grouped-query
    causal attention with rotary embeddings on queries and keys; SwiGLU MLP; each inside a residual
    connection), a final RMSNorm and an output head, untied or tied to the
    embedding (``tie_word_embeddings``: one ``Parameter`` under two ``state_dict`` keys).
    RMSNorm is ``RMSNorm`` followed by ``ElementwiseAffine(bias=False)``. A ``Sequential``
    subclass that only names the tree and keeps its :class:`LlamaConfig` as ``config``. The
    layers' stream is ``(x, positions, mask)``: a padded batch's positions and attention mask
    travel beside the hidden states (see :class:`~modify.models.TokenInput`)::

        model.tokens               TokenInput: ids or (ids, mask) -> (ids, positions, mask)
        model.embed                Parallel: embed_tokens (Embedding), positions, mask
        model.layers.<i>           self_attn, then mlp, each (x, ...) -> (x + branch(x), ...):
          self_attn.1.1            input_layernorm -> copy (Copy(3)) -> proj (Parallel: q_proj, k_proj, v_proj)
          self_attn.3.1            heads (Parallel: q, k = (Rearrange, positions) -> RotaryEmbedding; v; mask)
                                   -> attend (SDPA, causal, kv heads repeated) -> merge (Rearrange) -> o_proj
          mlp.1.1                  post_attention_layernorm -> copy (Copy(2))
                                   -> proj (Parallel: gate_proj, up_proj) -> act (Parallel: SiLU, Identity)
                                   -> mul (Mul) -> down_proj
        model.hidden               Index(0): the hidden states alone
        model.norm                 RMSNorm -> ElementwiseAffine
        lm_head                    Linear(hidden_size, vocab_size, bias=False)

    Hugging Face's ``model.layers.0.self_attn.q_proj.weight`` is our
    ``model.layers.0.self_attn.1.1.proj.q_proj.weight``, its ``model.embed_tokens.weight`` our
    ``model.embed.embed_tokens.weight``.

    :meth:`from_pretrained` reads Hugging Face's Llama-architecture weights (Llama 1-3.2,
    Mistral, Qwen2): ``LlamaForCausalLM``, ``MistralForCausalLM`` (``model_type`` ``mistral``)
    and ``Qwen2ForCausalLM`` (``qwen2``: q/k/v biases). Config overrides are
    :class:`LlamaConfig` fields; ``rope_theta`` is read from ``rope_theta`` or
    ``rope_parameters`` (transformers 5), ``rope_scaling`` from ``rope_scaling`` or
    ``rope_parameters``. Refused (``CheckpointError``): ``hidden_act`` other than ``silu``,
    partial rotary embeddings, rope scaling other than ``llama3``/``linear``, a sliding window
    shorter than ``max_position_embeddings`` (never ignored).

    Args:
        config: the hyperparameters.

    Shape:
        ``(B, T)`` int64 token ids, or ``(ids, attention_mask)`` with a ``(B, T)`` bool or integer
        mask (1: token, 0: padding, left or right) -> ``(B, T, vocab_size)`` logits; with a
        mask, those at tokens equal transformers' with the same mask and
        ``position_ids=(cumsum(mask) - 1).clamp(min=0)``.

    Attributes:
        config: the :class:`LlamaConfig`. Initialisation as transformers: weights
            ``N(0, initializer_range)``, biases zero, norm weights one.

    Raises:
        ModifyValueError: (at call) ids that are not ``(B, T)`` or a mask of another shape,
            naming ``model.tokens`` and what arrived.
        ModifyTypeError: (at call) ids that are not integers, a float mask.

    Example:
        >>> import torch
        >>> from modify.models import Llama, LlamaConfig
        >>> config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
        ...                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        >>> Llama(config)(torch.randint(0, 50, (2, 7))).shape
        torch.Size([2, 7, 50])

        Loading the reference's own folder:

        >>> import tempfile, transformers  # transformers only to write a checkpoint here
        >>> hf_config = transformers.LlamaConfig(
        ...     vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...     num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True)
        >>> reference = transformers.LlamaForCausalLM(hf_config).eval()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     reference.save_pretrained(folder)
        ...     llama = Llama.from_pretrained(folder)
        >>> ids = torch.randint(0, 100, (2, 16))
        >>> torch.allclose(llama(ids), reference(ids).logits, atol=1e-5)
        True
    """

    @typechecked
    def __init__(self, config: LlamaConfig):
        init = _normal(config)
        embed_tokens = Embedding(config.vocab_size, config.hidden_size, weight_init=init)
        tied = config.tie_word_embeddings
        device = "meta" if tied else None  # a tied head's own weight is replaced at once: skip allocating it
        lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, weight_init=init, device=device)
        if tied:
            lm_head.weight = embed_tokens.weight
        model = Sequential(
            tokens=TokenInput(),  # (ids, positions, mask)
            embed=Parallel(embed_tokens=embed_tokens, positions=Identity(), mask=Identity()),  # (x, positions, mask)
            layers=Sequential(*(_decoder_layer(config) for _ in range(config.num_hidden_layers))),
            hidden=Index(0),  # (B, T, D)
            norm=rms_norm(config.hidden_size, config.rms_norm_eps),
        )
        super().__init__(model=model, lm_head=lm_head)
        HF_KEYS.name_modules(self)  # reference names: transformers' layer names
        self.config = config

    def reference_config(self) -> dict[str, Any]:
        """The ``config.json`` fields of this model's transformers class (see ``save_pretrained``)."""
        config = self.config
        rope = {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta}
        fields = dict(
            model_type=config.model_type, architectures=[ARCHITECTURES[config.model_type]],
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act="silu",
            max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
            rope_parameters=rope, rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings,
            attention_dropout=config.attention_dropout, initializer_range=config.initializer_range,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
        if config.model_type == "llama":
            return {**fields, "attention_bias": config.attention_bias, "mlp_bias": config.mlp_bias}
        if config.attention_bias or config.mlp_bias:
            raise ValueError(f"Llama.save_pretrained: {config.model_type} has no attention_bias/mlp_bias option")
        return {**fields, "sliding_window": None, "use_sliding_window": False}


def _linear(config: LlamaConfig, n_in: int, n_out: int, bias: bool) -> Linear:
    return Linear(n_in, n_out, bias=bias, weight_init=_normal(config), bias_init=nn.init.zeros_)


def _normal(config: LlamaConfig) -> Normal:
    return Normal(0.0, config.initializer_range, validate_args=False)  # checking reads values: not on meta


def _decoder_layer(config: LlamaConfig) -> Sequential:
    """On ``(x, positions, mask)``: ``x + self_attn(input_layernorm(x))``, then
    ``x + mlp(post_attention_layernorm(x))``."""
    D, I, hd = config.hidden_size, config.intermediate_size, config.head_dim
    H, KV = config.num_attention_heads, config.num_key_value_heads
    qkv_bias, mlp_bias = config.attention_bias or config.model_type == "qwen2", config.mlp_bias
    qkv = Sequential(
        input_layernorm=rms_norm(D, config.rms_norm_eps),
        copy=Copy(3),
        proj=Parallel(  # (B, T, H*hd), (B, T, KV*hd), (B, T, KV*hd)
            q_proj=_linear(config, D, H * hd, qkv_bias),
            k_proj=_linear(config, D, KV * hd, qkv_bias),
            v_proj=_linear(config, D, KV * hd, qkv_bias),
        ),
    )
    out = Sequential(
        heads=Parallel(  # ((q, positions), (k, positions), v, mask) -> (B, H, T, hd), (B, KV, T, hd) x 2, mask
            q=_rotary_heads(config), k=_rotary_heads(config), v=Rearrange("b t (h d) -> b h t d", d=hd), mask=Identity()
        ),
        attend=ScaledDotProductAttention(causal=True, dropout=config.attention_dropout),  # (B, H, T, hd)
        merge=Rearrange("b h t d -> b t (h d)"),  # (B, T, H*hd)
        o_proj=_linear(config, H * hd, D, config.attention_bias),
    )
    self_attn = Sequential(
        Pick(0, 0, 1, 2),  # (x, x, positions, mask)
        Parallel(Identity(), qkv, Identity(), Identity()),  # (x, (q, k, v), positions, mask)
        Pick(0, (("1.0", 2), ("1.1", 2), "1.2", 3), 2, 3),  # (x, ((q, positions), (k, positions), v, mask), ...)
        Parallel(Identity(), out, Identity(), Identity()),  # (x, y, positions, mask)
        CarryAdd(),  # (x + y, positions, mask)
    )
    mlp = Sequential(
        post_attention_layernorm=rms_norm(D, config.rms_norm_eps),
        copy=Copy(2),
        proj=Parallel(gate_proj=_linear(config, D, I, mlp_bias), up_proj=_linear(config, D, I, mlp_bias)),
        act=Parallel(gate=SiLU(), up=Identity()),
        mul=Mul(),  # SwiGLU: silu(gate) * up
        down_proj=_linear(config, I, D, mlp_bias),
    )
    return Sequential(self_attn=self_attn, mlp=carried_residual(mlp, carried=2))


def _rotary_heads(config: LlamaConfig) -> Sequential:
    """``((B, T, n*hd), (B, T) positions) -> (B, n, T, hd)``, each head rotated by position."""
    rope = RotaryEmbedding(config.head_dim, base=config.rope_theta, scaling=config.rope_scaling)
    return Sequential(split=Parallel(Rearrange("b t (h d) -> b h t d", d=config.head_dim), Identity()), rope=rope)


# Our state_dict keys -> Hugging Face LlamaForCausalLM's.
HF_KEYS = KeyFormat(
    rules=(
        (r"model\.embed\.embed_tokens\.weight", "model.embed_tokens.weight"),
        (
            r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.1\.1\.(\w+_layernorm)\.affine\.weight",
            r"model.layers.\1.\2.weight",
        ),
        (r"model\.layers\.(\d+)\.(self_attn|mlp)\.1\.1\.proj\.(\w+)\.(\w+)", r"model.layers.\1.\2.\3.\4"),
        (r"model\.layers\.(\d+)\.self_attn\.3\.1\.(o_proj)\.(\w+)", r"model.layers.\1.self_attn.\2.\3"),
        (r"model\.layers\.(\d+)\.mlp\.1\.1\.(down_proj)\.(\w+)", r"model.layers.\1.mlp.\2.\3"),
        (r"model\.norm\.affine\.weight", "model.norm.weight"),
        (r"lm_head\.weight", "lm_head.weight"),
    ),
    base_prefix="model",
    ignore=("model.layers.*.self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"),
)


def _config_from_hf(hf: dict[str, Any], owner: str) -> dict[str, Any]:
    """``LlamaConfig`` fields from a Hugging Face ``config.json`` (transformers 4 or 5 layout)."""
    model_type = hf.get("model_type", "llama")
    activation = hf_value(hf, "hidden_act", "silu")
    require(activation == "silu", owner, f"hidden_act {activation!r} is not supported (only 'silu')")
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}  # 4.x, 5.x layouts
    require(rope.get("partial_rotary_factor", 1.0) == 1.0, owner, "partial rotary embeddings are not supported")
    theta_in_rope = rope.pop("rope_theta", None)
    theta = hf.get("rope_theta") or theta_in_rope or 10000.0
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    names += ("num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")
    names += ("attention_bias", "mlp_bias", "head_dim", "attention_dropout", "initializer_range")
    defaults = LlamaConfig.__dataclass_fields__
    fields = {name: hf_value(hf, name, defaults[name].default) for name in names}
    _refuse_sliding_window(hf, model_type, fields["max_position_embeddings"], owner)
    return {**fields, "rope_theta": float(theta), "rope_scaling": scaling, "model_type": model_type}


def _refuse_sliding_window(hf: dict[str, Any], model_type: str, context: int, owner: str) -> None:
    """Mistral/Qwen2 sliding-window attention differs from causal attention once ``T > window``: refuse it."""
    window = hf.get("sliding_window")
    in_use = model_type == "mistral" or hf.get("use_sliding_window") or "sliding_attention" in (
        hf.get("layer_types") or ()
    )
    short = in_use and window is not None and window < context
    require(not short, owner, f"sliding_window {window} < max_position_embeddings {context} is not implemented "
            "(attention here is causal over the whole context)")


FAMILY = Family(LlamaConfig, HF_KEYS, tuple(ARCHITECTURES), _config_from_hf)
Llama.family = FAMILY
