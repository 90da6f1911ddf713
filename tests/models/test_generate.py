"""``modify.models.generate`` and its key/value-cache sibling against transformers' ``generate``."""

from __future__ import annotations

import pytest
import torch
import transformers

import modify
from helpers import assert_state_equal, state_snapshot
from modify.models import (
    CachedAttention,
    CachedTokenInput,
    CachedRotaryEmbedding,
    cache_offset,
    generate,
    kv_cache,
    reset_cache,
)
from reference_pairs import gpt_pair, llama_pair

LLAMA3 = dict(
    rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=16),
)  # fmt: skip

PAIRS = {
    "gpt2": gpt_pair,
    "llama": llama_pair,
    "llama3 rope, tied": lambda: llama_pair(**LLAMA3, tie_word_embeddings=True),
    "llama, one kv head": lambda: llama_pair(num_key_value_heads=1),
}


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request):
    return PAIRS[request.param]()


def prompts(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(3))


def test_greedy_equals_transformers_with_and_without_cache(pair):
    reference, ours = pair
    prompt = prompts()
    expected = reference.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False, pad_token_id=0,
    )  # fmt: skip
    assert expected.shape == (2, 25)  # no early stop at an end-of-sequence token
    assert torch.equal(generate(ours, prompt, 20, top_k=1), expected)
    assert torch.equal(generate(ours, prompt, 20, top_k=1, use_cache=False), expected)


def test_seeded_sampling_is_the_same_with_and_without_cache(pair):
    _, ours = pair
    runs = [
        generate(ours, prompts(3, 4), 15, temperature=1.5, top_k=20, use_cache=cache,
                 generator=torch.Generator().manual_seed(7))
        for cache in (True, False)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (3, 19) and len(set(runs[0][:, 4:].flatten().tolist())) > 3  # it did sample


def test_generate_leaves_the_model_untouched(pair):
    _, ours = pair
    before, params, modules = state_snapshot(ours), list(ours.parameters()), list(ours.modules())
    buffers = [id(b) for b in ours.buffers()]
    generate(ours, prompts(), 6)
    assert_state_equal(ours, before)
    assert all(a is b for a, b in zip(ours.parameters(), params, strict=True))
    assert all(a is b for a, b in zip(ours.modules(), modules, strict=True))
    assert [id(b) for b in ours.buffers()] == buffers


def test_the_sibling_shares_every_parameter_and_caches_only_position_leaves(pair):
    _, ours = pair
    sibling = kv_cache(ours)
    assert type(sibling) is type(ours) and sibling.config is ours.config
    assert all(a is b for a, b in zip(sibling.parameters(), ours.parameters(), strict=True))
    assert sibling.state_dict().keys() == ours.state_dict().keys()
    swapped = {path for path, m in sibling.named_modules() if m is not dict(ours.named_modules()).get(path)}
    leaves = {path for path in swapped if not isinstance(sibling.get_submodule(path), modify.Combinator)}
    cached = (CachedAttention, CachedTokenInput, CachedRotaryEmbedding)
    assert leaves and all(isinstance(sibling.get_submodule(path), cached) for path in leaves)
    assert not modify.select(ours, lambda path, module: isinstance(module, cached))


def test_feeding_in_pieces_equals_the_whole_sequence(pair):
    _, ours = pair
    ids = prompts(2, 12)
    whole = ours(ids)
    sibling = kv_cache(ours)
    pieces = [sibling(ids[:, :5]), sibling(ids[:, 5:6]), sibling(ids[:, 6:10]), sibling(ids[:, 10:])]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=1e-5)
    assert cache_offset(sibling) == 12
    reset_cache(sibling)
    assert cache_offset(sibling) == 0
    torch.testing.assert_close(sibling(ids), whole, atol=1e-5, rtol=1e-5)


def test_longer_than_the_context_crops_like_the_uncached_loop():
    _, ours = gpt_pair()
    prompt = prompts(1, 20)
    cached = generate(ours, prompt, 30, top_k=1)
    assert torch.equal(cached, generate(ours, prompt, 30, top_k=1, use_cache=False))
    assert torch.equal(cached, generate(ours, prompt, 30, top_k=1, block_size=32))


def test_a_lora_sibling_decodes_through_the_cache():
    _, ours = gpt_pair()
    adapted = modify.lora(ours, rank=2)
    with torch.no_grad():
        for p in modify.lora_parameters(adapted):
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
    prompt = prompts()
    assert torch.equal(generate(adapted, prompt, 8, top_k=1), generate(adapted, prompt, 8, top_k=1, use_cache=False))
    assert not torch.equal(generate(adapted, prompt, 8, top_k=1), generate(ours, prompt, 8, top_k=1))


