"""load_pretrained: every model builds on the meta device; leaves rebuild their own non-persistent buffers."""

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig, Llama, LlamaConfig, ResNet, resnet18

MODELS = {
    "gpt": lambda: GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8)),
    "llama": lambda: Llama(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "resnet": lambda: resnet18(num_classes=5, hidden_sizes=(8, 8, 8, 8), embedding_size=8),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_from_pretrained_on_meta_device(tmp_path, name):
    model = MODELS[name]()
    model.save_pretrained(tmp_path)
    meta = type(model).from_pretrained(tmp_path, device="meta")
    tensors = {**dict(meta.named_parameters()), **dict(meta.named_buffers())}
    reference = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in reference.items()}
    assert all(t.is_meta for t in tensors.values())
    assert not meta.training


def test_rotary_embedding_rebuilds_inv_freq_on_the_default_device():
    with torch.device("meta"):
        rope = modify.RotaryEmbedding(8, base=500.0, scaling={"rope_type": "linear", "factor": 4.0})
    reference = modify.RotaryEmbedding(8, base=500.0, scaling={"rope_type": "linear", "factor": 4.0})
    rope.reset_buffers()
    assert torch.equal(rope.inv_freq, reference.inv_freq)
    assert "inv_freq" in rope._non_persistent_buffers_set


def test_llama_loaded_on_cpu_equals_the_saved_model(tmp_path):
    model = MODELS["llama"]().eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 16, (2, 5))
    assert torch.equal(Llama.from_pretrained(tmp_path)(ids), model(ids))
