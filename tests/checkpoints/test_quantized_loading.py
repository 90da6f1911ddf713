"""from_pretrained(..., quantize=): the model quantize would make, filled one quantized layer at a time."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

import modify
from modify.checkpoints import loading
from modify.models import GPT, GPTConfig, Llama, LlamaConfig
from modify.primitives.quantized import QuantizedLinear, is_quantized

LLAMA = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip


def folder_of(model, tmp_path):
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_equals_quantize_after_a_plain_load(name, scheme, tmp_path):
    cls, model = (GPT, GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64))) if name == "gpt" else (Llama, Llama(LLAMA))
    folder = folder_of(model, tmp_path)
    loaded = cls.from_pretrained(folder, quantize=scheme, dtype=torch.bfloat16)
    expected = modify.quantize(cls.from_pretrained(folder, dtype=torch.bfloat16), scheme)
    paths = [path for path, _ in modify.select(expected, QuantizedLinear)]
    assert [path for path, _ in modify.select(loaded, QuantizedLinear)] == paths and paths
    for path in paths:
        mine, theirs = loaded.get_submodule(path), expected.get_submodule(path)
        assert torch.equal(mine.dequantize(), theirs.dequantize()) and mine.dequantize().dtype == torch.bfloat16
        assert not mine.weight.requires_grad and mine.scheme == scheme
    ids = torch.randint(0, 64, (2, 16))
    assert torch.equal(loaded(ids), expected(ids)) and not loaded.training


def test_each_weight_is_quantized_as_soon_as_it_is_read(tmp_path, monkeypatch):
    """The fill never holds two float Linear weights: each is quantized before the next is read."""
    folder = folder_of(Llama(LLAMA), tmp_path)
    fill, float_linears = loading._fill, []

    def watching_fill(model, plan, keys, dtype, device, owner, convert=None, **options):
        def watched(target, value):
            out = convert(target, value)
            held = [m for m in model.modules() if isinstance(m, modify.Linear) and not m.weight.is_meta]
            float_linears.append(sum(not is_quantized(m.weight) for m in held))
            return out

        return fill(model, plan, keys, dtype, device, owner, watched, **options)

    monkeypatch.setattr(loading, "_fill", watching_fill)
    Llama.from_pretrained(folder, quantize="nf4")
    assert float_linears and max(float_linears) == 0


def test_an_unknown_scheme_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"Llama.from_pretrained: quantize must be one of \['nf4', 'int8'\] or None, got 'nf3'"):
        Llama.from_pretrained(tmp_path, quantize="nf3")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_no_mapping_of_the_file_outlives_a_quantized_load(tmp_path):
    """The tensors kept in their dtype (embeddings, norms) are copies, not views of the file's mapping."""
    file = str(folder_of(Llama(LLAMA), tmp_path) / "model.safetensors")
    plain = Llama.from_pretrained(tmp_path)  # float32 as saved: views of the mapping
    assert file in Path("/proc/self/maps").read_text()
    del plain
    gc.collect()
    quantized = Llama.from_pretrained(tmp_path, quantize="nf4")
    assert file not in Path("/proc/self/maps").read_text()
    expected = modify.quantize(Llama.from_pretrained(tmp_path), "nf4")
    ids = torch.randint(0, 64, (2, 16))
    assert torch.equal(quantized(ids), expected(ids))