def test_cached_leaves_refuse_what_they_cannot_do():
    _, ours = gpt_pair()
    sibling = kv_cache(ours)
    sibling(prompts(2, 3))
    with pytest.raises(ValueError, match=r"CachedAttention at 'transformer\.h\.0\.attn\.3\.1\.attend'.*reset"):
        sibling(prompts(3, 1))
    sibling = kv_cache(ours)
    sibling(prompts(1, 30))
    path = r"'transformer\.embed\.tokens'"
    with pytest.raises(ValueError, match=rf"CachedTokenInput at {path}.*30 \+ T <= 32"):
        sibling(prompts(1, 3))
    with pytest.raises(ValueError, match="not causal"):
        CachedAttention(modify.ScaledDotProductAttention())


@pytest.mark.parametrize("padded", [False, True])
def test_a_static_cache_fed_in_pieces_equals_the_whole_sequence_in_storage_allocated_once(pair, padded):
    _, ours = pair
    ids = prompts(2, 12)
    mask = torch.ones_like(ids).index_fill_(1, torch.arange(3), 0)[[0, 1]] if padded else None
    if padded:
        mask[1] = 1  # row 0 left-padded by 3, row 1 not
    inputs = (lambda part: (ids[:, part], mask[:, part])) if padded else (lambda part: ids[:, part])
    whole = ours(inputs(slice(None)))
    sibling = kv_cache(ours, capacity=14)
    with torch.no_grad():  # where autograd records, the cache is concatenated instead
        pieces = [sibling(inputs(slice(0, 5)))]
        storage = [(m.cached_key.data_ptr(), m.cached_key.shape[-2]) for _, m in modify.select(sibling, CachedAttention)]
        pieces += [sibling(inputs(slice(i, i + 1))) for i in range(5, 12)]
    tokens = mask.bool() if padded else torch.ones_like(ids, dtype=torch.bool)
    torch.testing.assert_close(torch.cat(pieces, dim=1)[tokens], whole[tokens], atol=1e-5, rtol=1e-5)
    after = [(m.cached_key.data_ptr(), m.cached_key.shape[-2]) for _, m in modify.select(sibling, CachedAttention)]
    assert after == storage and {size for _, size in storage} == {14}
    assert all(p is q for p, q in zip(sibling.parameters(), ours.parameters(), strict=True))


def test_a_static_cache_refuses_more_positions_than_its_capacity():
    _, ours = gpt_pair()
    sibling = kv_cache(ours, capacity=4)
    sibling(prompts(1, 3))
    with pytest.raises(ValueError, match=r"CachedAttention at 'transformer\.h\.0\.attn\.3\.1\.attend' expected at most 4 "
                                         r"positions, 3 cached, got .*tensor\(1, 4, 2, 8\)"):
        sibling(prompts(1, 2))
    for capacity, name in ((0, "kv_cache"), (-1, "CachedAttention")):
        with pytest.raises(ValueError, match=f"{name}: capacity must be at least 1, got {capacity}"):
            kv_cache(ours, capacity=capacity) if name == "kv_cache" else CachedAttention(
                modify.ScaledDotProductAttention(causal=True), capacity
            )


