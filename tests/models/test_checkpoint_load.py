"""Loading real checkpoints: dtype, device, no random init, the Llama family (Mistral, Qwen2), bf16 end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

import modify
from modify.models import GPT, CheckpointError, Llama, ResNet

LLAMA = dict(
    vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
)  # fmt: skip
FAMILIES = {
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=None, head_dim=16)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "llama linear rope": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        dict(rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10000.0)),
    ),
}  # fmt: skip


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with norm weights and biases moved off their init (ones and zeros)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def family_reference(name: str) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[name]
    torch.manual_seed(0)
    return perturbed(model_cls(config_cls(**LLAMA, **extra)))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 48), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    reference = perturbed(transformers.GPT2LMHeadModel(config))
    folder = tmp_path_factory.mktemp("gpt2")
    reference.save_pretrained(folder)
    return reference, folder


@pytest.mark.parametrize("name", list(FAMILIES))
def test_llama_family_matches_reference(name, ids, tmp_path):
    reference = family_reference(name)
    reference.save_pretrained(tmp_path)
    llama = Llama.from_pretrained(tmp_path)
    assert llama.config.model_type == reference.config.model_type
    torch.testing.assert_close(llama(ids), reference(ids).logits, atol=1e-5, rtol=0)


def test_qwen2_has_qkv_biases_and_no_o_proj_bias(tmp_path):
    family_reference("qwen2").save_pretrained(tmp_path)
    attention = Llama.from_pretrained(tmp_path).get_submodule("model.layers.0.self_attn")
    assert all(attention[1][1].proj[name].bias is not None for name in ("q_proj", "k_proj", "v_proj"))
    assert attention[3][1].o_proj.bias is None


def test_short_sliding_window_is_refused(tmp_path):
    config = transformers.MistralConfig(**LLAMA, sliding_window=16)
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"sliding_window 16 < max_position_embeddings 64") as caught:
        Llama.from_pretrained(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_window_as_long_as_the_context_is_exact(tmp_path, ids):
    torch.manual_seed(0)
    reference = perturbed(transformers.MistralForCausalLM(transformers.MistralConfig(**LLAMA, sliding_window=64)))
    reference.save_pretrained(tmp_path)
    torch.testing.assert_close(Llama.from_pretrained(tmp_path)(ids), reference(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "auto"])
def test_dtype_places_every_parameter_rotary_stays_float32(dtype, tmp_path):
    reference = family_reference("qwen2").to(torch.bfloat16)
    reference.save_pretrained(tmp_path)
    llama = Llama.from_pretrained(tmp_path, dtype=dtype)
    expected = torch.bfloat16 if dtype == "auto" else dtype
    assert {p.dtype for p in llama.parameters()} == {expected}
    frequencies = [b for name, b in llama.named_buffers() if name.endswith("inv_freq")]
    assert frequencies and all(b.dtype == torch.float32 and b.device.type == "cpu" for b in frequencies)
    fresh = modify.RotaryEmbedding(llama.config.head_dim, base=llama.config.rope_theta).inv_freq
    assert torch.equal(frequencies[0], fresh)


def test_default_is_float32_and_tied_weight_stays_one_parameter(gpt_folder):
    reference, folder = gpt_folder
    gpt = GPT.from_pretrained(folder, dtype=torch.bfloat16)
    assert gpt.lm_head.weight is gpt.transformer.embed.lookup.wte.weight
    assert len(list(gpt.parameters())) == len(list(reference.parameters()))
    assert {p.dtype for p in GPT.from_pretrained(folder).parameters()} == {torch.float32}
    assert all(not p.is_meta and p.requires_grad for p in gpt.parameters())


def test_loading_draws_no_random_numbers(gpt_folder, tmp_path):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path)
    state = torch.get_rng_state()
    GPT.from_pretrained(gpt_folder[1])
    ResNet.from_pretrained(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    GPT(GPT.from_pretrained(gpt_folder[1]).config)  # building one for training does draw them
    assert not torch.equal(torch.get_rng_state(), state)


def test_device_argument_places_weights_and_buffers(tmp_path):
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path)
    resnet = ResNet.from_pretrained(tmp_path, device="cpu", dtype=torch.float64)
    tensors = list(resnet.parameters()) + list(resnet.buffers())
    assert all(t.device.type == "cpu" and not t.is_meta for t in tensors)
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float64}
    assert {t.dtype for t in tensors if not t.is_floating_point()} == {torch.int64}  # num_batches_tracked


@pytest.mark.parametrize("dtype", [torch.int64, "float32", 3])
def test_bad_dtype(dtype, gpt_folder):
    with pytest.raises(TypeError, match="dtype"):
        GPT.from_pretrained(gpt_folder[1], dtype=dtype)


def test_bf16_forward_close_to_float32_reference(tmp_path, ids):
    reference = family_reference("mistral")
    reference.save_pretrained(tmp_path)
    logits = Llama.from_pretrained(tmp_path, dtype=torch.bfloat16)(ids)
    expected = reference(ids).logits
    assert logits.dtype == torch.bfloat16
    error = (logits.float() - expected).abs().max() / expected.abs().max()
    assert error < 0.05, error


def test_lora_trains_over_a_bf16_base_and_merges_in_float32(tmp_path, ids):
    family_reference("llama linear rope").save_pretrained(tmp_path)
    base = Llama.from_pretrained(tmp_path, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = modify.lora(base, rank=4).train()
    adapters = modify.lora_parameters(adapted)
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    losses = []
    for _ in range(4):
        logits = adapted(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # base untouched
    merged = modify.merge_lora(adapted.eval())
    block = adapted.get_submodule("model.layers.0.self_attn.1.1.proj.q_proj")
    weight = merged.get_submodule("model.layers.0.self_attn.1.1.proj.q_proj").weight
    expected = block.base.weight.float() + block.scale * (block.up.weight.float() @ block.down.weight.float())
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, expected.to(torch.bfloat16))
