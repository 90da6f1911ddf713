"""Criteria: reference-name globs on GPT and Llama and hand-named layers, any_of, the tuple error."""

from __future__ import annotations

import json

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig, Llama, LlamaConfig


def gpt() -> GPT:
    return GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8))


def llama() -> Llama:
    return Llama(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1))


def test_transformers_names_select_gpt_layers():
    model = gpt()
    assert modify.select(model, "transformer.h.0.attn.c_attn").paths() == ["transformer.h.0.attn.1.1.c_attn"]
    assert modify.select(model, "*.mlp.c_fc").paths() == ["transformer.h.0.mlp.1.1.c_fc", "transformer.h.1.mlp.1.1.c_fc"]
    assert modify.select(model, "transformer.wte").paths() == ["transformer.embed.lookup.wte"]
    assert modify.select(model, "transformer.h.1.ln_2").paths() == ["transformer.h.1.mlp.1.1.ln_2.affine"]


def test_transformers_names_select_llama_layers():
    model = llama()
    assert modify.select(model, "model.layers.0.self_attn.q_proj").paths() == [
        path for path, m in model.named_modules() if path.startswith("model.layers.0.") and path.endswith("q_proj")
    ]
    names = {m.reference_name for _, m in modify.select(model, modify.Linear)}
    expected = {f"model.layers.{i}.{part}" for i in range(2) for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")} | {"lm_head"}
    assert names == expected


def test_the_names_of_a_saved_config_select_the_adapted_layers(tmp_path):
    base = gpt()
    adapted = modify.lora(base, rank=2, where=modify.any_of("*.c_attn", "*.mlp.c_proj"))
    modify.save_adapters(adapted, tmp_path)
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "mlp.c_proj"))
    again = modify.lora(base, rank=2, where=modify.any_of(*targets))
    assert modify.select(again, modify.LoRA).paths() == modify.select(adapted, modify.LoRA).paths()


def test_a_hand_set_reference_name_selects_and_names_adapter_keys(tmp_path):
    def model():
        net = modify.Sequential(fc=modify.Linear(4, 4), head=modify.Linear(4, 2))
        net.fc.reference_name = "encoder.layer.0.dense"
        return net

    base = model()
    assert modify.select(base, "encoder.*").paths() == ["fc"]
    adapted = modify.lora(base, rank=2, where="encoder.layer.*")
    torch.nn.init.normal_(adapted.fc.up.weight)
    modify.save_adapters(adapted, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["encoder.layer.0.dense"]
    other = model()
    other.load_state_dict(base.state_dict())
    loaded = modify.load_adapters(other, tmp_path)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), adapted(x))


def test_any_of_is_the_union_and_a_tuple_the_intersection():
    net = modify.Sequential(q=modify.Linear(4, 4), k=modify.Linear(4, 4), v=modify.ReLU())
    assert modify.select(net, modify.any_of("q", modify.ReLU)).paths() == ["q", "v"]
    assert modify.select(net, modify.any_of("q", "k"), modify.Linear).paths() == ["q", "k"]
    assert modify.select(net, modify.any_of(modify.any_of("q"), "v")).paths() == ["q", "v"]
    assert repr(modify.any_of("q", modify.ReLU)) == "any_of('q', ReLU)"
    with pytest.raises(TypeError, match="at least one"):
        modify.any_of()
    with pytest.raises(TypeError, match="criterion"):
        modify.any_of(3)


def test_a_tuple_that_matches_nothing_says_it_means_all_of_and_names_any_of():
    with pytest.raises(ValueError, match=r"matches no layer.*all of its criteria.*modify\.any_of\('\*\.c_attn'"):
        modify.lora(gpt(), 8, where=("*.c_attn", "*.c_proj", "*.c_fc"))
    with pytest.raises(ValueError, match=r"^lora: `where` \('nothing'\) matches no layer of the GPT$"):
        modify.lora(gpt(), 8, where="nothing")


def test_a_reference_name_selects_the_outermost_module_carrying_it():
    adapted = modify.lora(gpt(), rank=2, where=modify.any_of("lm_head", "*.c_attn"))
    assert modify.select(adapted, "lm_head").paths() == ["lm_head"]  # the block, not the layer inside it
    assert modify.select(adapted, "transformer.h.0.attn.c_attn").paths() == ["transformer.h.0.attn.1.1.c_attn"]
    assert modify.select(adapted, "*.base").paths() != []  # the layer inside is still reached by its path
    wrapped = modify.select(adapted, "lm_head").insert_after(modify.Scale(1.0))
    assert type(wrapped.lm_head[0]) is modify.LoRA and type(wrapped.lm_head[0].base) is modify.Linear
    ids = torch.randint(0, 16, (2, 5))
    assert torch.equal(wrapped(ids), adapted(ids))
    with pytest.raises(TypeError, match="is a LoRA"):  # the name selects the block, as its path does
        modify.lora(adapted, rank=2, where="transformer.h.0.attn.c_attn")
    stacked = modify.lora(adapted, rank=2, where=(modify.Linear, "transformer.h.0.attn.c_attn"))  # the layer inside
    assert modify.select(stacked, modify.LoRA, "transformer.h.0.*").paths() == [
        "transformer.h.0.attn.1.1.c_attn", "transformer.h.0.attn.1.1.c_attn.1.base"]
