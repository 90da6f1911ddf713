"""lora / merge_lora against PEFT itself: every layer type, variant and dtype, on the same A/B."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import modify
from modify.adapters.files import PREFIX, peft_tensors
from tests.helpers import assert_close

peft = pytest.importorskip("peft")

LAYERS = {  # name -> (torch layer, modify layer, input)
    "linear": (lambda: nn.Linear(6, 5), lambda: modify.Linear(6, 5), lambda g: torch.randn(3, 6, generator=g)),
    "embedding": (
        lambda: nn.Embedding(10, 4, padding_idx=1),
        lambda: modify.Embedding(10, 4, padding_idx=1),
        lambda g: torch.randint(0, 10, (3, 7), generator=g),
    ),
    "conv1d": (
        lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1),
        lambda: modify.Conv1d(3, 4, 3, stride=2, padding=1),
        lambda g: torch.randn(2, 3, 9, generator=g),
    ),
    "conv2d": (
        lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1),
        lambda: modify.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1),
        lambda g: torch.randn(2, 3, 8, 7, generator=g),
    ),
}
CASES = [
    (layer, variant, dtype, flavour)
    for layer in LAYERS
    for variant in (("plain", "rslora", "dora") if layer == "linear" else ("plain", "rslora"))
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
    for flavour in ("modify", "torch.nn")
    if flavour == "modify" or dtype == torch.float32
]


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's and transformers' own notices
        yield


def randomise_peft(peft_model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))


def copy_from_peft(peft_model: nn.Module, ours: nn.Module) -> None:
    """Give our blocks PEFT's adapter tensors, through the same mapping as the adapter files."""
    state = peft.get_peft_model_state_dict(peft_model)
    with torch.no_grad():
        for path, block in modify.select(ours, modify.LoRA):
            for suffix, tensor in peft_tensors(block).items():
                tensor.copy_(state[f"{PREFIX}{path}.{suffix}"])


def build(layer: str, variant: str, dtype: torch.dtype, flavour: str, gen: torch.Generator):
    make_torch, make_ours, make_x = LAYERS[layer]
    torch_model = nn.Sequential(OrderedDict(layer=make_torch())).to(dtype)
    if flavour == "modify":
        base = modify.Sequential(layer=make_ours()).to(dtype)
        base.load_state_dict(torch_model.state_dict())
        where = type(base.layer)
    else:
        base = modify.Sequential(layer=copy.deepcopy(torch_model.layer))
        where = type(torch_model.layer)
    config = peft.LoraConfig(
        r=4, lora_alpha=6, target_modules=["layer"], use_rslora=variant == "rslora", use_dora=variant == "dora"
    )
    with quiet():
        peft_model = peft.get_peft_model(torch_model, config)
    ours = modify.lora(base, 4, 6.0, where=where, use_rslora=variant == "rslora", dora=variant == "dora")
    randomise_peft(peft_model, gen)
    copy_from_peft(peft_model, ours)
    x = make_x(gen)
    return peft_model.eval(), ours.eval(), base, x.to(dtype) if x.is_floating_point() else x


@pytest.mark.parametrize("layer, variant, dtype, flavour", CASES)
def test_outputs_and_merge_equal_peft(layer, variant, dtype, flavour, gen):
    peft_model, ours, base, x = build(layer, variant, dtype, flavour, gen)
    low = dtype != torch.float32
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if low else {"atol": 1e-5, "rtol": 1e-5}
    block = ours.layer
    adapter_dtype = {p.dtype for p in block.adapter_parameters()}
    assert adapter_dtype == {torch.float32}  # PEFT's autocast_adapter_dtype
    with torch.no_grad(), quiet():
        expected, got = peft_model(x), ours(x)
    assert got.dtype == expected.dtype == dtype
    assert_close(got, expected, **tolerance)
    assert not torch.allclose(got.float(), base(x).float(), atol=1e-3)  # the adapters matter
    merged = modify.merge_lora(ours, safe=True)
    with quiet():
        merged_peft = peft_model.merge_and_unload(safe_merge=True)
    reference = merged_peft.state_dict()
    assert list(merged.state_dict()) == list(reference) == list(base.state_dict())
    for key, value in merged.state_dict().items():
        assert value.dtype == reference[key].dtype
        assert_close(value.float(), reference[key].float(), **tolerance)


@pytest.mark.parametrize("variant", ["plain", "dora"])
def test_gradients_equal_peft(variant, gen):
    peft_model, ours, _, x = build("linear", variant, torch.float32, "modify", gen)
    x.requires_grad_(True)
    peft_model.train()
    ours.train()
    with quiet():
        peft_loss = peft_model(x).square().sum()
    ours_loss = ours(x).square().sum()
    names = [n for n, p in peft_model.named_parameters() if "lora_" in n]
    peft_grads = torch.autograd.grad(peft_loss, [x, *(dict(peft_model.named_parameters())[n] for n in names)])
    ours_grads = torch.autograd.grad(ours_loss, [x, *modify.lora_parameters(ours)])
    for got, expected in zip(ours_grads, peft_grads):
        assert_close(got, expected, atol=1e-5)


def test_rslora_scale_and_embedding_has_no_dropout():
    block = modify.LoRA(modify.Linear(4, 4), rank=4, alpha=8.0, use_rslora=True, dropout=0.2)
    assert block.scale == 4.0 and "use_rslora=True" in repr(block)
    embedded = modify.LoRA(modify.Embedding(10, 4), rank=2, dropout=0.5)
    assert not any(isinstance(m, modify.Dropout) for m in embedded.modules())
    assert torch.count_nonzero(embedded.down.weight) == 0 and torch.count_nonzero(embedded.up.weight) > 0


def test_adapter_dtype_and_output_dtype():
    base = modify.Linear(8, 4, dtype=torch.bfloat16)
    block = modify.lora(base, rank=2)
    assert block.down.weight.dtype == torch.float32 and block(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    same = modify.lora(base, rank=2, adapter_dtype=torch.bfloat16)
    assert same.down.weight.dtype == torch.bfloat16 and len(same) == 3  # no casts: the documented shape
    assert len(modify.lora(modify.Linear(8, 4), rank=2)) == 3


def test_dora_starts_equal_to_the_base_and_merges(gen):
    base = modify.Sequential(fc=modify.Linear(6, 5), act=modify.Tanh())
    adapted = modify.lora(base, rank=2, dora=True)
    x = torch.randn(4, 6, generator=gen)
    assert_close(adapted(x), base(x))
    assert len(modify.lora_parameters(adapted)) == 3
    assert adapted.fc.update.weight is base.fc.weight  # tied, not copied
    with torch.no_grad():
        for p in modify.lora_parameters(adapted):
            p.add_(torch.randn(p.shape, generator=gen))
    assert_close(modify.merge_lora(adapted)(x), adapted(x), atol=1e-5)
    x64 = x.double().requires_grad_(True)
    block64 = modify.lora(modify.Linear(6, 5, dtype=torch.float64), rank=2, dora=True)
    with torch.no_grad():
        block64.update.lora_B.normal_(generator=gen)
    assert torch.autograd.gradcheck(block64, (x64,))
