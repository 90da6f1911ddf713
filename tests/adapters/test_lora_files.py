"""save_adapters / load_adapters: PEFT's folder format, both ways, with PEFT itself on GPT-2 and Llama."""

from __future__ import annotations

import contextlib
import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import modify
from modify.models import GPT, CheckpointError, Llama, ResNet
from tests.helpers import assert_close

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

GPT_SIZES = dict(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2)
LLAMA_SIZES = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)  # fmt: skip


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' and PEFT's own notices (fan_in_fan_out, deprecations)
        yield


def gpt2_pair():
    """A random GPT2LMHeadModel and modify's GPT with its weights."""
    with quiet():
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT_SIZES, bos_token_id=0, eos_token_id=0)).eval()
    ours = GPT.from_pretrained(hf.state_dict(), vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return hf, ours


def llama_pair():
    with quiet():
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_SIZES)).eval()
    return hf, Llama.from_pretrained(hf.state_dict(), **LLAMA_SIZES)


def randomise(params, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


def logits(model, ids):
    with torch.no_grad(), quiet():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def ours_adapted(name: str, base, gen):
    if name == "gpt2":  # c_attn rank 4, c_fc rank 2 (rank_pattern), the token embedding too
        adapted = modify.lora(base, 4, 8.0, where="*.c_attn")
        adapted = modify.lora(adapted, 2, 3.0, where=(modify.Linear, "*.c_fc"))
        adapted = modify.lora(adapted, 4, 8.0, where=modify.Embedding)
    else:  # DoRA on the attention projections
        adapted = modify.lora(base, 4, 8.0, where=lambda path, m: path.endswith(("q_proj", "v_proj")), dora=True)
    randomise(modify.lora_parameters(adapted), gen)
    return adapted


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_our_folder_loads_in_peft_with_equal_logits(name, tmp_path, gen):
    hf, base = gpt2_pair() if name == "gpt2" else llama_pair()
    adapted = ours_adapted(name, base, gen)
    modify.save_adapters(adapted, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] == (name == "llama")
    keys = load_file(tmp_path / "adapter_model.safetensors")
    if name == "gpt2":
        assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
        assert "base_model.model.transformer.wte.lora_embedding_A" in keys
        assert config["rank_pattern"] == {f"transformer.h.{i}.mlp.c_fc": 2 for i in range(2)}
    else:
        assert "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector" in keys
    with quiet():
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path).eval()
    ids = torch.randint(0, 100, (2, 16), generator=gen)
    expected = logits(peft_model, ids)
    assert_close(logits(adapted, ids), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, logits(hf, ids), atol=1e-3)  # the adapters matter


def peft_folder(name: str, hf, folder, gen):
    if name == "gpt2":
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "wte"], fan_in_fan_out=True,
                                 rank_pattern={"mlp.c_proj": 2}, alpha_pattern={"mlp.c_proj": 5})  # fmt: skip
    else:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_rslora=True)
    with quiet():
        peft_model = peft.get_peft_model(copy.deepcopy(hf), config)
    randomise([p for n, p in peft_model.named_parameters() if "lora_" in n], gen)
    with quiet():
        peft_model.save_pretrained(folder)  # with lm_head targeted, PEFT saves it whole beside the adapters
    return peft_model.eval()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_folder_peft_wrote_loads_with_equal_logits(name, tmp_path, gen):
    hf, base = gpt2_pair() if name == "gpt2" else llama_pair()
    peft_model = peft_folder(name, hf, tmp_path, gen)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = modify.load_adapters(base, tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())  # base untouched
    expected_blocks = 2 * 3 + 1 if name == "gpt2" else 2 * 7 + 1
    assert len(modify.select(adapted, modify.LoRA)) == expected_blocks
    ids = torch.randint(0, 100, (2, 16), generator=gen)
    assert_close(logits(adapted, ids), logits(peft_model, ids), atol=1e-5, rtol=1e-5)
    if name == "gpt2":
        ranks = {b.rank for p, b in modify.select(adapted, modify.LoRA) if p.endswith("mlp.1.1.c_proj")}
        assert ranks == {2}
    round_trip = tmp_path / "again"
    modify.save_adapters(adapted, round_trip)
    again = modify.load_adapters(base, round_trip)
    assert torch.equal(logits(again, ids), logits(adapted, ids))


