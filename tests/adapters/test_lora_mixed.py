"""MixedLoRA: each sample through its own sibling, in one batched forward, checked against the siblings."""

from __future__ import annotations

import warnings

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig
from tests.helpers import assert_close


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in modify.lora_parameters(model):
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def gpt_siblings(gen):
    base = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    where = (modify.Linear, "transformer.h.*")
    siblings = [
        modify.lora(base, 2, where=where),
        modify.lora(base, 4, 3.0, where=where, use_rslora=True),
        modify.lora(base, 1, 5.0, where=where),
    ]
    siblings = [modify.lora(s, 2, where=modify.Embedding) for s in siblings]  # token embedding too
    for s in siblings:
        randomise(s, gen)
    return base, siblings


def per_sample(base, siblings, x, ids):
    rows = [(siblings[i] if i >= 0 else base)(x[n : n + 1]) for n, i in enumerate(ids.tolist())]
    return torch.cat(rows)


def test_outputs_equal_each_siblings_on_its_samples(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings).eval()
    x = torch.randint(0, 50, (7, 16), generator=gen)
    ids = torch.tensor([2, -1, 0, 1, 1, 0, -1])
    with torch.no_grad():
        assert_close(mixed(x, ids), per_sample(base, siblings, x, ids), atol=1e-5)
        everyone = torch.full((7,), 1)
        assert_close(mixed(x, everyone), siblings[1](x), atol=1e-5)


def test_serving_reuses_stacked_weights_until_an_adapter_changes(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings).eval()
    x, ids = torch.randint(0, 50, (5, 16), generator=gen), torch.tensor([2, -1, 0, 1, 0])
    with torch.inference_mode():
        mixed(x, ids)  # stacks the weights under inference mode
    with torch.no_grad():
        mixed(x, ids)
        randomise(siblings[0], gen)  # in place, as an optimizer step or load_state_dict writes
        assert_close(mixed(x, ids), per_sample(base, siblings, x, ids), atol=1e-5)
    block = modify.select(siblings[1], modify.LoRA)[0][1]
    block.up.weight = torch.nn.Parameter(torch.randn(block.up.weight.shape, generator=gen))  # a new tensor
    with torch.no_grad():
        assert_close(mixed(x, ids), per_sample(base, siblings, x, ids), atol=1e-5)
    loss = mixed(x, ids).square().sum()  # recording again: fresh weights, gradients reach the adapters
    loss.backward()
    assert block.up.weight.grad is not None and block.up.weight.grad.abs().sum() > 0


def test_inputs_of_any_rank_and_base_rows_exactly_the_base(gen):
    base = modify.Sequential(a=modify.Linear(6, 5), act=modify.ReLU(), b=modify.Linear(5, 3))
    siblings = [modify.lora(base, 2), modify.lora(base, 3, 7.0)]
    for s in siblings:
        randomise(s, gen)
    mixed = modify.MixedLoRA(siblings).eval()
    ids = torch.tensor([1, -1, 0, -1])
    with torch.no_grad():
        for shape in [(4, 6), (4, 3, 6), (4, 2, 3, 6)]:  # (B, in), (B, N, in), (B, H, W, in)
            x = torch.randn(shape, generator=gen)
            out = mixed(x, ids)
            assert_close(out, per_sample(base, siblings, x, ids), atol=1e-5)
            assert torch.equal(out[ids < 0], base(x)[ids < 0])  # the base alone, exactly: a zero update


def test_gradcheck_in_float64_through_functional_call(gen):
    base = modify.Sequential(a=modify.Linear(3, 4), act=modify.Tanh(), b=modify.Linear(4, 2)).double()
    siblings = [modify.lora(base, 1), modify.lora(base, 2, 3.0)]
    for s in siblings:
        randomise(s, gen)
    mixed = modify.MixedLoRA(siblings)
    names = {id(p): n for n, p in mixed.named_parameters()}
    params = [p for s in siblings for p in modify.lora_parameters(s)]
    keys = [names[id(p)] for p in params]
    ids = torch.tensor([1, -1, 0, 1])

    def run(x, *weights):  # the adapters' weights as inputs: recorded, so stacked afresh on each call
        return torch.func.functional_call(mixed, dict(zip(keys, weights)), (x, ids))

    x = torch.randn(4, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, (x, *weights))


