"""What all models share: built from leaves, Sequential and Parallel alone; state dicts; checkpoint errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

import modify
from helpers import assert_state_equal, state_snapshot
from modify import Leaf, Parallel, Positions, Sequential
from modify._core.wrapped import Opaque
from modify.models import (
    GPT,
    CheckpointError,
    GPTConfig,
    Llama,
    LlamaConfig,
    ResNet,
    ResNetConfig,
)
from modify.primitives import Positions


def tiny_models() -> dict[str, torch.nn.Module]:
    return {
        "gpt": GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=2, n_head=2, n_embd=16)),
        "llama": Llama(
            LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        ),  # fmt: skip
        "resnet": ResNet(ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic")),
        "resnet bottleneck": ResNet(ResNetConfig(embedding_size=8, hidden_sizes=(16, 32), depths=(1, 1))),
    }


INPUTS = {
    "gpt": lambda: torch.randint(0, 20, (2, 8)),
    "llama": lambda: torch.randint(0, 20, (2, 8)),
    "resnet": lambda: torch.randn(2, 3, 32, 32),
    "resnet bottleneck": lambda: torch.randn(2, 3, 32, 32),
}


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.mark.parametrize("name", list(INPUTS))
def test_only_leaves_sequential_and_parallel(models, name):
    for path, module in models[name].named_modules():
        children = list(module.children())
        assert not isinstance(module, Opaque), path  # no plain torch.nn module anywhere
        if children:
            assert isinstance(module, (Sequential, Parallel)), (path, type(module))
            base = Sequential if isinstance(module, Sequential) else Parallel
            assert type(module).forward is base.forward, f"{path}: {type(module).__name__} re-behaves"
        else:
            assert isinstance(module, Leaf), (path, type(module))


@pytest.mark.parametrize("name", list(INPUTS))
def test_state_dict_keys_are_named_parameters_and_buffers_and_round_trip(models, name):
    model = models[name]
    params = [k for k, _ in model.named_parameters(remove_duplicate=False)]
    buffers = [
        f"{path}.{name}" if path else name
        for path, module in model.named_modules()
        for name, value in module.named_buffers(recurse=False)
        if name not in module._non_persistent_buffers_set
    ]
    assert sorted(model.state_dict()) == sorted(params + buffers)
    twin = tiny_models()[name]
    twin.load_state_dict(model.state_dict())
    assert_state_equal(twin, state_snapshot(model))
    x = INPUTS[name]()
    torch.testing.assert_close(twin.eval()(x), model.eval()(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", list(INPUTS))
def test_deepcopy_keeps_outputs_config_and_ties(models, name):
    model = models[name].eval()
    twin = copy.deepcopy(model)
    x = INPUTS[name]()
    torch.testing.assert_close(twin(x), model(x), atol=0, rtol=0)
    assert twin.config == model.config and type(twin) is type(model)
    if isinstance(model, GPT):
        assert twin.lm_head.weight is twin.transformer.embed.lookup.wte.weight
        assert twin.lm_head.weight is not model.lm_head.weight


# Checkpoint errors, shared by every model (one reader, one loader).

SMALL = dict(vocab_size=20, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)


def hf_state() -> dict[str, torch.Tensor]:
    """A complete Hugging Face Llama state dict for SMALL, from our own model through its key map."""
    from modify.models.llama import HF_KEYS

    model = Llama(LlamaConfig(**SMALL))
    return {HF_KEYS.reference_key(k): v.clone() for k, v in model.state_dict().items()}


def write_folder(path, state, config=None):
    save_file(state, path / "model.safetensors")
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def test_one_error_lists_missing_unexpected_and_mismatched_keys():
    state = hf_state()
    del state["model.norm.weight"], state["lm_head.weight"]
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 15)
    state["model.layers.0.self_attn.bogus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as caught:
        Llama.from_pretrained(state, **SMALL)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.missing == ["model.norm.weight", "lm_head.weight"]
    assert error.unexpected == ["model.layers.0.self_attn.bogus.weight"]
    assert error.mismatched == [
        "model.layers.0.self_attn.q_proj.weight: checkpoint (16, 15), model (16, 16) "
        "(model key 'model.layers.0.self_attn.1.1.proj.q_proj.weight')"
    ]
    assert str(error).startswith("Llama.from_pretrained: the checkpoint does not fit the model")


def test_a_complete_state_dict_loads(tmp_path):
    state = hf_state()
    llama = Llama.from_pretrained(write_folder(tmp_path, state, SMALL))
    assert torch.equal(llama.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(llama.model.norm.affine.weight, state["model.norm.weight"])


def test_sharded_safetensors_folder_loads(tmp_path):
    state = hf_state()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:5], "model-00002-of-00002.safetensors": keys[5:]}
    for file, names in shards.items():
        save_file({k: state[k] for k in names}, tmp_path / file)
    weight_map = {k: file for file, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    llama = Llama.from_pretrained(tmp_path)
    assert torch.equal(llama.model.embed.embed_tokens.weight, state["model.embed_tokens.weight"])


def test_folder_without_config_json(tmp_path):
    write_folder(tmp_path, hf_state())
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Llama.from_pretrained(tmp_path)


def test_folder_without_weights_and_missing_paths(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    with pytest.raises(FileNotFoundError, match="holds none of model.safetensors"):
        Llama.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        GPT.from_pretrained(tmp_path / "nowhere")


def test_files_that_are_not_state_dicts(tmp_path):
    torch.save({"model": hf_state(), "step": 3}, tmp_path / "ckpt.pt")  # a training checkpoint
    with pytest.raises(CheckpointError, match="ckpt.pt' is not a state_dict"):
        Llama.from_pretrained(tmp_path / "ckpt.pt", **SMALL)
    with pytest.raises(TypeError, match="source"):
        ResNet.from_pretrained(42)


def test_pickled_code_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(1), "fn": copy.deepcopy}, tmp_path / "evil.bin")  # needs unpickling code
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        GPT.from_pretrained(tmp_path / "evil.bin", vocab_size=20)


def test_unknown_config_keywords(tmp_path):
    with pytest.raises(TypeError, match=r"unknown config field\(s\) \['hidden'\]"):
        Llama.from_pretrained(write_folder(tmp_path, hf_state(), SMALL), hidden=3)
