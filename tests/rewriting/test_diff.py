"""``modify.diff``: replaced, added and removed paths and shared, new and gone parameters, checked
against sets built by hand from ``named_modules``/``named_parameters`` and ``is``."""

from __future__ import annotations

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig
from tests.helpers import assert_state_equal, state_snapshot


def small_gpt() -> GPT:
    return GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8))


def names_of(model: torch.nn.Module, parameters) -> list[str]:
    ids = {id(p) for p in parameters}
    seen, names = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in ids and id(p) not in seen:
            seen.add(id(p))
            names.append(name)
    return names


def test_lora_lists_each_adapted_layer_once_with_its_adapter_parameters():
    gpt = small_gpt()
    before = state_snapshot(gpt)
    adapted = modify.lora(gpt, 4, where="*.c_attn")
    d = modify.diff(gpt, adapted)
    c_attn = modify.select(gpt, "*.c_attn").paths()
    assert d.replaced == c_attn and len(c_attn) == 2 and d.added == [] and d.removed == []
    assert d.new == names_of(adapted, modify.lora_parameters(adapted)) and d.gone == []
    assert d.shared == names_of(adapted, gpt.parameters())  # every base parameter, tied ones once
    above = [p for p, _ in gpt.named_modules() if any(c.startswith(f"{p}.") or not p for c in c_attn)]
    assert d.rebuilt == above  # only the combinators on the way to a change are new objects
    lines = str(d).splitlines()
    assert lines[0] == f"GPT -> GPT: 2 replaced, 0 added, 0 removed, {len(above)} rebuilt on the way"
    assert [line.split(":")[0] for line in lines[1:-1]] == [f"  replaced {p}" for p in c_attn]
    for path, line in zip(c_attn, lines[1:-1]):
        block = adapted.get_submodule(path)
        kept = next(p for p, m in block.named_modules() if m is block.base)
        new = ", ".join(f".{n} {tuple(p.shape)}" for n, p in block.named_parameters() if p not in set(gpt.parameters()))
        layers = f"Linear({block.base.extra_repr()}) -> LoRA({block.extra_repr()})"
        assert line == f"  replaced {path}: {layers}, the Linear kept at .{kept}; new {new}"
    shared_numel = sum(p.numel() for p in gpt.parameters())
    new_numel = sum(p.numel() for p in modify.lora_parameters(adapted))
    assert lines[-1] == (f"parameters: {len(d.shared)} shared ({shared_numel:,} elements), "
                         f"{len(d.new)} new ({new_numel:,}), 0 gone (0)")
    assert_state_equal(gpt, before)


def test_merge_lora_replaces_each_block_by_a_layer_with_a_new_weight():
    base = modify.Sequential(modify.Linear(6, 6), modify.ReLU(), modify.Linear(6, 2))
    adapted = modify.lora(base, 2)
    merged = modify.merge_lora(adapted)
    d = modify.diff(adapted, merged)
    assert d.replaced == ["0", "2"] and d.added == d.removed == []
    assert d.new == ["0.weight", "2.weight"]
    gone = {id(merged_p) for merged_p in merged.parameters()}
    assert d.gone == [n for n, p in adapted.named_parameters() if id(p) not in gone]
    kept = next(p for p, m in adapted[0].named_modules() if m is base[0])
    merged_layer = f"LoRA({adapted[0].extra_repr()}) -> Linear(in_features=6, out_features=6, bias=True)"
    assert f"replaced 0: {merged_layer}; new .weight (6, 6); gone .{kept}.weight" in str(d)


def test_the_same_model_has_no_change():
    gpt = small_gpt()
    d = modify.diff(gpt, gpt)
    assert d.replaced == d.added == d.removed == d.rebuilt == d.new == d.gone == []
    assert d.shared == [n for n, _ in gpt.named_parameters()]


def test_insert_before_keeps_the_module_inside_its_replacement():
    net = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
    d = modify.diff(net, modify.select(net, modify.ReLU).insert_before(modify.Scale(2.0)))
    assert d.replaced == ["1"] and "replaced 1: ReLU -> Sequential, the ReLU kept at .1" in str(d)


def test_paths_only_on_one_side_are_added_or_removed():
    short = modify.Sequential(a=modify.Linear(4, 4))
    longer = modify.Sequential(a=short.a, b=modify.Sequential(modify.ReLU(), modify.Linear(4, 4)))
    forward = modify.diff(short, longer)
    assert forward.added == ["b"] and forward.rebuilt == [""] and forward.new == ["b.1.weight", "b.1.bias"]
    assert "  added b: Sequential; new .1.weight (4, 4), .1.bias (4,)" in str(forward)
    backward = modify.diff(longer, short)
    assert backward.removed == ["b"] and backward.gone == ["b.1.weight", "b.1.bias"]


def test_arguments_that_are_not_modules_are_refused():
    with pytest.raises(TypeError, match="diff: argument 'b' got str"):
        modify.diff(small_gpt(), "adapted")
