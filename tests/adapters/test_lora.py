"""LoRA: lora / merge_lora / strip_lora / lora_parameters, against manual formulas and peft."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import modify
from tests.helpers import assert_close, assert_state_equal, state_snapshot


def make_base(gen: torch.Generator | None = None) -> modify.Sequential:
    return modify.Sequential(
        fc1=modify.Linear(6, 8), act=modify.GELU(), norm=modify.LayerNorm(8), fc2=modify.Linear(8, 3)
    )


def randomise_adapters(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in modify.lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_block_shape_is_the_documented_sequential():
    base = modify.Linear(6, 4)
    block = modify.LoRA(base, rank=3, alpha=6.0, dropout=0.1)
    assert isinstance(block, modify.Sequential)
    copy2, parallel, add = block
    assert isinstance(copy2, modify.Copy) and copy2.n == 2 and isinstance(add, modify.Add)
    assert isinstance(parallel, modify.Parallel) and parallel[0] is base
    dropout, down, up, scale = parallel[1]
    assert isinstance(dropout, modify.Dropout) and dropout.p == 0.1
    assert (down.in_features, down.out_features, down.bias) == (6, 3, None)
    assert (up.in_features, up.out_features, up.bias) == (3, 4, None)
    assert scale.c == 2.0 and block.scale == 2.0
    assert block.down is down and block.up is up and block.base is base
    assert torch.count_nonzero(up.weight) == 0
    assert "rank=3, alpha=6" in repr(block)
    assert [n for n, _ in block.named_parameters()] == ["1.base.weight", "1.base.bias", "1.adapter.down.weight", "1.adapter.up.weight"]


def test_down_init_matches_peft_kaiming_uniform():
    # peft: nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in))
    torch.manual_seed(1)
    down = modify.LoRA(modify.Linear(64, 16), rank=32).down.weight
    torch.manual_seed(1)
    modify.Linear(64, 16)  # same draws for the base layer
    reference = torch.empty(32, 64)
    nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    assert torch.equal(down, reference)
    assert down.abs().max() <= 1 / math.sqrt(64)


def test_alpha_none_means_rank_and_bad_arguments_raise():
    assert modify.LoRA(modify.Linear(3, 3), rank=4).scale == 1.0
    with pytest.raises(ValueError, match="rank"):
        modify.lora(make_base(), rank=0)
    with pytest.raises(ValueError):
        modify.lora(make_base(), rank=2, dropout=1.0)
    with pytest.raises(TypeError):
        modify.lora(make_base(), rank=2.5)


def test_equal_at_init_and_original_unchanged(gen):
    base = make_base()
    x = torch.randn(5, 6, generator=gen)
    out, state, params = base(x), state_snapshot(base), [id(p) for p in base.parameters()]
    adapted = modify.lora(base, rank=2)
    assert torch.equal(adapted(x), out)
    assert_state_equal(base, state)
    assert [id(p) for p in base.parameters()] == params
    assert adapted.fc1.base is base.fc1 and adapted.fc2.base is base.fc2
    assert adapted.act is base.act and adapted.norm is base.norm


def test_numerics_match_manual_formula_in_output_and_gradient(gen):
    base = make_base()
    adapted = modify.lora(base, rank=3, alpha=5.0, where=("fc1",))
    randomise_adapters(adapted, gen)
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    block = adapted.fc1
    a, b, w, bias = block.down.weight, block.up.weight, base.fc1.weight, base.fc1.bias

    def manual(x):
        h = x @ w.T + bias + (5.0 / 3) * (x @ a.T) @ b.T
        return base.fc2(base.norm(base.act(h)))

    got, want = adapted(x), manual(x)
    assert_close(got, want)
    grads = torch.autograd.grad(got.square().sum(), (x, a, b))
    ref = torch.autograd.grad(want.square().sum(), (x, a, b))
    for g, r in zip(grads, ref):
        assert_close(g, r)


def test_gradcheck_float64(gen):
    block = modify.LoRA(modify.Linear(4, 3, dtype=torch.float64), rank=2, alpha=3.0)
    assert block.down.weight.dtype == torch.float64
    randomise_adapters(block, gen)
    x = torch.randn(2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def test_matches_peft_on_a_tiny_torch_model(gen):
    peft = pytest.importorskip("peft")
    torch_model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    ours_base = modify.Sequential(modify.Linear(6, 8), modify.Tanh(), modify.Linear(8, 3))
    ours_base.load_state_dict(torch_model.state_dict())
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], lora_dropout=0.0)
    peft_model = peft.get_peft_model(copy.deepcopy(torch_model), config)
    ours = modify.lora(ours_base, rank=4, alpha=8.0)
    with torch.no_grad():
        for i in ("0", "2"):
            layer = peft_model.base_model.model.get_submodule(i)
            layer.lora_B["default"].weight.normal_(generator=gen)
            block = ours.get_submodule(i)
            block.down.weight.copy_(layer.lora_A["default"].weight)
            block.up.weight.copy_(layer.lora_B["default"].weight)
    x = torch.randn(5, 6, generator=gen)
    assert_close(ours(x), peft_model(x))
    merged_peft = peft_model.merge_and_unload()
    merged_ours = modify.merge_lora(ours)
    assert_close(merged_ours(x), merged_peft(x), atol=1e-5)
    for key, value in merged_peft.state_dict().items():
        assert_close(merged_ours.state_dict()[key], value, atol=1e-6)


def test_training_only_adapters_leaves_base_bit_identical(gen):
    base = make_base()
    x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
    before = base(x)
    state = state_snapshot(base)
    adapted = modify.lora(base, rank=2)
    opt = torch.optim.AdamW(modify.lora_parameters(adapted), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (adapted(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(base(x), before)
    assert_state_equal(base, state)
    assert not torch.equal(adapted(x), before)


def test_lora_parameters_are_exactly_the_adapters():
    base = make_base()
    adapted = modify.lora(base, rank=2)
    params = modify.lora_parameters(adapted)
    expected = [adapted.fc1.down.weight, adapted.fc1.up.weight, adapted.fc2.down.weight, adapted.fc2.up.weight]
    assert len(params) == 4 and all(p is q for p, q in zip(params, expected))
    base_ids = {id(p) for p in base.parameters()}
    assert not base_ids & {id(p) for p in params}
    assert {id(p) for p in adapted.parameters()} == base_ids | {id(p) for p in params}
    assert modify.lora_parameters(base) == []


def test_two_adapters_on_one_base_are_independent(gen):
    """PEFT issue #1963: injecting twice into one base must not share adapter state."""
    base = make_base()
    first, second = modify.lora(base, rank=2), modify.lora(base, rank=2)
    ids = [{id(p) for p in modify.lora_parameters(m)} for m in (first, second)]
    assert not ids[0] & ids[1]
    assert first.fc1.base is second.fc1.base is base.fc1
    x = torch.randn(3, 6, generator=gen)
    opt = torch.optim.SGD(modify.lora_parameters(first), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        first(x).sum().backward()
        opt.step()
    assert not torch.equal(first(x), base(x))
    assert torch.equal(second(x), base(x))
    assert all(torch.count_nonzero(second.get_submodule(n).up.weight) == 0 for n in ("fc1", "fc2"))


def test_lora_on_adapted_model_stacks_on_base_layers_only(gen):
    base = make_base()
    once = modify.lora(base, rank=2, where=("fc1",))
    twice = modify.lora(once, rank=3, where=(modify.Linear, "fc1*"))
    # the adapter layers of the first block were not adapted; its base layer was
    outer = twice.fc1
    assert isinstance(outer, modify.LoRA) and isinstance(outer.base, modify.LoRA)
    assert outer.base.base is base.fc1 and outer.adapter is once.fc1.adapter
    assert isinstance(outer.base.down, modify.Linear) and isinstance(outer.base.up, modify.Linear)
    assert len(modify.lora_parameters(twice)) == 4
    randomise_adapters(twice, gen)
    x = torch.randn(4, 6, generator=gen)
    inner, w = outer.base, base.fc1
    h = w(x) + inner.scale * inner.up(inner.down(x)) + outer.scale * outer.up(outer.down(x))
    assert_close(twice.fc1(x), h)
    assert_close(modify.merge_lora(twice)(x), twice(x), atol=1e-5)
    stripped = modify.strip_lora(twice)
    assert stripped.fc1 is base.fc1


def test_non_linear_match_raises_type_error_with_path():
    with pytest.raises(TypeError, match="the match at 'norm' is a LayerNorm"):
        modify.lora(make_base(), rank=2, where=(modify.LayerNorm,))
    affine = modify.Sequential(modify.Linear(3, 3), modify.Scale(2.0))
    with pytest.raises(TypeError, match="'<root>' is a Sequential"):  # the trait matches combinators too
        modify.lora(affine, rank=2, where=(modify.traits.Linear,))


def test_merge_matches_formula_and_keeps_base_layout(gen):
    base = make_base()
    adapted = modify.lora(base, rank=2, alpha=3.0)
    randomise_adapters(adapted, gen)
    merged = modify.merge_lora(adapted)
    x = torch.randn(7, 6, generator=gen)
    assert_close(merged(x), adapted(x), atol=1e-5)
    assert list(merged.state_dict()) == list(base.state_dict())
    assert not any(isinstance(m, modify.LoRA) for m in merged.modules())
    block = adapted.fc1
    expected = base.fc1.weight + 1.5 * block.up.weight @ block.down.weight
    assert_close(merged.fc1.weight, expected)
    assert merged.fc1.weight is not base.fc1.weight and merged.fc1.bias is base.fc1.bias
    assert isinstance(merged.fc1.weight, nn.Parameter) and type(merged.fc1) is modify.Linear
    assert merged.act is base.act and merged.norm is base.norm
    assert modify.merge_lora(base) is base


def test_merge_computes_in_float32_for_low_precision(gen):
    base = modify.Linear(16, 8, dtype=torch.bfloat16)
    block = modify.lora(base, rank=4, alpha=8.0)
    randomise_adapters(block, gen)
    merged = modify.merge_lora(block)
    assert merged.weight.dtype == torch.bfloat16
    wide = base.weight.float() + 2.0 * block.up.weight.float() @ block.down.weight.float()
    assert torch.equal(merged.weight, wide.to(torch.bfloat16))


def test_merge_equals_adapted_in_eval_with_dropout(gen):
    adapted = modify.lora(make_base(), rank=2, dropout=0.5)
    randomise_adapters(adapted, gen)
    x = torch.randn(64, 6, generator=gen)
    adapted.train()
    assert not torch.allclose(adapted(x), adapted(x))  # two dropout masks
    adapted.eval()
    assert_close(modify.merge_lora(adapted)(x), adapted(x), atol=1e-5)


def test_dropout_acts_only_on_the_adapter_input(gen):
    base = make_base()
    adapted = modify.lora(base, rank=2, dropout=0.9).train()
    x = torch.randn(8, 6, generator=gen)
    assert torch.equal(adapted(x), base(x))  # up is zero: dropout never reaches the base path


def test_strip_returns_the_very_same_base_leaves():
    base = make_base()
    stripped = modify.strip_lora(modify.lora(base, rank=2))
    leaves = [m for m in base.modules() if not isinstance(m, modify.Combinator)]
    assert [id(m) for m in stripped.modules() if not isinstance(m, modify.Combinator)] == list(map(id, leaves))
    assert list(stripped.state_dict()) == list(base.state_dict())
    single = modify.Linear(3, 3)
    assert modify.strip_lora(modify.lora(single, rank=1)) is single
    assert modify.strip_lora(base) is base


def test_root_linear_and_torch_linear_layers(gen):
    lin = modify.Linear(5, 5)
    block = modify.lora(lin, rank=2)
    assert isinstance(block, modify.LoRA) and block.base is lin
    net = modify.Sequential(nn.Linear(5, 4), nn.ReLU())
    with pytest.raises(ValueError, match="matches no layer"):  # default `where` is modify.Linear only
        modify.lora(net, rank=2)
    adapted = modify.lora(net, rank=2, where=(nn.Linear,))
    assert isinstance(adapted[0], modify.LoRA) and adapted[0].base is net[0]
    randomise_adapters(adapted, gen)
    merged = modify.merge_lora(adapted)
    assert isinstance(merged[0], nn.Linear) and merged[0].weight is not net[0].weight
    x = torch.randn(3, 5, generator=gen)
    assert_close(merged(x), adapted(x), atol=1e-5)


def test_adapted_state_dict_round_trip_and_deepcopy(gen):
    adapted = modify.lora(make_base(), rank=2)
    randomise_adapters(adapted, gen)
    fresh = modify.lora(make_base(), rank=2)
    fresh.load_state_dict(adapted.state_dict())
    x = torch.randn(3, 6, generator=gen)
    assert torch.equal(fresh(x), adapted(x))
    clone = copy.deepcopy(adapted)
    assert isinstance(clone.fc1, modify.LoRA) and clone.fc1.rank == 2
    assert torch.equal(clone(x), adapted(x))
    assert clone.fc1.base.weight is not adapted.fc1.base.weight


def test_where_takes_one_criterion_or_a_tuple():
    base = make_base()
    one, many = modify.lora(base, rank=2, where="fc1"), modify.lora(base, rank=2, where=("fc1",))
    assert isinstance(one.fc1, modify.LoRA) and one.fc2 is base.fc2
    assert modify.select(one, modify.LoRA).paths() == modify.select(many, modify.LoRA).paths() == ["fc1"]
    assert modify.select(modify.lora(base, rank=2, where=modify.Linear), modify.LoRA).paths() == ["fc1", "fc2"]


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_alpha_not_finite_is_a_value_error(alpha):
    with pytest.raises(ValueError, match=rf"^lora: alpha must be a finite number, got {alpha}$"):
        modify.lora(make_base(), rank=2, alpha=alpha)
    with pytest.raises(ValueError, match=rf"^LoRA: alpha must be a finite number, got {alpha}$"):
        modify.LoRA(modify.Linear(4, 4), rank=2, alpha=alpha)


def test_no_match_is_a_value_error():
    with pytest.raises(ValueError, match="matches no layer of the Sequential"):
        modify.lora(make_base(), rank=2, where="nothing.*")


def test_plain_torch_sequential_says_how_to_proceed():
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"plain torch.nn Sequential container.*modify.Sequential\(\*model\)"):
        modify.lora(seq, rank=2)
    with pytest.raises(ValueError, match=r"'0' lies inside the leaf Sequential at '<root>'.*plain torch.nn Sequential container"):
        modify.lora(seq, rank=2, where=nn.Linear)
    nested = modify.Sequential(body=seq)
    with pytest.raises(ValueError, match=r"inside the leaf Sequential at 'body'.*plain torch.nn Sequential container.*modify.convert"):
        modify.lora(nested, rank=2, where=nn.Linear)
    adapted = modify.lora(modify.Sequential(*seq), rank=2, where=nn.Linear)  # the advice works
    assert modify.select(adapted, modify.LoRA).paths() == ["0", "2"]


