"""The walk's rule for created modules: they take the training mode (and reference name) of the module they replace.

DESIGN §4: an adapted eval model is an eval model, with no dropout firing anywhere; every rewriter
inherits the rule from ``rebuild``, so each one that builds modules is checked here.
"""

from __future__ import annotations

import json

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig, Llama, LlamaConfig, kv_cache


def gpt() -> GPT:
    return GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8))


def llama() -> Llama:
    return Llama(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1))


def modes(model: torch.nn.Module) -> set[bool]:
    return {m.training for m in model.modules()}


IDS = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dora", [False, True])
def test_an_adapted_eval_model_is_an_eval_model_without_dropout(dora):
    base = gpt().eval()
    adapted = modify.lora(base, rank=4, dropout=0.5, where="*.c_attn", dora=dora)
    assert not adapted.training and modes(adapted) == {False}
    assert torch.equal(adapted(IDS), adapted(IDS))
    assert modes(base) == {False}


def test_an_adapted_train_model_is_in_train_mode_and_its_dropout_fires():
    base = gpt().train()
    adapted = modify.lora(base, rank=4, dropout=0.5, where="*.c_attn")
    assert modes(adapted) == {True}
    for block in modify.select(adapted, modify.LoRA).modules():
        torch.nn.init.normal_(block.up.weight)
    torch.manual_seed(0)
    assert not torch.equal(adapted(IDS), adapted(IDS))


def test_each_adapter_takes_the_mode_of_the_layer_it_replaces():
    base = modify.Sequential(a=modify.Linear(4, 4), b=modify.Linear(4, 4)).train()
    base.b.eval()
    adapted = modify.lora(base, rank=2, dropout=0.5)
    assert modes(adapted.a.adapter) == {True} and modes(adapted.b.adapter) == {False}
    assert base.a.training and not base.b.training  # the original's flags untouched


def test_load_adapters_onto_an_eval_base_is_deterministic(tmp_path):
    base = gpt()
    trained = modify.lora(base, rank=4, dropout=0.5, where="*.c_attn")
    torch.nn.init.normal_(trained.transformer.h[0].attn[1][1].c_attn.up.weight)
    modify.save_adapters(trained, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_dropout"] == 0.5
    loaded = modify.load_adapters(base.eval(), tmp_path)
    assert modes(loaded) == {False}
    assert torch.equal(loaded(IDS), loaded(IDS)) and torch.equal(loaded(IDS), trained.eval()(IDS))


def test_fused_leaves_take_the_mode_of_the_pair_they_replace():
    model = modify.Sequential(modify.LayerNorm(4), modify.ElementwiseAffine(4), modify.Scale(2.0),
                              modify.Scale(3.0)).eval()
    fused = modify.fuse(model)
    assert len(fused) < len(model) and modes(fused) == {False}
    assert modes(modify.fuse(model.train())) == {True}


@pytest.mark.parametrize("make", [gpt, llama])
def test_kv_cache_leaves_take_the_mode_of_the_leaves_they_replace(make):
    model = make().eval()
    cached = kv_cache(model)
    assert modes(cached) == {False}


def test_modules_inserted_or_rewritten_take_the_mode():
    model = modify.Sequential(modify.Linear(4, 4), modify.ReLU()).eval()
    inserted = modify.select(model, modify.ReLU).insert_after(lambda m: modify.Dropout(0.5))
    rewritten = modify.rewrite(model, lambda m: modify.Sequential(modify.Dropout(0.5), m), modify.Linear)
    assert modes(inserted) == {False} and modes(rewritten) == {False}
    x = torch.randn(3, 4)
    assert torch.equal(inserted(x), model(x)) and torch.equal(rewritten(x), model(x))


def test_modules_already_in_the_model_keep_their_mode():
    inner = modify.Linear(4, 4).train()
    model = modify.Sequential(inner, modify.Scale(2.0)).eval()
    model[0].train()
    moved = modify.rewrite(model, lambda m: inner, modify.Scale)  # a module of the model placed again
    assert moved[1] is inner and inner.training


def test_the_placed_module_takes_the_reference_name_unless_it_has_one():
    layer = modify.Linear(4, 4)
    layer.reference_name = "encoder.dense"
    model = modify.Sequential(fc=layer)
    block = modify.lora(model, rank=2).fc
    assert block.reference_name == "encoder.dense" and block.base is layer
    named = modify.Linear(4, 4)
    named.reference_name = "other"
    assert modify.rewrite(model, lambda m: named, "fc").fc.reference_name == "other"
    assert layer.reference_name == "encoder.dense" and model.fc.reference_name == "encoder.dense"
