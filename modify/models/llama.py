"""Llama (1, 2 and 3) built from leaves, ``Sequential`` and ``Parallel`` alone.

Touvron et al. 2023, "LLaMA" and "Llama 2"; Grattafiori et al. 2024, "The Llama 3 Herd of
Models". Config field names, layout and weights follow Hugging Face's ``LlamaForCausalLM``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.distributions import Normal

from .._core.checks import typechecked
from ..combinators import Parallel, Residual, Sequential
from ..primitives import (
    Copy,
    Embedding,
    Identity,
    Linear,
    Mul,
    Rearrange,
    RotaryEmbedding,
    ScaledDotProductAttention,
    SiLU,
)
from ..primitives.attention import check_rope_scaling
from ._checkpoint import KeyFormat, Source, build_pretrained, hf_value, require
from ._layers import check_fields, check_positive, rms_norm


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
        rope_scaling: ``None`` or ``{"rope_type": "llama3", "factor": ..., "low_freq_factor": ...,
            "high_freq_factor": ..., "original_max_position_embeddings": ...}`` (Llama 3.1+).
        max_position_embeddings: the context length trained for (2048); :func:`generate` crops to it.
        tie_word_embeddings: share one ``Parameter`` between ``embed_tokens`` and ``lm_head`` (``False``).
        attention_bias: biases in the q/k/v/o projections (``False``).
        mlp_bias: biases in the MLP projections (``False``).
        head_dim: size of each head; ``None`` means ``hidden_size // num_attention_heads``.
        attention_dropout: dropout on attention weights in training (0.0).
        initializer_range: standard deviation of the normal init of weights (0.02).

    ``num_key_value_heads`` and ``head_dim`` are filled in after construction when ``None``.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: non-positive sizes; heads not a multiple of key/value heads; an unsupported
            or incomplete ``rope_scaling``.

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

    def __post_init__(self) -> None:
        check_fields(self)
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        check_positive(self, *sizes, "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta")
        check_positive(self, "max_position_embeddings", "initializer_range")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"LlamaConfig: attention_dropout must be in [0, 1), got {self.attention_dropout}")
        check_rope_scaling("LlamaConfig", self.rope_scaling)


class Llama(Sequential):
    """Llama: token ids to next-token logits, a tree of leaves (Hugging Face's ``LlamaForCausalLM``).

    Token embedding, ``num_hidden_layers`` pre-norm decoder layers (RMSNorm; grouped-query
    causal attention with rotary embeddings on queries and keys; SwiGLU MLP; each inside a
    :class:`~modify.Residual`), a final RMSNorm and an output head, untied or tied to the
    embedding (``tie_word_embeddings``: one ``Parameter`` under two ``state_dict`` keys).
    RMSNorm is ``RMSNorm`` followed by ``ElementwiseAffine(bias=False)``. A ``Sequential``
    subclass that only names the tree and keeps its :class:`LlamaConfig` as ``config``::

        model.embed_tokens         Embedding
        model.layers.<i>           Residual(self_attn) -> Residual(mlp), each branch at "1.1":
          self_attn.1.1            input_layernorm -> copy (Copy(3))
                                   -> proj (Parallel: q_proj, k_proj, v_proj)
                                   -> heads (Parallel: q, k = Rearrange -> RotaryEmbedding; v = Rearrange)
                                   -> attend (SDPA, causal, kv heads repeated) -> merge (Rearrange) -> o_proj
          mlp.1.1                  post_attention_layernorm -> copy (Copy(2))
                                   -> proj (Parallel: gate_proj, up_proj) -> act (Parallel: SiLU, Identity)
                                   -> mul (Mul) -> down_proj
        model.norm                 RMSNorm -> ElementwiseAffine
        lm_head                    Linear(hidden_size, vocab_size, bias=False)

    Hugging Face's ``model.layers.0.self_attn.q_proj.weight`` is our
    ``model.layers.0.self_attn.1.1.proj.q_proj.weight``.

    Args:
        config: the hyperparameters.

    Shape:
        ``(B, T)`` int64 token ids -> ``(B, T, vocab_size)`` logits.

    Attributes:
        config: the :class:`LlamaConfig`. Initialisation as transformers: weights
            ``N(0, initializer_range)``, biases zero, norm weights one.

    Raises:
        ModifyTypeError: (at call) ids that are not integers.
        einops.EinopsError: (a ``RuntimeError``, at call) ids that are not ``(B, T)``; a note
            names the module path.

    Example:
        >>> import torch
        >>> from modify.models import Llama, LlamaConfig
        >>> config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
        ...                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        >>> Llama(config)(torch.randint(0, 50, (2, 7))).shape
        torch.Size([2, 7, 50])
    """

    @typechecked
    def __init__(self, config: LlamaConfig):
        init = Normal(0.0, config.initializer_range)
        embed_tokens = Embedding(config.vocab_size, config.hidden_size, weight_init=init)
        tied = config.tie_word_embeddings
        device = "meta" if tied else None  # a tied head's own weight is replaced at once: skip allocating it
        lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, weight_init=init, device=device)
        if tied:
            lm_head.weight = embed_tokens.weight
        model = Sequential(
            embed_tokens=embed_tokens,
            layers=Sequential(*(_decoder_layer(config) for _ in range(config.num_hidden_layers))),
            norm=rms_norm(config.hidden_size, config.rms_norm_eps),
        )
        super().__init__(model=model, lm_head=lm_head)
        self.config = config

    def extra_repr(self) -> str:
        return f"config={self.config}"

    @classmethod
    @typechecked
    def from_pretrained(cls, source: Source, **config_overrides: Any) -> Llama:
        """Load Hugging Face Llama weights (``LlamaForCausalLM``; Llama 1, 2, 3, 3.1, 3.2).

        Args:
            source: a checkpoint folder (``config.json`` plus ``model.safetensors``,
                ``pytorch_model.bin`` or a sharded ``*.index.json``, as ``save_pretrained``
                writes), a single weights file, or a ``state_dict`` in Hugging Face's key names.
                With tied embeddings, ``lm_head.weight`` and ``model.embed_tokens.weight`` fill
                the one parameter: either may be absent; if both are present they must be equal.
            **config_overrides: :class:`LlamaConfig` fields, on top of ``config.json`` (folder)
                or of the defaults (file or state_dict). ``rope_theta`` is read from
                ``rope_theta`` or ``rope_parameters`` (transformers 5), ``rope_scaling`` from
                ``rope_scaling`` or ``rope_parameters``.

        Returns:
            A :class:`Llama` in eval mode, float32 (call ``.to(torch.bfloat16)`` to halve it).

        Raises:
            FileNotFoundError: a missing path; a folder without ``config.json`` or weights.
            TypeError: an unknown config field; a file that holds no state dict.
            ValueError: a ``config.json`` with options not implemented (``hidden_act`` other
                than ``silu``, partial rotary embeddings, another rope scaling).
            CheckpointError: (a ``ValueError``) listing every missing, unexpected and
                mis-shaped key.

        Example:
            >>> import tempfile, torch
            >>> import transformers  # only to write a checkpoint here
            >>> from modify.models import Llama
            >>> config = transformers.LlamaConfig(
            ...     vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            ...     num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True)
            >>> reference = transformers.LlamaForCausalLM(config).eval()
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     reference.save_pretrained(folder)
            ...     llama = Llama.from_pretrained(folder)
            >>> ids = torch.randint(0, 100, (2, 16))
            >>> torch.allclose(llama(ids), reference(ids).logits, atol=1e-5)
            True
        """
        owner = "Llama.from_pretrained"
        return build_pretrained(cls, LlamaConfig, source, config_overrides, HF_KEYS, owner, _config_from_hf)


def _linear(config: LlamaConfig, n_in: int, n_out: int, bias: bool) -> Linear:
    init = Normal(0.0, config.initializer_range)
    return Linear(n_in, n_out, bias=bias, weight_init=init, bias_init=nn.init.zeros_)


def _decoder_layer(config: LlamaConfig) -> Sequential:
    """``x + self_attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``."""
    D, I, hd = config.hidden_size, config.intermediate_size, config.head_dim
    H, KV = config.num_attention_heads, config.num_key_value_heads
    qkv_bias, mlp_bias = config.attention_bias, config.mlp_bias
    self_attn = Sequential(
        input_layernorm=rms_norm(D, config.rms_norm_eps),
        copy=Copy(3),
        proj=Parallel(  # (B, T, H*hd), (B, T, KV*hd), (B, T, KV*hd)
            q_proj=_linear(config, D, H * hd, qkv_bias),
            k_proj=_linear(config, D, KV * hd, qkv_bias),
            v_proj=_linear(config, D, KV * hd, qkv_bias),
        ),
        heads=Parallel(q=_rotary_heads(config), k=_rotary_heads(config), v=Rearrange("b t (h d) -> b h t d", d=hd)),
        attend=ScaledDotProductAttention(causal=True, dropout=config.attention_dropout),  # (B, H, T, hd)
        merge=Rearrange("b h t d -> b t (h d)"),  # (B, T, H*hd)
        o_proj=_linear(config, H * hd, D, qkv_bias),
    )
    mlp = Sequential(
        post_attention_layernorm=rms_norm(D, config.rms_norm_eps),
        copy=Copy(2),
        proj=Parallel(gate_proj=_linear(config, D, I, mlp_bias), up_proj=_linear(config, D, I, mlp_bias)),
        act=Parallel(gate=SiLU(), up=Identity()),
        mul=Mul(),  # SwiGLU: silu(gate) * up
        down_proj=_linear(config, I, D, mlp_bias),
    )
    return Sequential(self_attn=Residual(self_attn), mlp=Residual(mlp))


def _rotary_heads(config: LlamaConfig) -> Sequential:
    """``(B, T, n*hd) -> (B, n, T, hd)``, each head rotated by position."""
    rope = RotaryEmbedding(config.head_dim, base=config.rope_theta, scaling=config.rope_scaling)
    return Sequential(split=Rearrange("b t (h d) -> b h t d", d=config.head_dim), rope=rope)


# Our state_dict keys -> Hugging Face LlamaForCausalLM's.
HF_KEYS = KeyFormat(
    rules=(
        (r"model\.embed_tokens\.weight", "model.embed_tokens.weight"),
        (
            r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.1\.1\.(\w+_layernorm)\.affine\.weight",
            r"model.layers.\1.\2.weight",
        ),
        (r"model\.layers\.(\d+)\.(self_attn|mlp)\.1\.1\.proj\.(\w+)\.(\w+)", r"model.layers.\1.\2.\3.\4"),
        (r"model\.layers\.(\d+)\.(self_attn|mlp)\.1\.1\.(o_proj|down_proj)\.(\w+)", r"model.layers.\1.\2.\3.\4"),
        (r"model\.norm\.affine\.weight", "model.norm.weight"),
        (r"lm_head\.weight", "lm_head.weight"),
    ),
    base_prefix="model",
    ignore=("model.layers.*.self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"),
)


def _config_from_hf(hf: dict[str, Any], owner: str) -> dict[str, Any]:
    """``LlamaConfig`` fields from a Hugging Face ``config.json`` (transformers 4 or 5 layout)."""
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
    return {**fields, "rope_theta": float(theta), "rope_scaling": scaling}