def test_other_layer_types_and_dora_on_them_raise_type_error_naming_the_path():
    model = modify.Sequential(emb=modify.Embedding(10, 4), norm=modify.LayerNorm(4))
    with pytest.raises(TypeError, match="the match at 'norm' is a LayerNorm"):
        modify.lora(model, rank=2, where=lambda path, m: True if path else False)
    with pytest.raises(TypeError, match="dora=True.*'emb' is a Embedding"):
        modify.lora(model, rank=2, where=modify.Embedding, dora=True)
    grouped = modify.Sequential(conv=modify.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match="'conv' has groups=2"):
        modify.lora(grouped, rank=2, where=modify.Conv2d)


def test_safe_merge_names_the_layer_with_a_non_finite_weight():
    adapted = modify.lora(make_base(), rank=2)
    with torch.no_grad():
        adapted.fc2.up.weight.fill_(float("inf"))
    with pytest.raises(ValueError, match="LoRA block at 'fc2' is not finite"):
        modify.merge_lora(adapted, safe=True)
    assert not torch.isfinite(modify.merge_lora(adapted).fc2.weight).all()  # unsafe: merged as asked


@pytest.mark.parametrize("options", [{"dora": True}, {"use_rslora": True}], ids=["dora", "rslora"])
def test_variants_over_low_precision_compile_in_one_graph(options, gen):
    base = modify.Sequential(emb=modify.Embedding(10, 8), fc=modify.Linear(8, 8), act=modify.GELU())
    base = base.to(torch.bfloat16)
    adapted = modify.lora(base, rank=2, where=modify.Linear, **options)
    adapted = modify.lora(adapted, rank=2, where=modify.Embedding)
    randomise_adapters(adapted, gen)
    ids = torch.randint(0, 10, (3, 5), generator=gen)
    compiled = torch.compile(adapted, fullgraph=True, backend="eager")
    assert compiled(ids).dtype == torch.bfloat16
    assert torch.equal(compiled(ids), adapted(ids))