def test_resnet_folder_names_transformers_layers_and_loads_in_peft(tmp_path, gen):
    with quiet():
        hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(
            num_labels=5, layer_type="basic", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    hf.save_pretrained(tmp_path / "model")
    base = ResNet.from_pretrained(tmp_path / "model")
    adapted = modify.lora(base, rank=2, where=modify.any_of(modify.Conv2d, "classifier.1"))
    randomise(modify.lora_parameters(adapted), gen)
    modify.save_adapters(adapted, tmp_path / "adapters")
    targets = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())["target_modules"]
    assert "resnet.embedder.embedder.convolution" in targets and "classifier.1" in targets
    with quiet():
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapters").eval()
    images = torch.randn(2, 3, 32, 32, generator=gen)
    expected = logits(peft_model, images)
    assert_close(logits(adapted, images), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, logits(hf, images), atol=1e-3)  # the adapters matter
    assert torch.equal(logits(modify.load_adapters(base, tmp_path / "adapters"), images), logits(adapted, images))


def test_modify_paths_for_other_models(tmp_path, gen):
    base = modify.Sequential(body=modify.Sequential(fc=modify.Linear(4, 6), act=modify.ReLU()), head=modify.Linear(6, 2))
    adapted = modify.lora(base, rank=3, alpha=5.0)
    randomise(modify.lora_parameters(adapted), gen)
    modify.save_adapters(adapted, str(tmp_path))
    keys = sorted(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == [f"base_model.model.{layer}.lora_{ab}.weight" for layer in ("body.fc", "head") for ab in "AB"]
    again = modify.load_adapters(base, tmp_path)
    x = torch.randn(3, 4, generator=gen)
    assert torch.equal(again(x), adapted(x))
    with pytest.raises(ValueError, match="holds no LoRA block"):
        modify.save_adapters(base, tmp_path / "none")


def bad_folders(tmp_path, good):
    """(name, how to break a copy of the good folder, what the error must say)."""

    def rewrite_weights(change):
        def apply(folder):
            tensors = load_file(folder / "adapter_model.safetensors")
            change(tensors)
            save_file(tensors, folder / "adapter_model.safetensors")
        return apply

    def config(value):
        return lambda folder: (folder / "adapter_config.json").write_text(value)

    return [
        ("no config", lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json' is missing"),
        ("not json", config("{not json"), "is not JSON"),
        ("a list", config("[1, 2]"), "holds a list, not a JSON object"),
        ("not lora", config(json.dumps({"peft_type": "IA3", "r": 4, "lora_alpha": 8})), "peft_type 'IA3'"),
        ("no weights", lambda f: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors' is missing"),
        ("garbage", lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00garbage"), "not a safetensors file"),
        ("missing", rewrite_weights(lambda t: t.pop("base_model.model.head.lora_B.weight")), "missing keys (1)"),
        ("unexpected", rewrite_weights(lambda t: t.update({"base_model.model.nowhere.lora_A.weight": torch.zeros(1)})),
         "unexpected keys (1)"),
        ("mis-shaped", rewrite_weights(lambda t: t.update({"base_model.model.head.lora_A.weight": torch.zeros(2, 6)})),
         "base_model.model.head.lora_A.weight: file (2, 6), model (3, 6)"),
    ]  # fmt: skip


def test_bad_folders_raise_one_checkpoint_error_naming_the_file(tmp_path, gen):
    base = modify.Sequential(body=modify.Linear(4, 6), head=modify.Linear(6, 2))
    good = tmp_path / "good"
    modify.save_adapters(modify.lora(base, rank=3), good)
    for name, damage, message in bad_folders(tmp_path, good):
        folder = tmp_path / name
        folder.mkdir()
        for file in good.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        damage(folder)
        with pytest.raises(CheckpointError) as info:
            modify.load_adapters(base, folder)
        assert message in str(info.value), (name, str(info.value))
        assert str(folder) in str(info.value), name


def test_a_targeted_layer_without_tensors_is_missing(tmp_path):
    base = modify.Sequential(body=modify.Linear(4, 6), head=modify.Linear(6, 2))
    modify.save_adapters(modify.lora(base, rank=3), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".head." not in k}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\):\n.*head.lora_A.weight \(target_modules names it\)"):
        modify.load_adapters(base, tmp_path)
