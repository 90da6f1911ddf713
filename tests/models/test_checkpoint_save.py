"""``save_pretrained``: ours -> folder -> transformers (and ours again), sharded too."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from modify.models import GPT, GPTConfig, Llama, LlamaConfig, ResNet, ResNetConfig

GPT_CONFIG = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=4, n_embd=32)
LLAMA = dict(
    vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
)  # fmt: skip
LLAMAS = {
    "llama": {},
    "llama tied, biases, llama3 rope": dict(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=32),
    ),
    "llama linear rope": dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2"),
}  # fmt: skip
REFERENCE = {
    "GPT": transformers.GPT2LMHeadModel,
    "llama": transformers.LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
}


def randomised(model):
    """``model`` in eval mode with every parameter random (norms and biases too)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape))
    return model.eval()


def make_gpt() -> GPT:
    return randomised(GPT(GPT_CONFIG))


def make_llama(name: str) -> Llama:
    return randomised(Llama(LlamaConfig(**LLAMA, **LLAMAS[name])))


def make_resnet() -> ResNet:
    resnet = randomised(ResNet(ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 2), num_classes=5)))
    for name, buffer in resnet.named_buffers():
        if "running" in name:
            buffer.copy_(torch.rand(buffer.shape) + 0.5)
    return resnet


def assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))


def test_gpt_round_trip_through_transformers(tmp_path, ids):
    gpt = make_gpt()
    gpt.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
        assert tuple(handle.get_slice("transformer.h.0.attn.c_attn.weight").get_shape()) == (32, 96)  # Conv1D
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys  # the tied weight once
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reference(ids).logits, gpt(ids), atol=1e-5, rtol=0)
    assert_bit_identical(gpt, GPT.from_pretrained(tmp_path))


@pytest.mark.parametrize("name", list(LLAMAS))
def test_llama_family_round_trip_through_transformers(name, tmp_path, ids):
    llama = make_llama(name)
    llama.save_pretrained(tmp_path)
    reference_cls = REFERENCE[llama.config.model_type]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [reference_cls.__name__]
    reference = reference_cls.from_pretrained(tmp_path).eval()
    assert type(reference) is reference_cls
    torch.testing.assert_close(reference(ids).logits, llama(ids), atol=1e-5, rtol=0)
    again = Llama.from_pretrained(tmp_path)
    assert again.config == llama.config
    assert_bit_identical(llama, again)


def test_resnet_round_trip_through_transformers(tmp_path):
    resnet = make_resnet()
    resnet.save_pretrained(tmp_path)
    reference = transformers.ResNetForImageClassification.from_pretrained(tmp_path).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(reference(images).logits, resnet(images), atol=1e-5, rtol=0)
    assert_bit_identical(resnet, ResNet.from_pretrained(tmp_path))


def test_small_max_shard_size_writes_shards_both_libraries_read(tmp_path, ids):
    llama = make_llama("llama")
    llama.save_pretrained(tmp_path, max_shard_size="50KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reference(ids).logits, llama(ids), atol=1e-5, rtol=0)
    assert_bit_identical(llama, Llama.from_pretrained(tmp_path))


def test_bf16_model_saves_bf16_and_auto_reads_it_back(tmp_path, ids):
    gpt = make_gpt().to(torch.bfloat16)
    gpt.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    again = GPT.from_pretrained(tmp_path, dtype="auto")
    assert_bit_identical(gpt, again)
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert reference.transformer.wte.weight.dtype == torch.bfloat16
    assert torch.equal(reference.transformer.wte.weight, gpt.lm_head.weight)


def test_models_the_reference_cannot_express_are_refused(tmp_path):
    with pytest.raises(ValueError, match="bias=False"):
        GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8, bias=False)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="mistral has no attention_bias"):
        Llama(LlamaConfig(**LLAMA, model_type="mistral", attention_bias=True)).save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())
