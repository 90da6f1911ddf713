"""Hostile inputs across public entry points (issue 11), beyond the per-family tables.

Each row is one bad input: the call, the documented error type, and the strings its message
must hold — the class or function (construction, loading), the module path (call) or the file
and folder, and what arrived. The inputs the issue lists are tested in their family's module
(``test_layers``, ``test_norms``, ``test_attention``, ``test_checks``, ``test_structure``,
``test_arithmetic``, ``test_models_llama``, ``test_generate``, ``test_lora``,
``test_checkpoint_errors``); these are the ones a demanding user tries next.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import modify
from modify.models import GPT, CheckpointError, GPTConfig, generate, kv_cache


def small() -> modify.Sequential:
    return modify.Sequential(fc1=modify.Linear(4, 4), act=modify.ReLU(), fc2=modify.Linear(4, 2))


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8)).eval()


def assign(value) -> None:
    """``mutable(model).fc1.weight = value``."""
    modify.mutable(small()).fc1.weight = value


def mixed(ids):
    base = small()
    return modify.MixedLoRA([modify.lora(base, 2), modify.lora(base, 4)])(torch.randn(3, 4), ids)


def a_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("not a folder")
    return tmp_path / "notes.txt"


def saved_gpt(tmp_path: Path) -> Path:
    gpt().save_pretrained(tmp_path / "gpt")
    return tmp_path / "gpt"


IDS = torch.zeros(1, 2, dtype=torch.long)
X = torch.randn(2, 4)


def at(leaf: torch.nn.Module, value):
    """``leaf`` called at path ``'op'``."""
    return modify.Sequential(op=leaf)(value)


# (id, call(tmp_path), error type, strings the message holds)
CASES = [
    # primitives: construction
    ("MaxPool2d kernel 0", lambda t: modify.MaxPool2d(0), ValueError, ["MaxPool2d", "kernel_size", "0"]),
    ("MaxPool2d dilation 0", lambda t: modify.MaxPool2d(2, dilation=0), ValueError, ["MaxPool2d", "dilation", "0"]),
    ("AvgPool2d negative kernel", lambda t: modify.AvgPool2d(-1), ValueError, ["AvgPool2d", "kernel_size", "-1"]),
    ("AvgPool2d stride 0", lambda t: modify.AvgPool2d(2, stride=(1, 0)), ValueError, ["AvgPool2d", "stride", "(1, 0)"]),
    ("AvgPool2d negative padding", lambda t: modify.AvgPool2d(3, padding=-1), ValueError,
     ["AvgPool2d", "padding", "-1"]),
    ("AdaptiveAvgPool2d 0", lambda t: modify.AdaptiveAvgPool2d((None, 0)), ValueError,
     ["AdaptiveAvgPool2d", "(None, 0)"]),
    ("Scale nan", lambda t: modify.Scale(float("nan")), ValueError, ["Scale", "nan"]),
    ("Scale inf", lambda t: modify.Scale(float("-inf")), ValueError, ["Scale", "-inf"]),
    ("LayerNorm negative eps", lambda t: modify.LayerNorm(4, eps=-1.0), ValueError, ["LayerNorm", "eps", "-1.0"]),
    ("RMSNorm nan eps", lambda t: modify.RMSNorm(4, eps=float("nan")), ValueError, ["RMSNorm", "eps", "nan"]),
    ("GroupNorm zero eps", lambda t: modify.GroupNorm(2, 4, eps=0.0), ValueError, ["GroupNorm", "eps", "0.0"]),
    ("BatchNorm1d inf eps", lambda t: modify.BatchNorm1d(4, eps=float("inf")), ValueError,
     ["BatchNorm1d", "eps", "inf"]),
    ("BatchNorm2d momentum 2", lambda t: modify.BatchNorm2d(4, momentum=2.0), ValueError,
     ["BatchNorm2d", "momentum", "2.0"]),
    ("attention scale nan", lambda t: modify.ScaledDotProductAttention(scale=float("nan")), ValueError,
     ["ScaledDotProductAttention", "scale", "nan"]),
    ("Rearrange axis on one side", lambda t: modify.Rearrange("b c -> b d"), ValueError,
     ["Rearrange", "'b c -> b d'", "['c', 'd']"]),
    ("Rearrange without arrow", lambda t: modify.Rearrange("b c"), ValueError, ["Rearrange", "'b c'"]),
    ("Rearrange unbalanced", lambda t: modify.Rearrange("b (c -> b"), ValueError, ["Rearrange", "'b (c -> b'"]),
    ("Rearrange length of no axis", lambda t: modify.Rearrange("b c -> c b", z=2), ValueError, ["Rearrange", "['z']"]),
    ("lora integer adapter_dtype", lambda t: modify.lora(small(), 2, adapter_dtype=torch.int64), TypeError,
     ["lora", "adapter_dtype", "torch.int64"]),
    ("set_checks a string", lambda t: modify.set_checks("no"), TypeError, ["set_checks", "'no'"]),
    # primitives: at call
    ("Softmax on a missing axis", lambda t: at(modify.Softmax(dim=5), X), ValueError,
     ["Softmax at 'op'", "axis 5", "(2, 4)"]),
    ("LogSoftmax on a missing axis", lambda t: at(modify.LogSoftmax(dim=-3), X), ValueError,
     ["LogSoftmax at 'op'", "axis -3", "(2, 4)"]),
    ("Sum on a missing axis", lambda t: at(modify.Sum(dim=(0, 3)), X), ValueError, ["Sum at 'op'", "axis 3", "(2, 4)"]),
    ("Mean on a missing axis", lambda t: at(modify.Mean(dim=2), X), ValueError, ["Mean at 'op'", "axis 2", "(2, 4)"]),
    ("Max on a missing axis", lambda t: at(modify.Max(dim=-3), X), ValueError, ["Max at 'op'", "axis -3", "(2, 4)"]),
    ("Split on a missing axis", lambda t: at(modify.Split(2, dim=5), X), ValueError,
     ["Split at 'op'", "axis 5", "(2, 4)"]),
    ("Flatten on a missing axis", lambda t: at(modify.Flatten(1, 3), X), ValueError,
     ["Flatten at 'op'", "axis 3", "(2, 4)"]),
    ("Transpose on a missing axis", lambda t: at(modify.Transpose(0, 4), X), ValueError,
     ["Transpose at 'op'", "axis 4", "(2, 4)"]),
    ("Permute of another rank", lambda t: at(modify.Permute(0, 1, 2), X), ValueError,
     ["Permute at 'op'", "3-d", "(2, 4)"]),
    ("Cat of unjoinable tensors", lambda t: at(modify.Cat(dim=0), (X, torch.randn(2, 3))), ValueError,
     ["Cat at 'op'", "(2, 4)", "(2, 3)"]),
    ("Cat of nothing", lambda t: at(modify.Cat(), ()), TypeError, ["Cat at 'op'", "tuple of 0"]),
    ("Cat on a missing axis", lambda t: at(modify.Cat(dim=2), (X, X)), ValueError, ["Cat at 'op'", "axis 2"]),
    ("Stack of two shapes", lambda t: at(modify.Stack(dim=0), (X, torch.randn(4, 2))), ValueError,
     ["Stack at 'op'", "(2, 4)", "(4, 2)"]),
    ("MatMul of mismatched operands", lambda t: at(modify.MatMul(), (X, torch.randn(3, 2))), ValueError,
     ["MatMul at 'op'", "(2, 4)", "(3, 2)"]),
    ("MatMul of a 0-d operand", lambda t: at(modify.MatMul(), (X, torch.tensor(2.0))), ValueError,
     ["MatMul at 'op'", "tensor()"]),
    ("Linear on integers", lambda t: at(modify.Linear(4, 2), torch.ones(2, 4, dtype=torch.long)), TypeError,
     ["Linear at 'op'", "int64"]),
    ("Reshape to too few elements", lambda t: at(modify.Reshape(3, 3), X), ValueError,
     ["Reshape at 'op'", "(3, 3)", "8 elements"]),
    ("Reshape -1 that does not divide", lambda t: at(modify.Reshape(-1, 3), X), ValueError,
     ["Reshape at 'op'", "(-1, 3)", "(2, 4)"]),
    ("Rearrange of another rank", lambda t: at(modify.Rearrange("b c h -> b (c h)"), X), ValueError,
     ["Rearrange at 'op'", "3-d", "(2, 4)"]),
    # select / rewrite / parameters
    ("select int criterion", lambda t: modify.select(small(), 42), TypeError, ["select", "42"]),
    ("select None criterion", lambda t: modify.select(small(), None), TypeError, ["select", "None"]),
    ("select list of criteria", lambda t: modify.select(small(), [modify.Linear]), TypeError, ["select", "list"]),
    ("select a string as model", lambda t: modify.select("model", modify.Linear), TypeError, ["select", "'model'"]),
    ("select predicate non-bool", lambda t: modify.select(small(), lambda p, m: 1), TypeError,
     ["select", "returned int at '<root>'"]),
    ("rewrite fn not callable", lambda t: modify.rewrite(small(), 3, modify.Linear), TypeError, ["rewrite", "int 3"]),
    ("rewrite fn returns None", lambda t: modify.rewrite(small(), lambda m: None, modify.Linear), TypeError,
     ["'fc1'", "NoneType"]),
    ("insert_after make returns int", lambda t: modify.select(small(), modify.Linear).insert_after(lambda m: 3),
     TypeError, ["'fc1'", "int"]),
    ("parameters float criterion", lambda t: modify.parameters(small(), 3.5), TypeError, ["parameters", "3.5"]),
    # mutable
    ("mutable wrong shape", lambda t: assign(torch.zeros(3, 3)), ValueError, ["Linear.weight at 'fc1'", "(3, 3)"]),
    ("mutable integer tensor", lambda t: assign(torch.zeros(4, 4, dtype=torch.long)), TypeError,
     ["Linear.weight at 'fc1'", "torch.int64"]),
    ("mutable None", lambda t: assign(None), TypeError, ["Linear.weight at 'fc1'", "NoneType"]),
    ("mutable nested list", lambda t: assign([[0.0] * 4] * 4), TypeError, ["Linear.weight at 'fc1'", "list"]),
    ("mutable not a module", lambda t: modify.mutable(3), TypeError, ["mutable", "int"]),
    # flat
    ("flat_param too short", lambda t: modify.flat(small())(torch.randn(2, 4), flat_param=torch.zeros(3)),
     ValueError, ["FlatParam", "(30,)", "(3,)"]),
    ("flat_param a batch", lambda t: modify.flat(small())(torch.randn(2, 4), flat_param=torch.zeros(2, 30)),
     ValueError, ["FlatParam", "(2, 30)", "vmap"]),
    ("flat_param integers",
     lambda t: modify.flat(small())(torch.randn(2, 4), flat_param=torch.zeros(30, dtype=torch.long)),
     ValueError, ["FlatParam", "torch.int64"]),
    ("flat_param a list", lambda t: modify.flat(small())(torch.randn(2, 4), flat_param=[0.0] * 30), TypeError,
     ["FlatParam", "list"]),
    ("flat unknown buffer", lambda t: modify.flat(small())(torch.randn(2, 4), buffers={"nope": torch.zeros(1)}),
     ValueError, ["FlatParam", "'nope'"]),
    ("flat not a module", lambda t: modify.flat("x"), TypeError, ["flat", "str"]),
    # functional_call
    ("functional_call params a list", lambda t: modify.functional_call(small(), [torch.zeros(4, 4)], torch.randn(2, 4)),
     TypeError, ["functional_call", "list"]),
    ("functional_call a float value",
     lambda t: modify.functional_call(small(), {"fc1.weight": 3.0}, torch.randn(2, 4), strict=False), TypeError,
     ["functional_call", "fc1.weight", "float"]),
    ("functional_call a non-string key",
     lambda t: modify.functional_call(small(), {1: torch.zeros(4, 4)}, torch.randn(2, 4), strict=False), ValueError,
     ["functional_call", "Sequential", "1"]),
    # adapters' files
    ("save_adapters to a file", lambda t: modify.save_adapters(modify.lora(small(), 2), a_file(t)),
     NotADirectoryError, ["save_adapters", "notes.txt", "is a file"]),
    ("save_adapters under a file", lambda t: modify.save_adapters(modify.lora(small(), 2), a_file(t) / "sub"),
     NotADirectoryError, ["save_adapters", "notes.txt", "is a file"]),
    ("save_adapters folder an int", lambda t: modify.save_adapters(modify.lora(small(), 2), 3), TypeError,
     ["save_adapters", "int"]),
    ("load_adapters a file", lambda t: modify.load_adapters(small(), a_file(t)), CheckpointError,
     ["load_adapters", "notes.txt", "is a file"]),
    ("load_adapters a missing folder", lambda t: modify.load_adapters(small(), t / "nowhere"), CheckpointError,
     ["load_adapters", "nowhere", "adapter_config.json", "missing"]),
    # MixedLoRA
    ("MixedLoRA id out of range", lambda t: mixed(torch.tensor([0, 1, 2])), ValueError, ["MixedLoRA", "[0, 1, 2]"]),
    ("MixedLoRA id -2", lambda t: mixed(torch.tensor([0, -2, 1])), ValueError, ["MixedLoRA", "-2"]),
    ("MixedLoRA float ids", lambda t: mixed(torch.tensor([0.0, 1.0, 0.0])), ValueError, ["MixedLoRA", "float32"]),
    ("MixedLoRA ids of another length", lambda t: mixed(torch.tensor([0, 1])), ValueError, ["MixedLoRA", "(2,)"]),
    ("MixedLoRA 2-d ids", lambda t: mixed(torch.tensor([[0, 1, 0]])), ValueError, ["MixedLoRA", "(1, 3)"]),
    ("MixedLoRA ids a list", lambda t: mixed([0, 1, 0]), ValueError, ["MixedLoRA", "list"]),
    ("MixedLoRA of plain models", lambda t: modify.MixedLoRA([small(), small()]), ValueError,
     ["MixedLoRA", "[[], []]"]),
    # summary, convert, kv_cache
    ("summary of a string", lambda t: modify.summary("model"), TypeError, ["summary", "str"]),
    ("summary with an int", lambda t: modify.summary(small(), 3), TypeError, ["summary", "int"]),
    ("convert a function", lambda t: modify.convert(lambda x: x), TypeError, ["convert", "function"]),
    ("convert leaf_modules of ints", lambda t: modify.convert(torch.nn.Linear(2, 2), leaf_modules=[3]), TypeError,
     ["convert", "leaf_modules"]),
    ("kv_cache of an int", lambda t: kv_cache(3), TypeError, ["kv_cache", "int"]),
    ("kv_cache without attention", lambda t: kv_cache(small()), ValueError, ["kv_cache", "Sequential"]),
    # generate and the model's own call
    ("generate float ids", lambda t: generate(gpt(), torch.zeros(1, 2), 2), ValueError, ["generate", "torch.float32"]),
    ("generate 1-d ids", lambda t: generate(gpt(), torch.zeros(2, dtype=torch.long), 2), ValueError,
     ["generate", "(2,)"]),
    ("generate ids past the vocabulary", lambda t: generate(gpt(), torch.full((1, 2), 99), 2), ValueError,
     ["generate", "[0, 16)", "99"]),
    ("generate negative ids", lambda t: generate(gpt(), torch.tensor([[3, -1]]), 2), ValueError,
     ["generate", "[0, 16)", "-1"]),
    ("generate ids a list", lambda t: generate(gpt(), [[1, 2]], 2), TypeError, ["generate", "list"]),
    ("generate top_k 0", lambda t: generate(gpt(), IDS, 2, top_k=0), ValueError, ["generate", "0"]),
    ("generate max_new_tokens -1", lambda t: generate(gpt(), IDS, -1), ValueError, ["generate", "-1"]),
    ("GPT on float ids", lambda t: gpt()(torch.zeros(1, 2)), TypeError, ["TokenInput at 'transformer.embed", "float"]),
    ("GPT past block_size", lambda t: gpt()(torch.zeros(1, 9, dtype=torch.long)), ValueError,
     ["TokenInput at 'transformer.embed", "(1, 9)"]),
    ("GPT on 1-d ids", lambda t: gpt()(torch.zeros(5, dtype=torch.long)), ValueError,
     ["TokenInput at 'transformer.embed.tokens'", "(B, T)", "(5,)"]),
    ("GPT on a mismatched mask", lambda t: gpt()((torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3))), TypeError,
     ["TokenInput at 'transformer.embed.tokens'", "attention_mask", "float32"]),
    ("generate right-padded mask", lambda t: generate(gpt(), IDS, 2, attention_mask=torch.tensor([[1, 0]])),
     ValueError, ["generate", "padded on the right"]),
    # from_pretrained / save_pretrained
    ("from_pretrained dtype a string", lambda t: GPT.from_pretrained(saved_gpt(t), dtype="float17"), TypeError,
     ["GPT.from_pretrained", "'float17'"]),
    ("from_pretrained integer dtype", lambda t: GPT.from_pretrained(saved_gpt(t), dtype=torch.int64), TypeError,
     ["GPT.from_pretrained", "torch.int64"]),
    ("from_pretrained unknown device", lambda t: GPT.from_pretrained(saved_gpt(t), device="gpu7"), ValueError,
     ["GPT.from_pretrained", "'gpu7'"]),
    ("from_pretrained device a list", lambda t: GPT.from_pretrained(saved_gpt(t), device=[1]), TypeError,
     ["GPT.from_pretrained", "[1]"]),
    ("from_pretrained misspelt field", lambda t: GPT.from_pretrained(saved_gpt(t), n_lyer=3), TypeError,
     ["GPT.from_pretrained", "n_lyer"]),
    ("from_pretrained source an int", lambda t: GPT.from_pretrained(42), TypeError, ["GPT.from_pretrained", "42"]),
    ("save_pretrained to a file", lambda t: gpt().save_pretrained(a_file(t)), NotADirectoryError,
     ["GPT.save_pretrained", "notes.txt", "is a file"]),
    ("save_pretrained shard size words", lambda t: gpt().save_pretrained(t / "out", max_shard_size="lots"),
     ValueError, ["GPT.save_pretrained", "'lots'"]),
    ("save_pretrained negative shard size", lambda t: gpt().save_pretrained(t / "out", max_shard_size=-5),
     ValueError, ["GPT.save_pretrained", "-5"]),
    ("from_torchvision unknown arch", lambda t: modify.models.ResNet.from_torchvision({}, arch="resnet19"),
     ValueError, ["ResNet.from_torchvision", "'resnet19'"]),
]  # fmt: skip


@pytest.mark.parametrize("call, error, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, error, names, tmp_path):
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert not isinstance(caught.value, (KeyError, IndexError, AttributeError, RecursionError))
    for name in names:
        assert name in str(caught.value), f"{name!r} not in {str(caught.value)!r}"


def test_a_refused_save_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        gpt().save_pretrained(tmp_path / "out", max_shard_size=0)
    assert not (tmp_path / "out").exists()


def test_mutable_names_the_path_of_a_nested_leaf_and_keeps_the_dtype_kind():
    model = modify.mutable(modify.Sequential(block=modify.Sequential(proj=modify.Linear(2, 2))))
    with pytest.raises(TypeError, match=r"^Linear\.bias at 'block\.proj' holds torch\.float32, .* torch\.bool$"):
        model.block.proj.bias = torch.zeros(2, dtype=torch.bool)
    model.block.proj.bias = torch.ones(2, dtype=torch.float64)  # another float dtype is the user's choice
    assert model.block.proj.bias.dtype == torch.float64


def test_a_predicate_that_raises_keeps_its_error_and_says_where():
    def boom(path, module):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ZeroDivisionError) as caught:
        modify.select(small(), boom)
    assert caught.value.__notes__ == [f"select: raised by the predicate {boom!r} at '<root>'"]