def test_an_adapter_weight_held_as_a_plain_tensor_is_read(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings).eval()
    up = modify.select(siblings[2], modify.LoRA)[0][1].up
    weight = up.weight.detach().clone()
    del up.weight
    up.weight = weight  # a plain attribute now, not a registered parameter
    x, ids = torch.randint(0, 50, (4, 16), generator=gen), torch.tensor([2, -1, 0, 2])
    with torch.no_grad():
        assert_close(mixed(x, ids), per_sample(base, siblings, x, ids), atol=1e-5)
        weight.mul_(-1)  # an in-place write to it is seen too
        assert_close(mixed(x, ids), per_sample(base, siblings, x, ids), atol=1e-5)


def test_a_padded_batch_gives_each_row_its_siblings_logits_alone(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings).eval()
    x = torch.randint(0, 50, (4, 9), generator=gen)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, :4], mask[2, 6:], mask[3, :1] = 0, 0, 0  # left, right and left padding
    ids = torch.tensor([2, -1, 0, 1])
    out, tokens = mixed((x, mask), ids), mask.bool()
    for n, i in enumerate(ids.tolist()):
        alone = (siblings[i] if i >= 0 else base)(x[n : n + 1, tokens[n]])
        assert_close(out[n, tokens[n]], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"adapter_ids must be \(4,\) int64"):
        mixed((x, mask), ids[:3])


def test_holds_the_siblings_own_parameters_and_gradients_reach_the_adapters_used(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings)
    ours = {id(p) for p in mixed.parameters()}
    assert ours == {id(p) for s in siblings for p in s.parameters()}  # no copies, nothing else
    base.requires_grad_(False)
    x = torch.randint(0, 50, (4, 16), generator=gen)
    ids = torch.tensor([0, 2, 0, -1])
    params = [p for s in siblings for p in modify.lora_parameters(s)]
    got = torch.autograd.grad(mixed(x, ids).square().sum(), params, allow_unused=True)
    expected = torch.autograd.grad(per_sample(base, siblings, x, ids).square().sum(), params, allow_unused=True)
    used = {id(p) for s in (siblings[0], siblings[2]) for p in modify.lora_parameters(s)}
    for p, g, e in zip(params, got, expected):
        if id(p) in used:
            assert_close(g, e, atol=1e-4, rtol=1e-4)
            assert g.abs().sum() > 0
        else:
            assert g is None or torch.count_nonzero(g) == 0


def test_trainable_base_gets_the_siblings_gradients_and_base_hooks_see_the_base_output(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings)
    x = torch.randint(0, 50, (3, 16), generator=gen)
    ids = torch.tensor([1, -1, 2])
    params = list(base.parameters())
    got = torch.autograd.grad(mixed(x, ids).square().sum(), params)
    expected = torch.autograd.grad(per_sample(base, siblings, x, ids).square().sum(), params)
    for g, e in zip(got, expected):
        assert_close(g, e, atol=1e-4, rtol=1e-4)
    layer = base.get_submodule("transformer.h.0.mlp.1.1.c_fc")
    seen = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append((out, out.clone())))
    with torch.no_grad():
        mixed(x, ids)
    handle.remove()
    assert torch.equal(*seen[0])  # the update was not added into the output the hook holds


