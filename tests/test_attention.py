"""Attention leaves beyond the shared table: torch's SDPA, grouped queries, rotary scaling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import modify
from modify.models import LlamaConfig
from modify.primitives.attention import rope_inverse_frequencies

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_torch_sdpa_with_scale(causal, gen):
    q, k, v = (torch.randn(2, 3, 4, 8, generator=gen) for _ in range(3))
    ours = modify.ScaledDotProductAttention(causal=causal, scale=0.3)((q, k, v))
    assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.3))


def test_sdpa_keys_longer_than_queries(gen):
    q = torch.randn(1, 2, 3, 4, generator=gen)
    k, v = torch.randn(1, 2, 7, 4, generator=gen), torch.randn(1, 2, 7, 5, generator=gen)
    out = modify.ScaledDotProductAttention()((q, k, v))
    assert out.shape == (1, 2, 3, 5)
    assert_close(out, torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v)


def test_grouped_query_attention_shares_each_kv_head_among_its_queries(gen):
    q = torch.randn(1, 4, 5, 8, generator=gen)
    k, v = torch.randn(1, 2, 5, 8, generator=gen), torch.randn(1, 2, 5, 8, generator=gen)
    out = modify.ScaledDotProductAttention(causal=True)((q, k, v))
    for head in range(4):  # query heads 0, 1 read kv head 0; 2, 3 read kv head 1
        kv = head // 2
        expected = F.scaled_dot_product_attention(q[:, head], k[:, kv], v[:, kv], is_causal=True)
        assert_close(out[:, head], expected)


def test_grouped_query_attention_rejects_a_non_multiple():
    q, kv = torch.zeros(1, 3, 2, 4), torch.zeros(1, 2, 2, 4)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        modify.ScaledDotProductAttention()((q, kv, kv))


def test_attention_dropout_only_in_training(gen):
    q, k, v = (torch.randn(1, 1, 6, 4, generator=gen) for _ in range(3))
    attention = modify.ScaledDotProductAttention(dropout=0.5)
    train = attention((q, k, v))
    attention.eval()
    assert_close(attention((q, k, v)), F.scaled_dot_product_attention(q, k, v))
    assert not torch.allclose(train, attention((q, k, v)))


def _llama3_by_hand(freqs: list[float], scaling: dict) -> list[float]:
    """Meta's ``apply_scaling`` (llama-models, Llama 3.1), one frequency at a time."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    scaled = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            scaled.append(freq)
        elif wavelen > low_freq_wavelen:
            scaled.append(freq / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            scaled.append((1 - smooth) * freq / factor + smooth * freq)
    return scaled


def test_llama3_frequency_scaling_matches_the_published_formula():
    dim, base = 128, 500000.0
    plain = [1.0 / base ** (i / dim) for i in range(0, dim, 2)]
    expected = torch.tensor(_llama3_by_hand(plain, LLAMA3), dtype=torch.float64)
    got = rope_inverse_frequencies(dim, base, LLAMA3).double()
    assert_close(got, expected, atol=0.0, rtol=1e-5)
    plain = torch.tensor(plain, dtype=torch.float64)
    kept, divided = torch.isclose(got, plain), torch.isclose(got, plain / 8)
    assert kept.any() and divided.any() and not (kept | divided).all()  # all three regimes occur


def test_rotary_with_llama3_scaling_rotates_by_scaled_frequencies(gen):
    rope = modify.RotaryEmbedding(16, base=500000.0, scaling=LLAMA3)
    x = torch.randn(1, 1, 9, 16, generator=gen, dtype=torch.float64)
    inv_freq = torch.tensor(_llama3_by_hand([1.0 / 500000.0 ** (i / 16) for i in range(0, 16, 2)], LLAMA3))
    angles = torch.arange(9, dtype=torch.float64)[:, None] * inv_freq
    x1, x2 = x[..., :8], x[..., 8:]
    expected = torch.cat((x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()), -1)
    assert_close(rope(x), expected, atol=1e-5)


def test_rotary_rejects_unknown_scaling_and_odd_dims():
    with pytest.raises(ValueError, match="rope_type"):
        modify.RotaryEmbedding(8, scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="even"):
        modify.RotaryEmbedding(7)


def test_rotary_equals_transformers_llama(gen):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=16384, rope_theta=500000.0, rope_scaling=LLAMA3
    )
    reference = llama.LlamaRotaryEmbedding(config)
    q = torch.randn(2, 4, 7, 16, generator=gen)
    cos, sin = reference(q, torch.arange(7)[None].expand(2, 7))
    expected, _ = llama.apply_rotary_pos_emb(q, q, cos, sin)
    ours = modify.RotaryEmbedding(16, base=500000.0, scaling=config.rope_parameters)
    assert_close(ours(q), expected, atol=1e-5)


