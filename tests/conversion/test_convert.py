"""``modify.convert`` on plain ``torch.nn`` models: same function, same tensors, modify's classes.

Each model is converted and checked against itself (the original is the reference): outputs and
input/parameter gradients, the very same parameter and buffer objects (all of them), the original
left untouched, globs on the original's attribute names, LoRA at init and merged, and
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from convert_models import ResidualMLP, ResNet18, Tied, TwoTowers
from helpers import assert_state_equal, state_snapshot
from torch import nn

import modify
import modify.conversion as conversion
from benchmarks.reference_gpt import ReferenceConfig, ReferenceGPT


def gpt() -> nn.Module:
    return ReferenceGPT(ReferenceConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=16))


# (id, model factory, input factory, globs on original names -> the original layers they must find)
CASES = [
    ("mlp", ResidualMLP, lambda g: torch.randn(3, 16, generator=g), {"*fc1": ["fc1"], "head": ["head"]}),
    (
        "gpt",
        gpt,
        lambda g: torch.randint(0, 32, (2, 16), generator=g),
        {"transformer.h.*.c_attn": [f"transformer.h.{i}.attn.c_attn" for i in range(2)], "*.mlp.c_fc": [f"transformer.h.{i}.mlp.c_fc" for i in range(2)]},
    ),
    (
        "resnet18",
        lambda: ResNet18(width=8),
        lambda g: torch.randn(2, 3, 32, 32, generator=g),
        {"layer1.*.conv1": ["layer1.0.conv1", "layer1.1.conv1"], "layer2.*downsample.0": ["layer2.0.downsample.0"]},
    ),
    ("tied", Tied, lambda g: torch.randn(4, 8, generator=g), {"block.0": ["block.0"], "mid": ["mid"]}),
]
IDS = [case[0] for case in CASES]


def call(model: nn.Module, x: object) -> torch.Tensor:
    return model(*x) if isinstance(x, tuple) else model(x)


def weighted_loss(out: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    return (out * weights).sum()


def gradients(model: nn.Module, x: torch.Tensor, run) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    x = x.detach().requires_grad_(x.is_floating_point())
    model.zero_grad()
    out = run(x)
    weighted_loss(out).backward()
    grads = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    return out.detach(), grads, (x.grad if x.is_floating_point() else None)


def assert_same_function(original: nn.Module, converted: nn.Module, x: torch.Tensor) -> None:
    out_o, grads_o, gx_o = gradients(original, x, original)
    out_c, grads_c, gx_c = gradients(original, x, converted)
    scale = max(1.0, out_o.abs().max().item())
    torch.testing.assert_close(out_c, out_o, atol=1e-6 * scale, rtol=0)
    assert grads_c.keys() == grads_o.keys()
    for key, grad in grads_o.items():
        # float32 rounding: a norm's fused affine sums its weight gradient in another order
        torch.testing.assert_close(grads_c[key], grad, atol=1e-6 * max(1.0, grad.abs().max().item()), rtol=1e-4)
    if gx_o is not None:
        torch.testing.assert_close(gx_c, gx_o, atol=1e-6 * max(1.0, gx_o.abs().max().item()), rtol=0)


@pytest.mark.parametrize(("name", "make", "inputs", "globs"), CASES, ids=IDS)
def test_converted_model_is_modify_classes_holding_the_originals_tensors(name, make, inputs, globs):
    original = make()
    before = state_snapshot(original)
    ids_before = [id(t) for t in (*original.parameters(), *original.buffers())]
    converted = modify.convert(original)
    assert all(type(m).__module__.startswith("modify.") for m in converted.modules())
    assert {id(p) for p in converted.parameters()} == {id(p) for p in original.parameters()}
    assert {id(b) for b in converted.buffers()} == {id(b) for b in original.buffers()}
    assert_state_equal(original, before)
    assert [id(t) for t in (*original.parameters(), *original.buffers())] == ids_before
    assert not any(isinstance(m, modify.Function) for m in converted.modules()) or name == "gpt"


@pytest.mark.parametrize(("name", "make", "inputs", "globs"), CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_converted_model_computes_the_same_outputs_and_gradients(name, make, inputs, globs, gen, mode):
    original = make().train(mode == "train")
    converted = modify.convert(original)
    assert all(m.training == original.training for m in converted.modules())
    assert_same_function(original, converted, inputs(gen))


@pytest.mark.parametrize(("name", "make", "inputs", "globs"), CASES, ids=IDS)
def test_globs_on_the_original_names_find_the_converted_layers(name, make, inputs, globs):
    original = make()
    converted = modify.convert(original)
    for glob, paths in globs.items():
        found = modify.select(converted, glob)
        weights = {id(p) for _, m in found for p in m.parameters()}
        expected = {id(original.get_submodule(p).weight) for p in paths}
        # a module the original calls twice sits at two paths, both named after it: one module found
        assert len({id(m) for _, m in found}) == len(paths) and weights >= expected, (glob, [p for p, _ in found])


@pytest.mark.parametrize(("name", "make", "inputs", "globs"), CASES, ids=IDS)
def test_lora_on_a_converted_model_equals_it_at_init_and_merges_back(name, make, inputs, globs, gen):
    original = make().eval()
    converted = modify.convert(original)
    x = inputs(gen)
    adapted = modify.lora(converted, 2, where=lambda path, m: isinstance(m, (modify.Linear, modify.Conv2d)))
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), converted(x), atol=0, rtol=0)
        for p in modify.lora_parameters(adapted):
            p.normal_(0, 0.1)
        merged = modify.merge_lora(adapted)
        torch.testing.assert_close(merged(x), adapted(x), atol=1e-5, rtol=1e-4)
    assert list(merged.state_dict()) == list(converted.state_dict())


@pytest.mark.parametrize(("name", "make", "inputs", "globs"), CASES, ids=IDS)
def test_converted_model_compiles_without_graph_breaks(name, make, inputs, globs, gen):
    original = make().eval()
    converted = modify.convert(original)
    x = inputs(gen)
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), original(x), atol=1e-6, rtol=1e-5)


def test_float64_gradcheck_on_a_converted_mlp(gen):
    original = ResidualMLP(dim=4, hidden=6, out=3).double()
    converted = modify.convert(original)
    x = torch.randn(2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(converted, (x,))
    torch.testing.assert_close(converted(x), original(x), atol=1e-12, rtol=0)


def test_a_tied_module_is_one_object_and_a_tied_weight_one_parameter():
    original = Tied()
    converted = modify.convert(original)
    blocks = [m for path, m in converted.named_modules(remove_duplicate=False) if path.startswith("block")]
    assert blocks[0] is blocks[len(blocks) // 2]
    assert converted.head.weight is converted.mid.weight is original.mid.weight
    assert len(list(converted.parameters())) == len(list(original.parameters()))


def test_norms_become_norm_plus_affine_sharing_weight_and_running_stats():
    original = ResNet18(width=8)
    converted = modify.convert(original)
    bn1 = converted.bn1
    assert isinstance(bn1.norm, modify.BatchNorm2d) and isinstance(bn1.affine, modify.ElementwiseAffine)
    assert bn1.affine.weight is original.bn1.weight and bn1.affine.bias is original.bn1.bias
    assert bn1.norm.running_mean is original.bn1.running_mean
    assert bn1.norm.num_batches_tracked is original.bn1.num_batches_tracked


def test_views_computed_from_sizes_become_primitives():
    converted = modify.convert(gpt())
    kinds = {type(m) for m in converted.modules()}
    assert {modify.Rearrange, modify.Flatten, modify.Split, modify.ScaledDotProductAttention} <= kinds
    functions = [m.name for m in converted.modules() if isinstance(m, modify.Function)]
    assert functions == ["arange"]  # the positions: torch.arange(t) has no primitive


def test_several_inputs_a_tuple_and_code_without_primitive_a_function_leaf(gen):
    original = TwoTowers()
    converted = modify.convert(original)
    a, b = torch.randn(2, 6, generator=gen), torch.randn(2, 6, generator=gen)
    torch.testing.assert_close(converted((a, b)), original(a, b), atol=1e-6, rtol=0)
    holders = [m for m in converted.modules() if isinstance(m, modify.Function) and m._parameters]
    assert len(holders) == 1 and next(iter(holders[0].parameters())) is original.scale
    assert modify.traits.Param in modify.traits_of(holders[0])


def test_leaf_modules_keeps_a_class_whole_and_untraceable_code_names_its_path():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.gate = nn.Linear(3, 3), Gate()

        def forward(self, x):
            return self.gate(self.fc(x))

    model = Model()
    with pytest.raises(TypeError, match=r"'gate' \(Gate\).*control flow.*leaf_modules=\(Gate,\)"):
        modify.convert(model)
    converted = modify.convert(model, leaf_modules=(Gate,))
    x = torch.randn(2, 3)
    torch.testing.assert_close(converted(x), model(x))
    assert isinstance(converted.gate, Gate) and converted.fc.weight is model.fc.weight


def test_unsupported_inputs_and_outputs_raise_type_errors():
    class Star(nn.Module):
        def forward(self, *xs):
            return xs[0]

    class Dict(nn.Module):
        def forward(self, x):
            return {"y": x * 2}

    with pytest.raises(TypeError, match=r"Star.forward takes \*xs"):
        modify.convert(Star())
    with pytest.raises(TypeError, match=r"returns the fields \['y'\]; output='z'"):
        modify.convert(Dict(), output="z")
    x = torch.randn(2, 3)
    torch.testing.assert_close(modify.convert(Dict(), output="y")(x), x * 2)
    with pytest.raises(TypeError, match="leaf_modules"):
        modify.convert(nn.Linear(2, 2), leaf_modules=("Linear",))


def test_a_known_layer_or_modify_module_converts_directly():
    layer = nn.LayerNorm(4)
    converted = modify.convert(layer)
    assert converted.affine.weight is layer.weight
    block = modify.Linear(2, 2)
    assert modify.convert(block) is block


def test_transformers_blocks_that_fx_traces_convert_and_whole_models_raise_the_documented_error(gen):
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_positions=16, vocab_size=32, n_layer=1, n_head=2, n_embd=8, bos_token_id=0, eos_token_id=0)
    ).eval()
    bert = transformers.BertModel(
        transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).eval()
    x, h = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 16, generator=gen)
    mlp, output = gpt2.transformer.h[0].mlp, bert.encoder.layer[0].output
    torch.testing.assert_close(modify.convert(mlp)(x), mlp(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(modify.convert(output)((h, x)), output(h, x), atol=1e-6, rtol=0)
    assert modify.convert(mlp).get_submodule("c_fc") is not None  # HF's Conv1D: addmm on views, as Functions
    for model in (gpt2, bert):
        with pytest.raises(TypeError, match="leaf_modules"):
            modify.convert(model)


def test_converted_model_deep_copies_round_trips_its_state_dict_and_has_traits(gen):
    original = gpt()
    converted = modify.convert(original)
    x = torch.randint(0, 32, (2, 16), generator=gen)
    clone = copy.deepcopy(converted)
    assert clone.lm_head.weight is not original.lm_head.weight
    torch.testing.assert_close(clone(x), converted(x), atol=0, rtol=0)
    fresh = modify.convert(gpt())
    fresh.load_state_dict(converted.state_dict())
    torch.testing.assert_close(fresh(x), converted(x), atol=0, rtol=0)
    assert modify.traits.Param in modify.traits_of(converted)


def test_an_unknown_module_called_with_several_arguments_is_replayed_holding_its_parameters(gen):
    class WithAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha, self.fc = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 8)

        def forward(self, x):
            y, _ = self.mha(x, x, x, need_weights=False)
            return self.fc(y)

    original = WithAttention()
    converted = modify.convert(original)
    x = torch.randn(2, 5, 8, generator=gen)
    torch.testing.assert_close(converted(x), original(x), atol=1e-6, rtol=0)
    assert {id(p) for p in converted.parameters()} == {id(p) for p in original.parameters()}
    assert [name for name, _ in converted.named_children()] == ["mha", "getitem", "fc"]


def test_other_rewriters_apply_to_a_converted_model(gen):
    original = gpt().eval()
    converted = modify.convert(original)
    x = torch.randint(0, 32, (2, 16), generator=gen)
    fused = modify.fuse(converted)
    assert sum(1 for _ in fused.modules()) < sum(1 for _ in converted.modules())
    torch.testing.assert_close(fused(x), original(x), atol=1e-5, rtol=1e-5)
    params = dict(converted.named_parameters())
    torch.testing.assert_close(modify.functional_call(converted, params, x), original(x), atol=1e-6, rtol=0)


def test_a_transformers_model_without_args_points_to_export_and_modify_models():
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_positions=16, vocab_size=32, n_layer=1, n_head=2, n_embd=8, bos_token_id=0, eos_token_id=0)
    )
    with pytest.raises(TypeError, match=r"modify.convert\(model, \(input_ids,\).*modify.models.GPT.from_pretrained"):
        modify.convert(gpt2)


class _Images(nn.Module):
    """A forward torch.fx cannot trace (``**kwargs``) over images: export fixes their height and width."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, **kwargs):
        return {"logits": self.conv(x).mean((2, 3)) * kwargs.get("scale", 1.0)}