def test_equals_pefts_adapter_names_batch(gen, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=60, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0)  # fmt: skip
    targets = ["c_attn", "c_proj", "c_fc"]
    configs = {"default": peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, fan_in_fan_out=True),
               "b": peft.LoraConfig(r=4, lora_alpha=3, target_modules=targets, fan_in_fan_out=True, use_rslora=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's and transformers' own notices (fan_in_fan_out)
        hf = transformers.GPT2LMHeadModel(config).eval()
        base = GPT.from_pretrained(hf.state_dict(), vocab_size=60, block_size=16, n_layer=2, n_head=2, n_embd=16)
        peft_model = peft.get_peft_model(hf, configs["default"])
        peft_model.add_adapter("b", configs["b"])
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(std=0.3, generator=gen)
        peft_model.save_pretrained(tmp_path)  # every adapter; "b" in its own subfolder
    siblings = [modify.load_adapters(base, tmp_path), modify.load_adapters(base, tmp_path / "b")]
    mixed = modify.MixedLoRA(siblings).eval()
    x = torch.randint(0, 60, (5, 16), generator=gen)
    ids = torch.tensor([1, -1, 0, 1, 0])
    names = ["b", "__base__", "default", "b", "default"]
    with torch.no_grad():
        assert_close(mixed(x, ids), peft_model.eval()(x, adapter_names=names).logits, atol=1e-5)


def test_adapter_dropout_fires_in_training_only_and_never_on_base_rows(gen):
    base = modify.Sequential(a=modify.Linear(8, 8), act=modify.ReLU(), b=modify.Linear(8, 3))
    siblings = [modify.lora(base, 2, dropout=0.5), modify.lora(base, 3, dropout=0.0)]
    for s in siblings:
        randomise(s, gen)
    mixed = modify.MixedLoRA(siblings).train()
    x = torch.randn(6, 8, generator=gen)
    ids = torch.tensor([0, -1, 1, 0, -1, 1])
    trained = mixed(x, ids)
    base_rows, other_rows = ids < 0, ids > 0
    assert torch.equal(trained[base_rows], base(x)[base_rows])  # the base alone, exactly
    assert_close(trained[other_rows], siblings[1](x)[other_rows], atol=1e-5)  # no dropout on adapter 1
    assert not torch.allclose(trained[ids == 0], siblings[0].eval()(x)[ids == 0])  # adapter 0's dropout fired
    assert_close(mixed.eval()(x, ids), per_sample(base, siblings, x, ids), atol=1e-5)


def test_conv_and_low_precision_bases(gen):
    base = modify.Sequential(conv=modify.Conv2d(3, 4, 3, padding=1), act=modify.ReLU(), fc=modify.Linear(6, 2))
    base = base.to(torch.bfloat16)
    siblings = [modify.lora(base, r, where=lambda p, m: isinstance(m, (modify.Conv2d, modify.Linear))) for r in (2, 3)]
    for s in siblings:
        randomise(s, gen)
    x = torch.randn(5, 3, 6, 6, generator=gen).to(torch.bfloat16)
    ids = torch.tensor([1, 0, -1, 1, 0])
    out = modify.MixedLoRA(siblings)(x, ids)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), per_sample(base, siblings, x, ids).float(), atol=2e-2, rtol=2e-2)


def test_compiles_in_one_graph(gen):
    base, siblings = gpt_siblings(gen)
    mixed = modify.MixedLoRA(siblings).eval()
    compiled = torch.compile(mixed, fullgraph=True, backend="eager")
    x = torch.randint(0, 50, (4, 16), generator=gen)
    ids = torch.tensor([1, -1, 2, 0])
    with torch.no_grad():
        assert_close(compiled(x, ids), mixed(x, ids))


def test_bad_siblings_and_ids_raise(gen):
    base = modify.Sequential(a=modify.Linear(4, 4), b=modify.Linear(4, 2))
    with pytest.raises(ValueError, match="same paths"):
        modify.MixedLoRA([modify.lora(base, 2, where="a"), modify.lora(base, 2)])
    with pytest.raises(ValueError, match="not DoRA"):
        modify.MixedLoRA([modify.lora(base, 2, dora=True)])
    with pytest.raises(ValueError, match="non-empty"):
        modify.MixedLoRA([])
    mixed = modify.MixedLoRA([modify.lora(base, 2), modify.lora(base, 3)])
    x = torch.randn(3, 4, generator=gen)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 2\)"):
        mixed(x, torch.tensor([0, 2, -1]))
    with pytest.raises(ValueError, match=r"must be \(3,\) int64"):
        mixed(x, torch.tensor([0, 1]))