def test_llama3_scaling_without_its_keys_is_a_value_error():
    with pytest.raises(ValueError, match="low_freq_factor"):
        modify.RotaryEmbedding(8, scaling={"rope_type": "llama3", "factor": 8.0})


LLAMA3_OK = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        (dict(dim=-8), ValueError, "RotaryEmbedding: dim must be at least 1, got -8"),
        (dict(dim=0), ValueError, "RotaryEmbedding: dim must be at least 1, got 0"),
        (dict(dim=8, base=0.0), ValueError, "RotaryEmbedding: base must be positive and finite, got 0.0"),
        (dict(dim=8, base=-10.0), ValueError, "base must be positive and finite, got -10.0"),
        (dict(dim=8, base=float("nan")), ValueError, "base must be positive and finite, got nan"),
        (dict(dim=8, base=float("inf")), ValueError, "base must be positive and finite, got inf"),
        (dict(dim=8, scaling={**LLAMA3_OK, "factor": "8"}), TypeError, "rope_scaling['factor'] must be a number, got '8'"),
        (dict(dim=8, scaling={**LLAMA3_OK, "low_freq_factor": None}), TypeError, "['low_freq_factor'] must be a number"),
        (dict(dim=8, scaling={**LLAMA3_OK, "factor": True}), TypeError, "['factor'] must be a number, got True"),
        (dict(dim=8, scaling={**LLAMA3_OK, "factor": 0}), ValueError, "factor must be positive and finite"),
        (dict(dim=8, scaling={**LLAMA3_OK, "low_freq_factor": 0.0}), ValueError, "must be positive and finite"),
        (dict(dim=8, scaling={**LLAMA3_OK, "factor": float("nan")}), ValueError, "must be positive and finite"),
        (dict(dim=8, scaling={**LLAMA3_OK, "high_freq_factor": 1.0}), ValueError, "high_freq_factor > low_freq_factor"),
        (dict(dim=8, scaling={**LLAMA3_OK, "original_max_position_embeddings": 0}), ValueError, "original_max_position_embeddings >= 1"),
    ],
)
def test_rotary_constructor_refuses_bad_sizes_bases_and_scalings(kwargs, error, fragment):
    with pytest.raises(error) as info:
        modify.RotaryEmbedding(**kwargs)
    assert fragment in str(info.value) and str(info.value).startswith("RotaryEmbedding")


def test_llama_config_shares_the_rotary_scaling_check():
    small = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"^LlamaConfig: llama3 rope_scaling factor must be positive and finite"):
        LlamaConfig(**small, rope_scaling={**LLAMA3_OK, "factor": 0.0})
    assert LlamaConfig(**small, rope_scaling=LLAMA3_OK).rope_scaling == LLAMA3_OK


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_rotary_refuses_integer_input_naming_the_path(dtype):
    model = modify.Sequential(attn=modify.Sequential(rope=modify.RotaryEmbedding(4)))
    with pytest.raises(TypeError, match=r"RotaryEmbedding at 'attn\.rope' expected a floating-point tensor, got .*"):
        model(torch.ones(2, 3, 4, dtype=dtype))


@pytest.mark.parametrize(
    ("shapes", "fragment"),
    [
        (((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 3, 4)), "of one rank"),  # k and v of different lengths
        (((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 6, 4)), "of one rank"),
        (((1, 2, 3, 4), (3, 4), (3, 4)), "of one rank"),  # k with fewer dims than q
        (((1, 2, 3, 4), (1, 2, 3, 4), (2, 3, 4)), "of one rank"),
        (((4,), (4,), (4,)), "of one rank"),  # fewer than 2 dims
        (((1, 2, 3, 4), (1, 0, 3, 4), (1, 0, 3, 4)), "multiple of key/value heads (at least 1)"),  # zero kv heads
    ],
)
def test_attention_refuses_inconsistent_q_k_v_naming_the_path(shapes, fragment):
    model = modify.Sequential(blocks=modify.Sequential(attn=modify.ScaledDotProductAttention()))
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError) as info:
        model((q, k, v))
    message = str(info.value)
    assert message.startswith("ScaledDotProductAttention at 'blocks.attn'") and fragment in message
    assert str(tuple(shapes[1])).replace(" ", "") in message.replace(" ", "")  # what arrived

