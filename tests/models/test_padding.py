"""Padded batches: ``(ids, attention_mask)`` through GPT, Llama and their siblings, against transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

import modify
from modify.models import GPT, CarryAdd, Llama, Pick, TokenInput, generate, kv_cache
from reference_pairs import gpt_pair, llama_pair

PAIRS = {"gpt2": gpt_pair, "llama": llama_pair}


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request):
    return PAIRS[request.param]()


def batch(side: str, gen_seed: int = 2):
    """``(ids, mask)``: 3 rows of lengths 10, 6 and 3 padded to 10 on ``side``; padding holds random ids."""
    gen = torch.Generator().manual_seed(gen_seed)
    ids = torch.randint(0, 64, (3, 10), generator=gen)
    lengths = torch.tensor([10, 6, 3])
    arange = torch.arange(10)
    mask = arange < lengths[:, None] if side == "right" else arange >= 10 - lengths[:, None]
    return ids, mask.long()


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_masked_logits_equal_transformers_at_every_token(pair, side):
    reference, ours = pair
    ids, mask = batch(side)
    expected = reference(ids, attention_mask=mask, position_ids=positions(mask)).logits
    logits = ours((ids, mask))
    tokens = mask.bool()
    torch.testing.assert_close(logits[tokens], expected[tokens], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_content_changes_nothing_and_rows_equal_themselves_alone(pair, side):
    _, ours = pair
    ids, mask = batch(side)
    other = torch.where(mask.bool(), ids, (ids + 7) % 64)
    logits, tokens = ours((ids, mask)), mask.bool()
    torch.testing.assert_close(ours((other, mask))[tokens], logits[tokens], atol=1e-6, rtol=1e-6)
    for row in range(3):
        alone = ours(ids[row : row + 1, tokens[row]])
        torch.testing.assert_close(logits[row, tokens[row]], alone[0], atol=1e-5, rtol=1e-5)


def test_a_bool_mask_equals_an_integer_one_and_a_full_mask_equals_plain_ids(pair):
    _, ours = pair
    ids, mask = batch("left")
    torch.testing.assert_close(ours((ids, mask.bool())), ours((ids, mask)), atol=0, rtol=0)
    torch.testing.assert_close(ours((ids, torch.ones_like(ids))), ours(ids), atol=1e-6, rtol=1e-6)


def _siblings(model):
    adapted = modify.lora(model, rank=2)
    with torch.no_grad():
        for p in modify.lora_parameters(adapted):
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
    mutable = modify.mutable(model)
    return {
        "lora": adapted, "merge_lora": modify.merge_lora(adapted), "fuse": modify.fuse(model), "mutable": mutable,
    }  # fmt: skip


@pytest.mark.parametrize("name", ["lora", "merge_lora", "fuse", "mutable", "kv_cache"])
def test_each_sibling_gives_padded_rows_their_logits_alone(pair, name):
    _, ours = pair
    ids, mask = batch("left")
    tokens = mask.bool()
    for row in range(3):
        sibling = kv_cache(ours) if name == "kv_cache" else _siblings(ours)[name]
        padded = sibling((ids, mask))
        fresh = kv_cache(ours) if name == "kv_cache" else sibling
        alone = fresh(ids[row : row + 1, tokens[row]])
        torch.testing.assert_close(padded[row, tokens[row]], alone[0], atol=1e-5, rtol=1e-5)


def test_kv_cache_fed_in_pieces_equals_the_padded_batch_whole(pair):
    _, ours = pair
    ids, mask = batch("left")
    sibling = kv_cache(ours)
    pieces = [sibling((ids[:, part], mask[:, part])) for part in (slice(0, 4), slice(4, 5), slice(5, None))]
    tokens = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[tokens], ours((ids, mask))[tokens], atol=1e-5, rtol=1e-5)


def test_padded_training_loss_and_gradients_equal_transformers_with_labels_minus_100(pair):
    reference, ours = pair
    ids, mask = batch("right")
    labels = ids.masked_fill(~mask.bool(), -100)
    expected = reference(ids, attention_mask=mask, position_ids=positions(mask), labels=labels).loss
    logits = ours((ids, mask))
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    expected.backward()
    loss.backward()
    head, embeddings = reference.get_output_embeddings(), reference.get_input_embeddings()
    torch.testing.assert_close(ours.lm_head.weight.grad, head.weight.grad, atol=1e-5, rtol=1e-4)
    path = "transformer.embed.lookup.wte" if isinstance(ours, GPT) else "model.embed.embed_tokens"
    torch.testing.assert_close(ours.get_submodule(path).weight.grad, embeddings.weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_with_left_padding_equals_transformers_greedy(pair, use_cache):
    reference, ours = pair
    ids, mask = batch("left")
    ids = ids * mask  # padding id 0, as a tokenizer's pad token
    expected = reference.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, ids, 8, top_k=1, attention_mask=mask, use_cache=use_cache), expected)


def test_generate_refuses_a_right_padded_mask_naming_the_rows():
    _, ours = gpt_pair()
    ids, mask = batch("right")
    with pytest.raises(ValueError, match=r"rows \[1, 2\] are padded on the right"):
        generate(ours, ids, 2, top_k=1, attention_mask=mask)
    with pytest.raises(ValueError, match=r"rows \[0\] hold no token"):
        generate(ours, ids, 2, top_k=1, attention_mask=torch.cat((torch.zeros(1, 10), torch.ones(2, 10))).long())
    with pytest.raises(ValueError, match="attention_mask must be bool or integer"):
        generate(ours, ids, 2, top_k=1, attention_mask=mask.float())


@pytest.mark.parametrize("make", [gpt_pair, llama_pair])
def test_the_entry_checks_ids_and_mask_naming_the_path_and_what_arrived(make):
    _, ours = make()
    entry = "'transformer.embed.tokens'" if isinstance(ours, GPT) else "'model.tokens'"
    with pytest.raises(ValueError, match=rf"TokenInput at {entry} expected token ids of shape \(B, T\).*\(5,\) int64"):
        ours(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match=rf"TokenInput at {entry} expected integer token ids.*float32"):
        ours(torch.zeros(2, 5))
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"TokenInput at {entry} expected an attention_mask of the ids'.*\(2, 4\)"):
        ours((ids, torch.ones(2, 4, dtype=torch.long)))
    with pytest.raises(TypeError, match=rf"TokenInput at {entry} expected a bool or integer attention_mask"):
        ours((ids, torch.ones(2, 5)))
    with pytest.raises(ValueError, match=rf"TokenInput at {entry} expected a tuple of 2 values|got a tuple of 3"):
        ours((ids, ids, ids))


def test_token_input_positions_follow_transformers_generate():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ids = torch.zeros_like(mask)
    _, got, padded = TokenInput(limit=5)((ids, mask))
    expected = mask.long().cumsum(-1) - 1
    expected.masked_fill_(mask == 0, 1)  # transformers' generate; padded positions are unspecified here
    assert torch.equal(got[mask.bool()], expected[mask.bool()]) and torch.equal(padded, mask.bool())
    with pytest.raises(ValueError, match="T <= 4"):
        TokenInput(limit=4)(ids)


def test_pick_and_carry_add_restructure_without_copies():
    h, q, m = torch.randn(2, 3), torch.randn(2, 3), torch.ones(2, dtype=torch.bool)
    out = Pick(0, ("1.0", 2), 2)((h, (q,), m))
    assert out[0] is h and out[1][0] is q and out[1][1] is m and out[2] is m
    added = CarryAdd()((h, q, m))
    assert torch.equal(added[0], h + q) and added[1] is m
    with pytest.raises(ValueError, match=r"Pick.*has no element 1\.1"):
        Pick("1.1")((h, (q,)))
    with pytest.raises(TypeError, match="an item must be"):
        Pick(1.5)
    with pytest.raises(ValueError, match="different shapes"):
        CarryAdd()((h, q[:1], m))


def test_masked_attention_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    key_mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    attend = modify.ScaledDotProductAttention(causal=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attend((q, k, v, key_mask)), (q, k, v))
    allowed = torch.ones(4, 4, dtype=torch.bool).tril() & key_mask[:, None, None, :] | torch.eye(4, dtype=torch.bool)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(attend((q, k, v, key_mask)), expected)


# Inductor imports a module that still uses torch.jit.script_method (torch's own deprecation).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_generate_compiled_decodes_the_same_tokens():
    _, ours = gpt_pair()
    ids, mask = batch("left")
    ids = ids * mask
    expected = generate(ours, ids, 6, top_k=1, attention_mask=mask)
    assert torch.equal(generate(ours, ids, 6, top_k=1, attention_mask=mask, compile=True), expected)