def test_a_static_cache_keeps_gradients_where_autograd_records():
    _, ours = gpt_pair()
    ids = prompts(2, 6)
    sibling = kv_cache(ours, capacity=8)
    logits = torch.cat((sibling(ids[:, :4]), sibling(ids[:, 4:])), dim=1)
    torch.testing.assert_close(logits, ours(ids), atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(logits.square().sum(), ours.lm_head.weight)
    (expected,) = torch.autograd.grad(ours(ids).square().sum(), ours.lm_head.weight)
    torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make, padded", [(gpt_pair, False), (gpt_pair, True), (llama_pair, True)])
def test_compiled_decoding_makes_one_graph_for_20_steps_with_transformers_tokens(make, padded, monkeypatch):
    """The point is recompiles, so the eager backend (dynamo's tracing and guards without inductor)."""
    reference, ours = make()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compile_(model, **{**kwargs, "backend": "eager"}))
    ids = prompts(2, 5)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :2] = 0  # row 0 left-padded by 2
        ids = ids * mask
    expected = reference.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    attention_mask = mask if padded else None
    got = generate(ours, ids, 20, top_k=1, attention_mask=attention_mask, compile=True)
    assert torch.equal(got, expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # 19 one-position steps, one graph
    assert torch.equal(generate(ours, ids, 20, top_k=1, attention_mask=attention_mask, compile=True), got)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # a second generate compiles nothing


def test_a_static_cache_attends_over_the_positions_written_only(monkeypatch):
    _, ours = gpt_pair()
    keys_seen = []
    attend = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        keys_seen.append(k.shape[-2])
        return attend(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    ids = prompts(2, 8)
    sibling = kv_cache(ours, capacity=14)
    with torch.no_grad():
        logits = torch.cat([sibling(ids[:, :5])] + [sibling(ids[:, i : i + 1]) for i in range(5, 8)], dim=1)
    layers = len(modify.select(ours, modify.ScaledDotProductAttention))
    assert keys_seen == [size for size in (5, 6, 7, 8) for _ in range(layers)]  # not 14 each
    torch.testing.assert_close(logits, ours(ids), atol=1e-5, rtol=1e-5)


def _graphs_compiled(monkeypatch) -> list[torch.fx.GraphModule]:
    """Route ``torch.compile`` to a backend that keeps dynamo's graphs and runs them as traced."""
    graphs, compile_ = [], torch.compile

    def keep(graph, example_inputs, **options):
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compile_(model, **{**kwargs, "backend": keep}))
    torch._dynamo.reset()
    return graphs


def _argmaxes(graph: torch.fx.GraphModule) -> int:
    return sum(node.target in ("argmax", torch.argmax) for node in graph.graph.nodes)


def test_compiled_greedy_decoding_takes_the_argmax_in_the_graph(monkeypatch):
    reference, ours = gpt_pair()
    graphs = _graphs_compiled(monkeypatch)
    ids, mask = prompts(3, 6), torch.ones(3, 6, dtype=torch.long)
    mask[1, :3] = 0
    ids = ids * mask
    expected = reference.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, ids, 8, top_k=1, attention_mask=mask, compile=True), expected)
    assert len(graphs) == 1 and _argmaxes(graphs[0]) == 1


def test_compiled_sampling_draws_the_eager_samples(monkeypatch):
    _, ours = gpt_pair()
    graphs = _graphs_compiled(monkeypatch)
    ids = prompts(2, 4)
    draw = lambda compile: generate(  # noqa: E731
        ours, ids, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7), compile=compile
    )
    assert torch.equal(draw(True), draw(False))
    assert len(graphs) == 1 and _argmaxes(graphs[0]) == 0  # the logits leave the graph; sampling is eager


@pytest.mark.parametrize(
    "model, match",
    [
        (modify.Sequential(modify.Linear(4, 4)), "no ScaledDotProductAttention"),
        (modify.Sequential(attn=modify.ScaledDotProductAttention()), "'attn' is not causal"),
    ],
)
def test_kv_cache_refuses_models_it_cannot_cache(model, match):
    with pytest.raises(ValueError, match=match):
        kv_cache(model)


def test_cache_offset_refuses_a_partly_called_or_uncached_model():
    _, ours = gpt_pair()
    with pytest.raises(ValueError, match="no cached leaf"):
        cache_offset(ours)
    sibling = kv_cache(ours)
    sibling.transformer.embed(prompts(1, 2))
    with pytest.raises(ValueError, match=r"offsets .*'transformer\.embed\.tokens': 2"):
        cache_offset(sibling)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=float("nan")), "finite temperature > 0"),
        (dict(temperature=float("inf")), "finite temperature > 0"),
        (dict(temperature=-1.0), "finite temperature > 0"),
        (dict(idx=torch.zeros(0, 3, dtype=torch.long)), r"B, T >= 1, got \(0, 3\)"),
        (dict(idx=torch.zeros(1, 3, dtype=torch.bool)), "integer ids"),
        (dict(idx=torch.zeros(1, 3)), "integer ids"),
        (dict(block_size=0), "block_size must be at least 1"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    _, ours = gpt_pair()
    with pytest.raises(ValueError, match=match):
        generate(**{**dict(model=ours, idx=prompts(), max_new_tokens=2), **kwargs})


def test_the_result_is_an_ordinary_tensor_and_progress_sees_every_step():
    _, ours = gpt_pair()
    seen = []

    def progress(steps):
        for step in steps:
            seen.append(step)
            yield step

    out = generate(ours, prompts(), 7, progress=progress)
    assert seen == list(range(7)) and not out.is_inference() and out.dtype == torch.long
    ours(out).sum().backward()  # feeds training: autograd accepts it
    assert ours.lm_head.weight.grad is not None
    narrow = generate(ours, prompts().int(), 7, top_k=1)  # int32 ids: int64 out, the prompt kept
    assert narrow.dtype == torch.long and torch.equal(narrow, generate(ours, prompts(), 7, top_k=1))
