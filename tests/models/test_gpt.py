"""``modify.models.GPT`` against Hugging Face's ``GPT2LMHeadModel`` (random weights, every format)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

import modify
from benchmarks.overhead import COPYING_OPS, AtenOps
from helpers import assert_state_equal, state_snapshot
from modify.models import GPT, CheckpointError, GPTConfig, generate
from modify.models.gpt import HF_KEYS
from modify.traits import Linear as LinearTrait
from modify.traits import Param

HF_CONFIG = dict(vocab_size=64, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
OURS = dict(vocab_size=64, block_size=24, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def reference() -> GPT2LMHeadModel:
    """A random GPT-2 whose layer norms and biases are far from their init (ones and zeros)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_CONFIG)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.copy_(p.detach() + 0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def folder(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    reference.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(2))


def bin_folder(reference, path):
    """The ``pytorch_model.bin`` layout transformers 4 wrote (5.x writes safetensors only):
    ``torch.save`` of the full state dict, tied ``lm_head.weight`` included."""
    reference.config.to_json_file(path / "config.json")
    torch.save(reference.state_dict(), path / "pytorch_model.bin")
    return path


def load(kind: str, reference, folder, tmp_path) -> GPT:
    if kind == "safetensors folder":
        return GPT.from_pretrained(folder)
    if kind == "pytorch_model.bin folder":
        return GPT.from_pretrained(bin_folder(reference, tmp_path))
    if kind == "weights file":
        return GPT.from_pretrained(folder / "model.safetensors", **OURS)
    if kind == "state_dict":
        return GPT.from_pretrained(reference.state_dict(), **OURS)
    assert kind == "bare GPT2Model state_dict"  # no 'transformer.' prefix, no lm_head
    return GPT.from_pretrained(reference.transformer.state_dict(), **OURS)


@pytest.mark.parametrize(
    "kind",
    ["safetensors folder", "pytorch_model.bin folder", "weights file", "state_dict", "bare GPT2Model state_dict"],
)
def test_logits_match_reference(kind, reference, folder, ids, tmp_path):
    gpt = load(kind, reference, folder, tmp_path)
    dropout = reference.config.resid_pdrop if kind.endswith("folder") else 0.0  # a folder's config.json says
    assert not gpt.training and gpt.config == GPTConfig(**OURS, dropout=dropout)
    expected = reference(ids).logits
    torch.testing.assert_close(gpt(ids), expected, atol=1e-5, rtol=0)
    fresh = GPT(GPTConfig(**OURS)).eval()
    assert (fresh(ids) - expected).abs().max() > 0.1  # the weights, not the init, make the match


def test_gradients_match_reference(reference, folder, ids):
    gpt = GPT.from_pretrained(folder)
    targets = ids.roll(-1, dims=1)
    for model, logits in ((gpt, gpt(ids)), (reference, reference(ids).logits)):
        model.zero_grad()
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    hf_params = dict(reference.named_parameters(remove_duplicate=False))
    for key, p in gpt.named_parameters():
        expected = HF_KEYS.transform(key, hf_params[HF_KEYS.reference_key(key)].grad)
        torch.testing.assert_close(p.grad, expected, atol=1e-6, rtol=1e-4, msg=key)


def test_training_step_copies_once_per_block(reference, ids):
    """The one copy of a block's step is the q, k, v split's backward joining three gradients (as in
    nanoGPT and transformers); the heads' rearrange costs none (it once cost a clone per block)."""
    gpt = GPT.from_pretrained(reference.state_dict(), **OURS)
    for _ in range(3):  # the combinators' loop, then the written function
        with AtenOps() as ops:
            F.cross_entropy(gpt(ids).flatten(0, 1), ids.flatten()).backward()
        copies = {name: n for name, n in ops.counts.items() if name in COPYING_OPS}
        assert copies == {"cat": OURS["n_layer"]}


def test_parameter_count_and_tied_head(reference, folder):
    gpt = GPT.from_pretrained(folder)
    assert sum(p.numel() for p in gpt.parameters()) == sum(p.numel() for p in reference.parameters())
    wte = gpt.transformer.embed.lookup.wte.weight
    assert gpt.lm_head.weight is wte
    names = [name for name, _ in gpt.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.embed.lookup.wte.weight" in names
    state = gpt.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.embed.lookup.wte.weight"].data_ptr()


def test_state_dict_round_trip_keeps_the_tie():
    source, target = GPT(GPTConfig(**OURS)), GPT(GPTConfig(**OURS))
    target.load_state_dict(source.state_dict())
    assert_state_equal(target, state_snapshot(source))
    assert target.lm_head.weight is target.transformer.embed.lookup.wte.weight


def test_tied_keys_with_different_values_raise(reference):
    state = dict(reference.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(CheckpointError, match="tied in the model but hold different values"):
        GPT.from_pretrained(state, **OURS)


def test_trait_queries_find_the_attention_and_mlp_layers():
    gpt = GPT(GPTConfig(**OURS))
    projections = modify.select(gpt, Param, LinearTrait, "*.attn.*")
    attn_linears = [f"transformer.h.{i}.attn.{name}" for i in range(2) for name in ("1.1.c_attn", "3.1.c_proj")]
    affines = [f"transformer.h.{i}.attn.1.1.ln_1.affine" for i in range(2)]
    assert sorted(projections.paths()) == sorted(attn_linears + affines)
    assert modify.select(gpt, modify.Linear, "*.attn.*").paths() == attn_linears
    attention = modify.select(gpt, modify.ScaledDotProductAttention)
    assert len(attention) == 2 and all(m.causal for m in attention.modules())
    assert len(modify.select(gpt, modify.models.CarryAdd)) == 2 * 2 + 1  # two residuals a block, the embeddings' sum
    assert modify.select(gpt, modify.Embedding).paths() == ["transformer.embed.lookup.wte", "transformer.embed.lookup.wpe"]


def test_lora_sibling_equals_base_at_init(ids):
    gpt = GPT(GPTConfig(**OURS)).eval()
    before = state_snapshot(gpt)
    adapted = modify.lora(gpt, rank=4, where=(modify.Linear, "*.attn.*"))
    assert isinstance(adapted, GPT) and len(modify.select(adapted, modify.LoRA)) == 4
    torch.testing.assert_close(adapted(ids), gpt(ids), atol=0, rtol=0)
    shared = {id(p) for p in gpt.parameters()}
    assert shared <= {id(p) for p in adapted.parameters()}
    assert_state_equal(gpt, before)


def test_generate_top_k_1_is_greedy_and_crops_context():
    gpt = GPT(GPTConfig(**{**OURS, "block_size": 8})).eval()
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    out = generate(gpt, prompt, 10, top_k=1)
    assert out.shape == (2, 15) and torch.equal(out[:, :5], prompt)
    expected = prompt
    for _ in range(10):  # greedy decoding by hand, over the last block_size tokens
        next_id = gpt(expected[:, -8:])[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat((expected, next_id), dim=1)
    assert torch.equal(out, expected)


def test_generate_is_reproducible_with_a_generator():
    gpt = GPT(GPTConfig(**OURS)).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    first = generate(gpt, prompt, 6, temperature=0.8, generator=torch.Generator().manual_seed(5))
    again = generate(gpt, prompt, 6, temperature=0.8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.shape == (1, 7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature > 0"),
        (dict(top_k=0), "top_k >= 1"),
        (dict(max_new_tokens=-1), "max_new_tokens >= 0"),
        (dict(idx=torch.zeros(3, dtype=torch.long)), r"\(B, T\)"),
        (dict(model=modify.Identity()), "pass block_size="),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    args = dict(model=GPT(GPTConfig(**OURS)), idx=torch.zeros(1, 2, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match=match):
        generate(**{**args, **kwargs})


def test_sequence_longer_than_block_size_names_the_module():
    gpt = GPT(GPTConfig(**OURS))
    with pytest.raises(ValueError, match=r"TokenInput at 'transformer\.embed\.tokens'.*T <= 24"):
        gpt(torch.zeros(1, 25, dtype=torch.long))


def test_dropout_acts_in_training_only(ids):
    gpt = GPT(GPTConfig(**{**OURS, "dropout": 0.5}))
    dropouts = modify.select(gpt, modify.Dropout)
    assert len(dropouts) == 1 + 2 * 2 and all(m.p == 0.5 for m in dropouts.modules())
    assert all(m.dropout == 0.5 for m in modify.select(gpt, modify.ScaledDotProductAttention).modules())
    assert not torch.equal(gpt.train()(ids), gpt(ids))
    assert torch.equal(gpt.eval()(ids), gpt(ids))


def test_no_bias_config_has_no_biases():
    gpt = GPT(GPTConfig(**OURS, bias=False))
    assert not [name for name, _ in gpt.named_parameters() if name.endswith("bias")]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_embd=30), ValueError, "multiple of n_head"),
        (dict(n_layer=0), ValueError, "n_layer must be positive"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(n_layer="2"), TypeError, "field 'n_layer'"),
        (dict(bias=1), TypeError, "field 'bias'"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        GPTConfig(**{**OURS, **kwargs})


def test_unknown_override_and_unsupported_config(reference, folder, tmp_path):
    with pytest.raises(TypeError, match=r"unknown config field\(s\) \['n_embed'\]"):
        GPT.from_pretrained(folder, n_embed=32)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    save_file({k: v.clone() for k, v in reference.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="n_inner must be 4 \\* n_embd"):
        GPT.from_pretrained(tmp_path)
