"""``modify.models.Llama`` against Hugging Face's ``LlamaForCausalLM`` (random weights, every format)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

import modify
from helpers import assert_state_equal, state_snapshot
from modify.models import CheckpointError, Llama, LlamaConfig, generate
from modify.models.llama import HF_KEYS
from modify.traits import Linear as LinearTrait
from modify.traits import Param

BASE = dict(
    vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
)  # fmt: skip
# head_dim 16: rotary frequencies with wavelengths 6, 32, 166, 855, ... tokens, so a context of
# 256 puts them in all three llama3 bands (kept, smoothed, divided by `factor`).
LLAMA3 = dict(
    rope_theta=500000.0, max_position_embeddings=512,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=256),
)  # fmt: skip
VARIANTS = {
    "grouped-query": {},
    "llama3 rope scaling": LLAMA3,
    "tied embeddings": dict(tie_word_embeddings=True),
    "biases, head_dim 24": dict(attention_bias=True, mlp_bias=True, head_dim=24, num_key_value_heads=1),
}


def make_reference(**overrides) -> transformers.LlamaForCausalLM:
    """A random Llama whose norm weights and biases are far from their init (ones and zeros)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**BASE, **overrides})).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(p.detach() + 0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    """(name, reference model, folder written by save_pretrained)."""
    reference = make_reference(**VARIANTS[request.param])
    folder = tmp_path_factory.mktemp("llama")
    reference.save_pretrained(folder)
    return request.param, reference, folder


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(2))


def test_folder_logits_match_reference(variant, ids):
    name, reference, folder = variant
    llama = Llama.from_pretrained(folder)
    assert not llama.training
    expected = reference(ids).logits
    torch.testing.assert_close(llama(ids), expected, atol=1e-5, rtol=0)
    fresh = Llama(llama.config).eval()
    assert (fresh(ids) - expected).abs().max() > 0.1  # the weights, not the init, make the match


def test_parameter_count_equals_reference(variant):
    name, reference, folder = variant
    llama = Llama.from_pretrained(folder)
    assert sum(p.numel() for p in llama.parameters()) == sum(p.numel() for p in reference.parameters())
    tied = llama.lm_head.weight is llama.model.embed.embed_tokens.weight
    assert tied == (name == "tied embeddings")


def test_config_is_read_from_either_rope_layout(tmp_path, ids):
    """transformers 5 writes ``rope_parameters``; 4.x wrote ``rope_theta`` and ``rope_scaling``."""
    reference = make_reference(**LLAMA3)
    reference.save_pretrained(tmp_path)
    modern = Llama.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    (tmp_path / "config.json").write_text(json.dumps(config))
    legacy = Llama.from_pretrained(tmp_path)
    for llama in (modern, legacy):
        assert llama.config.rope_theta == 500000.0 and llama.config.rope_scaling["rope_type"] == "llama3"
        torch.testing.assert_close(llama(ids), reference(ids).logits, atol=1e-5, rtol=0)
    unscaled = Llama(LlamaConfig(**{**modern.config.__dict__, "rope_scaling": None})).eval()
    unscaled.load_state_dict(modern.state_dict())
    assert (unscaled(ids) - modern(ids)).abs().max() > 1e-3  # the scaling matters at this length


def test_bin_folder_file_and_state_dict_sources(tmp_path, ids):
    reference = make_reference(tie_word_embeddings=True)
    expected = reference(ids).logits
    reference.config.to_json_file(tmp_path / "config.json")  # transformers 4's pytorch_model.bin layout
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    keywords = {**BASE, "tie_word_embeddings": True}
    sources = ((tmp_path, {}), (tmp_path / "pytorch_model.bin", keywords), (reference.state_dict(), keywords))
    for source, kwargs in sources:
        torch.testing.assert_close(Llama.from_pretrained(source, **kwargs)(ids), expected, atol=1e-5, rtol=0)


def test_gradients_match_reference(ids):
    reference = make_reference(**LLAMA3)
    llama = Llama.from_pretrained(reference.state_dict(), **{**BASE, **LLAMA3})
    targets = ids.roll(-1, dims=1)
    for model, logits in ((llama, llama(ids)), (reference, reference(ids).logits)):
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    hf_params = dict(reference.named_parameters())
    for key, p in llama.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[HF_KEYS.reference_key(key)].grad, atol=1e-6, rtol=1e-4, msg=key)


