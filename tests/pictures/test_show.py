"""``modify.show``: what each node and parameter line says, what is marked shared and new, the file."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from helpers import assert_state_equal, state_snapshot
from torch import nn
from treescope import lowering
from treescope import rendering_parts as parts

import modify
from modify.models import GPT, GPTConfig
from modify.pictures.show import _ids, _shared_parameters
from modify.pictures.tree import Marks, module_node, shape_of


def tiny_gpt() -> GPT:
    return GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8, dropout=0.0))


def as_text(model: nn.Module, *others: nn.Module, first: nn.Module | None = None) -> str:
    """The picture of ``model`` as treescope's text rendering, every node expanded."""
    first = first if first is not None else model
    shapes = {path: shape_of(m) for path, m in first.named_modules(remove_duplicate=False)}
    paths = frozenset(path for path, _ in model.named_modules(remove_duplicate=False))
    base = None if first is model else _ids(first)
    models = (model, *others) if first is model else (first, model, *others)
    marks = Marks(_shared_parameters(models), base, shapes, paths)
    return lowering.render_to_text_as_root(parts.build_full_line_with_annotations(module_node(model, "", "", marks)))


def test_every_node_shows_class_path_traits_and_extra_repr():
    model = tiny_gpt()
    text = as_text(model)
    for path, module in model.named_modules():
        traits = modify.pictures.tree.trait_names(module)
        assert f"# {path or '(root)'}" in text and traits in text
        extra = module.extra_repr()
        assert f"{type(module).__name__}({extra})" in text if extra else type(module).__name__ in text


def test_reference_names_are_shown_beside_paths():
    model = tiny_gpt()
    named = [(p, m.reference_name) for p, m in model.named_modules() if getattr(m, "reference_name", None)]
    text = as_text(model)
    assert all(f"# {path} = {reference}" in text for path, reference in named if path != reference)


def test_every_parameter_line_shows_dtype_shape_and_trainable():
    model = modify.Sequential(proj=modify.Linear(3, 2), norm=modify.LayerNorm(2), affine=modify.ElementwiseAffine(2))
    model.proj.bias.requires_grad_(False)
    text = as_text(model.double())
    assert re.search(r"weight: float64\[2, 3\] trainable", text)
    assert re.search(r"bias: float64\[2\] frozen", text)
    assert "shared" not in text and "new" not in text


def test_lora_sibling_marks_shared_base_and_new_adapter():
    base = tiny_gpt()
    adapted = modify.lora(base, 2, where="*.c_attn")
    text = as_text(adapted, first=base)
    lora_path = next(p for p, m in adapted.named_modules() if isinstance(m, modify.LoRA))
    lines = text.splitlines()
    lora_line = next(line for line in lines if f"# {lora_path} " in line)
    assert "LoRA(" in lora_line and " new" in lora_line
    params = dict(adapted.named_parameters())
    base_params = {id(p) for p in base.parameters()}
    assert sum(" new" in line for line in lines if re.search(r"^\s*weight: ", line)) == sum(
        id(p) not in base_params for name, p in params.items() if name.endswith("weight")
    )
    shared_lines = [line for line in lines if line.strip().endswith("shared")]
    every = [p for _, p in adapted.named_parameters(remove_duplicate=False)]  # tied weights drawn at each place
    assert len(shared_lines) == sum(id(p) in base_params for p in every)
    base_text = as_text(base, adapted)
    assert base_text.count("shared") == len(list(base.named_parameters(remove_duplicate=False)))
    assert " new" not in base_text


def test_rebuilt_combinators_on_the_way_are_not_marked_new():
    base = tiny_gpt()
    adapted = modify.lora(base, 2, where="*.c_attn")
    marks = Marks(_shared_parameters((base, adapted)), _ids(base),
                  {p: shape_of(m) for p, m in base.named_modules()}, frozenset())  # fmt: skip
    replaced = [path for path, m in adapted.named_modules() if marks.is_replaced(m, path)]
    tops = [p for p in replaced if not any(p.startswith(q + ".") for q in replaced)]
    assert tops == [p for p, m in adapted.named_modules() if isinstance(m, modify.LoRA)]
    assert not any(marks.is_replaced(m, p) for p, m in base.named_modules())


def test_show_returns_one_offline_page_and_writes_it(tmp_path):
    base = tiny_gpt()
    adapted = modify.lora(base, 2, where="*.c_attn")
    before = state_snapshot(base)
    target = tmp_path / "new" / "models.html"
    page = modify.show(base, adapted, path=target)
    assert target.read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "http" not in page
    assert page.count("<section>") == 2 and "treescope-container" in page
    assert_state_equal(base, before)


def test_show_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = modify.show(modify.Linear(2, 2))
    assert "Linear" in page and list(tmp_path.iterdir()) == []


def test_plain_torch_modules_are_drawn_too():
    page = modify.show(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    assert "in_features=2, out_features=3" in page


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="at least one model"):
        modify.show()
    with pytest.raises(TypeError):
        modify.show(torch.zeros(2))
    with pytest.raises(TypeError):
        modify.show(modify.Linear(2, 2), path=3)


def test_in_a_notebook_the_page_is_displayed_inline(monkeypatch):
    import types

    shown = []

    class ZMQInteractiveShell:  # the kernel's shell class, by name
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    display = types.ModuleType("IPython.display")
    display.HTML = lambda data: ("HTML", data)
    display.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    page = modify.show(modify.Linear(2, 2))
    assert shown == [("HTML", page)]
    ipython.get_ipython = lambda: None  # a plain Python session: nothing displayed
    modify.show(modify.Linear(2, 2))
    assert len(shown) == 1