def test_export_takes_other_batch_sizes_and_refuses_a_fixed_axis_by_name(gen):
    model = _Images()
    converted = modify.convert(model, torch.randn(2, 3, 8, 8, generator=gen), {"scale": 2.0})
    x = torch.randn(5, 3, 8, 8, generator=gen)
    torch.testing.assert_close(converted(x), model(x, scale=2.0)["logits"], atol=1e-6, rtol=1e-5)
    assert converted.conv.weight is model.conv.weight and converted.conv.reference_name == "conv"
    with pytest.raises(ValueError, match=r"axis 2 of input 0 fixed at 8.*got size 9"):
        converted(torch.randn(2, 3, 9, 9, generator=gen))


def test_a_tree_that_differs_from_the_original_on_the_example_is_refused(gen, monkeypatch):
    import modify.conversion as conversion

    model = ResidualMLP()
    monkeypatch.setattr(conversion, "_build", lambda *a: (modify.Identity(), set()))
    with pytest.raises(TypeError, match="cannot convert the root module \\(ResidualMLP\\) exactly"):
        modify.convert(model, torch.randn(2, 16, generator=gen))


def test_conversion_freezes_the_older_heap_from_garbage_collection_and_restores_it(monkeypatch):
    seen, trace = [], conversion.trace

    def recording(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return trace(*args, **kwargs)

    monkeypatch.setattr(conversion, "trace", recording)
    model = ResidualMLP()
    assert gc.get_freeze_count() == 0
    modify.convert(model)
    assert seen[-1] > 0 and gc.get_freeze_count() == 0  # frozen while converting, thawed after
    class Star(nn.Module):
        def forward(self, *xs):
            return xs[0]

    with pytest.raises(TypeError, match="takes"):  # raised while frozen
        modify.convert(Star())
    assert seen[-1] > 0 and gc.get_freeze_count() == 0
    gc.freeze()  # a caller's own frozen heap stays frozen
    try:
        frozen = gc.get_freeze_count()
        modify.convert(model)
        assert seen[-1] == frozen and gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