def test_trait_queries_find_attention_projections_and_rotary():
    llama = Llama(LlamaConfig(**BASE))
    projections = modify.select(llama, Param, LinearTrait, "*.self_attn.*.*_proj")
    expected = [f"model.layers.{i}.self_attn.{where}" for i in range(2) for where in
                ("1.1.proj.q_proj", "1.1.proj.k_proj", "1.1.proj.v_proj", "3.1.o_proj")]  # fmt: skip
    assert projections.paths() == expected
    k_proj = llama.model.layers[0].self_attn[1][1].proj.k_proj
    assert (k_proj.in_features, k_proj.out_features) == (64, 2 * 16)  # 2 key/value heads of 16
    assert len(modify.select(llama, modify.RotaryEmbedding)) == 2 * 2
    assert len(modify.select(llama, modify.RMSNorm)) == 2 * 2 + 1
    mlp = modify.select(llama, modify.Linear, "*.mlp.*").paths()
    assert [p.rsplit(".", 1)[1] for p in mlp[:3]] == ["gate_proj", "up_proj", "down_proj"]


def test_lora_sibling_equals_base_at_init(ids):
    llama = Llama(LlamaConfig(**BASE, tie_word_embeddings=True)).eval()
    before = state_snapshot(llama)
    adapted = modify.lora(llama, rank=4, alpha=8.0)
    assert isinstance(adapted, Llama) and len(modify.select(adapted, modify.LoRA)) == 2 * 7 + 1
    torch.testing.assert_close(adapted(ids), llama(ids), atol=0, rtol=0)
    assert {id(p) for p in llama.parameters()} <= {id(p) for p in adapted.parameters()}
    assert_state_equal(llama, before)


def test_generate_crops_to_max_position_embeddings():
    llama = Llama(LlamaConfig(**{**BASE, "max_position_embeddings": 6})).eval()
    prompt = torch.zeros(1, 4, dtype=torch.long)
    out = generate(llama, prompt, 5, top_k=1)
    expected = prompt
    for _ in range(5):
        expected = torch.cat((expected, llama(expected[:, -6:])[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_key_value_heads=3), ValueError, "multiple of num_key_value_heads"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), ValueError, "'yarn' is not supported"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), ValueError, "lacks"),
        (dict(head_dim=15), ValueError, "head_dim must be even"),
        (dict(hidden_size=64.0), TypeError, "field 'hidden_size'"),
        (dict(hidden_size=2, num_attention_heads=4, num_key_value_heads=4), ValueError, "gives head_dim 0"),
        (dict(rms_norm_eps=float("nan")), ValueError, "rms_norm_eps must be a finite positive number"),
        (dict(rope_theta=float("inf")), ValueError, "rope_theta must be a finite positive number"),
        (dict(rope_scaling=dict(LLAMA3["rope_scaling"], factor="8")), TypeError, "must be a number"),
        (dict(rope_scaling=dict(LLAMA3["rope_scaling"], low_freq_factor=0)), ValueError, "must be positive and finite"),
        (dict(rope_scaling=dict(LLAMA3["rope_scaling"], high_freq_factor=1.0)), ValueError, "high_freq_factor >"),
        (dict(rope_scaling={"rope_type": "linear"}), ValueError, r"linear rope_scaling lacks \['factor'\]"),
        (dict(rope_scaling={"rope_type": "linear", "factor": float("nan")}), ValueError, "must be positive and finite"),
        (dict(model_type="gemma"), ValueError, "model_type must be one of"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        LlamaConfig(**{**BASE, **kwargs})


def test_unsupported_reference_config_raises(tmp_path):
    reference = make_reference()
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act 'gelu' is not supported"):
        Llama.from_pretrained(tmp_path)


def test_wrong_config_lists_every_mismatched_shape(tmp_path):
    reference = make_reference()
    with pytest.raises(CheckpointError) as caught:
        Llama.from_pretrained(reference.state_dict(), **{**BASE, "num_key_value_heads": 4})
    assert sorted(caught.value.mismatched)[0].startswith("model.layers.0.self_attn.k_proj.weight: checkpoint (32, 64)")
    assert len(caught.value.mismatched) == 2 * 2 and not caught.value.missing and not caught.value.unexpected
