"""``DecodingHead``, the output head ``generate`` decodes through, against ``torch.nn.functional.linear``
and transformers' greedy tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modify
from helpers import assert_state_equal, state_snapshot
from modify.models import DecodingHead, generate
from modify.models import decoding as decoding_module
from modify.models.decoding_head import decoding_head
from modify.primitives.transposed_linear import TransposedLinear
from reference_pairs import gpt_pair, llama_pair

PAIRS = {"gpt2": gpt_pair, "llama": llama_pair}


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request):
    return PAIRS[request.param]()


@pytest.fixture
def heads_made(monkeypatch):
    """The heads ``generate`` decodes through, recorded as ``decoding_head`` returns them."""
    made = []

    def recording(head, rows, new_tokens):
        made.append(decoding_head(head, rows, new_tokens))
        return made[-1]

    monkeypatch.setattr(decoding_module, "decoding_head", recording)
    return made


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 4)])
def test_logits_equal_the_plain_heads_up_to_rounding(bias, copy, shape):
    head = modify.Linear(32, 300, bias=bias)
    fast = DecodingHead.of(head, transposed_copy=copy)
    x = torch.randn(*shape, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast(x), F.linear(x, head.weight, head.bias))
    assert fast(x).shape == (*shape, 300)


def test_gradients_through_the_uncopied_layout_equal_f_linear():
    head = modify.Linear(5, 7, dtype=torch.float64)
    fast = DecodingHead.of(head, transposed_copy=False)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fast(x), (x, fast.weight, fast.bias))
    ours = torch.autograd.grad(fast(x).sin().sum(), (x, fast.weight, fast.bias))
    theirs = torch.autograd.grad(F.linear(x, head.weight, head.bias).sin().sum(), (x, head.weight, head.bias))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_the_head_shares_its_weight_and_keeps_the_copy_out_of_the_state_dict():
    head = modify.Linear(16, 40)
    before = state_snapshot(head)
    fast = DecodingHead.of(head, transposed_copy=True)
    assert fast.weight is head.weight and fast.bias is head.bias
    assert fast.weight_t.is_contiguous() and torch.equal(fast.weight_t, head.weight.t())
    assert fast.weight_t.data_ptr() != head.weight.data_ptr()
    assert set(fast.state_dict()) == {"weight", "bias"} and "weight_t" not in dict(head.named_buffers())
    assert "transposed_copy=True" in repr(fast)
    assert_state_equal(head, before)


@pytest.mark.parametrize(
    "make",
    [
        lambda: modify.Linear(8, 16, dtype=torch.float64),
        lambda: TransposedLinear(8, 16),
        lambda: modify.quantize(modify.Sequential(head=modify.Linear(64, 16)), "int8").head,
        lambda: modify.lora(modify.Sequential(head=modify.Linear(8, 16)), rank=2).head,
    ],
    ids=["float64", "transposed", "quantized", "lora"],
)
def test_other_heads_are_left_as_they_are(make):
    head = make()
    assert decoding_head(head, rows=1, new_tokens=100) is head


def test_the_copy_is_made_for_one_row_and_enough_new_tokens():
    head = modify.Linear(64, 16)
    assert decoding_head(head, rows=1, new_tokens=8).weight_t is not None  # 64 / 8 tokens
    assert decoding_head(head, rows=1, new_tokens=7).weight_t is None
    assert decoding_head(head, rows=2, new_tokens=100).weight_t is None


@pytest.mark.parametrize("rows", [1, 3])
def test_greedy_tokens_equal_transformers_and_the_model_is_unchanged(pair, rows, heads_made):
    reference, ours = pair
    before, weight = state_snapshot(ours), ours.lm_head.weight
    prompt = torch.randint(1, 64, (rows, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompt)
    if rows > 1:
        mask[1, :3] = 0  # row 1 left-padded
        prompt = prompt * mask
    expected = reference.generate(prompt, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 16, top_k=1, attention_mask=mask), expected)
    (head,) = heads_made
    assert isinstance(head, DecodingHead) and head.weight is weight
    assert (head.weight_t is not None) == (rows == 1)
    assert_state_equal(ours, before)
    assert ours.lm_head.weight is weight and type(ours.lm_head) is modify.Linear


def test_compiled_decoding_through_the_copied_head_makes_one_graph(monkeypatch, heads_made):
    reference, ours = gpt_pair()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compile_(model, **{**kwargs, "backend": "eager"}))
    prompt = torch.randint(1, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert torch.equal(generate(ours, prompt, 20, top_k=1, compile=True), expected)
    assert heads_made[0].weight_t is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # 19 one-position steps, one graph
    assert torch.equal(generate(ours, prompt, 20, top_k=1, compile=True), expected)
    assert heads_made[1].weight_t is not heads_made[0].weight_t  # a copy per call
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # a new copy compiles nothing
