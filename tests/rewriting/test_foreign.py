"""A transformers model given to select/rewrite, and PEFT's list of names as a criterion: errors that
name modify's way in (``modify.models.<Family>.from_pretrained``, ``modify.convert``, ``any_of``)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ResNetConfig, ResNetForImageClassification

import modify
from modify.rewriting.foreign import foreign_model_hint


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2))


def test_select_queries_a_transformers_model_but_apply_says_how_to_get_in():
    model = tiny_gpt2()
    selection = modify.select(model, "*.c_attn")
    assert selection.paths() == ["transformer.h.0.attn.c_attn"]  # a query still answers
    with pytest.raises(ValueError) as error:
        selection.apply(lambda m: m)
    message = str(error.value)
    assert "inside the leaf GPT2LMHeadModel at '<root>'" in message
    assert "modify.models.GPT.from_pretrained(folder)" in message and "modify.convert(model, args)" in message


def test_rewrite_on_a_transformers_model_says_how_to_get_in():
    with pytest.raises(ValueError, match=r"modify\.models\.GPT\.from_pretrained.*modify\.convert\(model, args\)"):
        modify.rewrite(tiny_gpt2(), lambda m: m, torch.nn.LayerNorm)


def test_the_family_is_named_where_modify_has_it_and_convert_always():
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3))
    assert "modify.models.ResNet.from_pretrained" in foreign_model_hint(resnet)
    unknown = type("BertModel", (torch.nn.Module,), {"__module__": "transformers.models.bert.modeling_bert"})()
    hint = foreign_model_hint(unknown)
    assert "from_pretrained" not in hint and "modify.convert(model, args)" in hint


def test_models_of_modify_and_torch_get_no_hint():
    assert foreign_model_hint(torch.nn.Linear(2, 2)) == "" and foreign_model_hint(modify.Linear(2, 2)) == ""
    with pytest.raises(ValueError, match="plain torch.nn Sequential container") as raised:
        modify.select(modify.Sequential(torch.nn.Sequential(torch.nn.ReLU())), torch.nn.ReLU).apply(lambda m: m)
    assert "from_pretrained" not in str(raised.value)


@pytest.mark.parametrize(
    ("call", "owner"),
    [(lambda m: modify.select(m, ["c_attn", "c_fc"]), "select"),
     (lambda m: modify.rewrite(m, lambda x: x, ["c_attn", "c_fc"]), "rewrite"),
     (lambda m: modify.parameters(m, ["c_attn", "c_fc"]), "parameters")],
)
def test_a_list_criterion_names_any_of(call, owner):
    model = modify.Sequential(c_attn=modify.Linear(4, 4), c_fc=modify.Linear(4, 4))
    with pytest.raises(TypeError) as error:
        call(model)
    message = str(error.value)
    assert message.startswith(f"{owner}: argument 'where' got a list ['c_attn', 'c_fc']; a list is not a criterion")
    assert "where=modify.any_of('*.c_attn', '*.c_fc')" in message
