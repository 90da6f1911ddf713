"""PEFT's habits given to ``lora``: its LoraConfig names, its list of target modules, a transformers
model. Each is a TypeError that names modify's way (the teaching words are asserted)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import peft
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import modify
from modify.adapters.peft_names import PEFT_NAMES


def small_model() -> modify.Sequential:
    return modify.Sequential(c_attn=modify.Linear(4, 4), c_fc=modify.Linear(4, 4))


def test_every_name_in_the_table_is_a_field_of_peft_lora_config():
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert set(PEFT_NAMES) <= fields, set(PEFT_NAMES) - fields


@pytest.mark.parametrize(
    ("peft_name", "value", "ours"),
    [("r", 8, "rank"), ("lora_alpha", 16, "alpha"), ("lora_dropout", 0.1, "dropout"), ("use_dora", True, "dora"),
     ("target_modules", ["c_attn"], "where")],
)
def test_peft_names_say_modifys_name(peft_name, value, ours):
    model = small_model()
    with pytest.raises(TypeError) as error:
        modify.lora(model, **{peft_name: value}) if peft_name == "r" else modify.lora(model, 4, **{peft_name: value})
    message = str(error.value)
    assert message.startswith(f"lora: {peft_name}= is PEFT's LoraConfig name; modify's is {ours}"), message
    assert ours in inspect.signature(modify.lora).parameters  # the name we teach is lora's own


def test_target_modules_list_names_any_of_with_globs():
    with pytest.raises(TypeError, match=re.escape("where=modify.any_of('*.c_attn', '*.c_fc')")):
        modify.lora(small_model(), 4, target_modules=["c_attn", "c_fc"])


@pytest.mark.parametrize("name", ["init_lora_weights", "bias", "modules_to_save", "task_type"])
def test_peft_options_without_a_counterpart_say_so(name):
    with pytest.raises(TypeError, match=f"lora: {name}= is PEFT's LoraConfig name; modify's is none"):
        modify.lora(small_model(), 4, **{name: "x"})


def test_modify_names_still_work_and_the_model_is_untouched():
    model = small_model()
    adapted = modify.lora(model, rank=2, alpha=4, dropout=0.0, where="c_attn")
    assert isinstance(adapted.c_attn, modify.LoRA) and not isinstance(model.c_attn, modify.LoRA)


@pytest.mark.parametrize("where", [["c_attn", "c_fc"], {"c_attn"}])
@pytest.mark.parametrize("inside_a_tuple", [False, True])
def test_a_list_where_is_not_a_criterion_and_names_any_of(where, inside_a_tuple):
    with pytest.raises(TypeError) as error:
        modify.lora(small_model(), 4, where=(modify.Linear, where) if inside_a_tuple else where)
    message = str(error.value)
    assert message.startswith(f"lora: argument 'where' got a {type(where).__name__}")
    assert f"a {type(where).__name__} is not a criterion" in message and "modify.any_of('*.c_attn'" in message
    assert "a tuple means all of its criteria must hold" in message


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2))


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(("make", "family"), [(tiny_gpt2, "GPT"), (tiny_llama, "Llama")])
def test_a_transformers_model_points_to_from_pretrained_and_convert(make, family):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError) as error:
        modify.lora(model, 4, where=torch.nn.Linear)
    message = str(error.value)
    assert message.startswith(f"lora: {type(model).__name__} is a transformers model")
    assert f"modify.models.{family}.from_pretrained(folder)" in message and "save_pretrained(folder)" in message
    assert "modify.convert(model, args)" in message
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
