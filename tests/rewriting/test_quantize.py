"""quantize: NF4/int8 leaves equal F.linear on their dequantized weight; QLoRA trains only adapters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import modify
from modify.models import GPT, GPTConfig, generate
from modify.primitives import quantized as quantized_module
from modify.primitives.quantized import QuantizedLinear, nf4_in_chunks

from helpers import assert_close, assert_state_equal, state_snapshot

SCHEMES = ["nf4", "int8"]


def mlp(dtype: torch.dtype = torch.float32) -> modify.Sequential:
    return modify.Sequential(modify.Linear(64, 128), modify.GELU(), modify.Linear(128, 32)).to(dtype)


def gpt() -> GPT:
    return GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=64))


def quantized(model: torch.nn.Module) -> list[tuple[str, QuantizedLinear]]:
    return list(modify.select(model, QuantizedLinear))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_and_input_gradients_equal_linear_on_the_dequantized_weight(scheme, dtype, gen):
    layer = modify.quantize(mlp(dtype), scheme)[2]
    reference = layer.dequantize()
    assert isinstance(layer, QuantizedLinear) and reference.shape == (32, 128) and reference.dtype == dtype
    x = torch.randn(4, 7, 128, generator=gen).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = layer(x), F.linear(x_ref, reference, layer.bias)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert_close(y, y_ref, atol=tolerance, rtol=tolerance)
    grad = torch.randn(y.shape, generator=gen).to(dtype)
    y.backward(grad)
    y_ref.backward(grad)
    assert_close(x.grad, x_ref.grad, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("bias", [True, False])
def test_a_large_nf4_weight_is_dequantized_in_row_chunks_with_the_same_results(bias, gen, monkeypatch):
    layer = modify.quantize(modify.Linear(128, 1000, bias=bias), "nf4")  # 2000 blocks of 64, 125 scale blocks of 16
    reference = layer.dequantize()
    monkeypatch.setattr(QuantizedLinear, "DEQUANTIZED_AT_ONCE", 128 * 200)  # at most 200 rows at once
    assert layer._row_parts(layer.weight) == 5  # the fewest chunks that split rows and scale blocks evenly
    chunk_sizes = []
    original = torch.Tensor.chunk
    monkeypatch.setattr(torch.Tensor, "chunk", lambda t, n, *a: chunk_sizes.append(n) or original(t, n, *a))
    x = torch.randn(3, 5, 128, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = layer(x), F.linear(x_ref, reference, layer.bias)
    assert chunk_sizes and set(chunk_sizes) == {5}
    assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(y.shape, generator=gen)
    y.backward(grad)
    y_ref.backward(grad)
    assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "block_size", "scaler_block_size", "chunk"),
    [((64, 128), 64, 128, 1024), ((320, 64), 64, 64, 640), ((1000, 64), 64, 8, 4096), ((96, 64), 32, 192, 100)],
)
def test_nf4_in_chunks_equals_torchaos_whole_tensor_to_nf4_bit_for_bit(dtype, shape, block_size, scaler_block_size, chunk, gen):
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    weight = (3 * torch.randn(shape, generator=gen)).to(dtype)
    chunked, whole = nf4_in_chunks(weight, block_size, scaler_block_size, chunk), to_nf4(weight, block_size, scaler_block_size)
    (names, context), (whole_names, whole_context) = chunked.__tensor_flatten__(), whole.__tensor_flatten__()
    assert names == whole_names and context == whole_context
    for name in names:
        assert getattr(chunked, name).dtype == getattr(whole, name).dtype
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    assert torch.equal(chunked.get_original_weight(), whole.get_original_weight())


def test_quantize_takes_a_large_weight_in_chunks_with_the_same_weight(monkeypatch):
    base = modify.Linear(128, 1000)
    whole = modify.quantize(base, "nf4")
    pieces = []
    monkeypatch.setattr(quantized_module, "QUANTIZED_AT_ONCE", 128 * 100)
    original = quantized_module.nf4_in_chunks
    monkeypatch.setattr(quantized_module, "nf4_in_chunks", lambda *a: pieces.append(a[-1]) or original(*a))
    chunked = modify.quantize(base, "nf4")
    assert pieces == [128 * 100]
    assert torch.equal(chunked.weight.quantized_data, whole.weight.quantized_data)
    assert torch.equal(chunked.dequantize(), whole.dequantize())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantized_weight_is_near_the_original(scheme):
    base = mlp()
    weight, layer = base[0].weight.detach(), modify.quantize(base, scheme)[0]
    error = (layer.dequantize() - weight).abs()
    if scheme == "int8":  # half a step of a per-row scale absmax / 127
        assert (error <= weight.abs().amax(dim=1, keepdim=True) / 254 + 1e-7).all()
    else:  # 16 levels over [-absmax, absmax] per block of 64: under a quarter of the block's range
        blocks = weight.reshape(-1, 64)
        assert (error.reshape(-1, 64) <= blocks.abs().amax(dim=1, keepdim=True) / 4).all()
        assert error.mean() < weight.abs().mean() / 5


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_weights_never_get_gradients(scheme):
    model = modify.quantize(mlp(), scheme)
    model.requires_grad_(True)  # even when asked for
    model(torch.randn(3, 64)).sum().backward()
    assert all(layer.weight.grad is None for _, layer in quantized(model))
    assert all(layer.bias.grad is not None for _, layer in quantized(model))


def test_sibling_shares_the_rest_and_leaves_the_original_untouched():
    base = gpt().train()
    snapshot, classes = state_snapshot(base), [type(m) for m in base.modules()]
    small = modify.quantize(base)
    assert_state_equal(base, snapshot)
    assert [type(m) for m in base.modules()] == classes
    paths = [path for path, _ in quantized(small)]
    assert len(paths) == 8 and all(path.endswith(("c_attn", "c_proj", "c_fc")) for path in paths)
    assert small.lm_head is base.lm_head  # tied to the token embedding: left as is, still tied
    assert small.lm_head.weight is small.transformer.embed.lookup.wte.weight
    for path, layer in quantized(small):
        original = base.get_submodule(path)
        assert layer.bias is original.bias and layer.training and layer.reference_name == original.reference_name
    assert modify.quantize(small) is small


def test_bad_arguments_raise_naming_what_arrived():
    with pytest.raises(ValueError, match=r"quantize: scheme must be one of \['nf4', 'int8'\], got 'fp4'"):
        modify.quantize(mlp(), "fp4")
    with pytest.raises(TypeError, match=r"quantize: the match at '1' is a GELU, not a modify.Linear"):
        modify.quantize(mlp(), where="1")
    with pytest.raises(ValueError, match=r"the Linear at .0.: nf4 quantizes blocks of block_size=64 values; a weight of shape \(3, 5\)"):
        modify.quantize(modify.Sequential(modify.Linear(5, 3)))
    with pytest.raises(ValueError, match=r"quantize: `where` \('blocks'\) matches no layer of the Sequential"):
        modify.quantize(mlp(), where="blocks")


def test_qlora_trains_only_the_adapters_and_the_loss_falls(gen):
    base = gpt()
    base.requires_grad_(False)  # freeze the base, as for any LoRA sibling
    qlora = modify.lora(modify.quantize(base), rank=4, alpha=8.0)
    adapters = modify.lora_parameters(qlora)
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    ids = torch.randint(0, 64, (4, 16), generator=gen)
    losses = []
    for _ in range(20):
        logits = qlora(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    with_grad = {id(p) for p in qlora.parameters() if p.grad is not None}
    assert with_grad == {id(p) for p in adapters}
    assert all(p.dtype == torch.float32 for p in adapters)


def test_merge_lora_gives_float_linears_with_equal_outputs(gen):
    qlora = modify.lora(modify.quantize(gpt()), rank=4)
    with torch.no_grad():
        for p in modify.lora_parameters(qlora):
            p.normal_(std=0.1, generator=gen)
    merged = modify.merge_lora(qlora)
    assert not quantized(merged) and not list(modify.select(merged, modify.LoRA))
    assert list(merged.state_dict()) == list(gpt().state_dict())
    ids = torch.randint(0, 64, (2, 16), generator=gen)
    assert_close(merged(ids), qlora(ids), atol=1e-5)


def test_composes_with_checkpointing_and_compiles_without_graph_breaks(gen):
    qlora = modify.lora(modify.quantize(gpt()), rank=4)
    with torch.no_grad():
        for p in modify.lora_parameters(qlora):
            p.normal_(std=0.1, generator=gen)
    light = modify.checkpoint_activations(qlora, where="transformer.h.*")
    ids = torch.randint(0, 64, (2, 16), generator=gen)
    expected = qlora(ids)
    expected.sum().backward()
    grads = [p.grad.clone() for p in modify.lora_parameters(qlora)]
    qlora.zero_grad()
    compiled = torch.compile(light, backend="eager", fullgraph=True)
    out = compiled(ids)
    out.sum().backward()
    assert_close(out, expected, atol=1e-5)
    for p, grad in zip(modify.lora_parameters(light), grads):
        assert_close(p.grad, grad, atol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deepcopy_keeps_the_quantized_weights(scheme):
    small = modify.quantize(mlp(), scheme)
    again = copy.deepcopy(small)
    assert again[0].weight is not small[0].weight and again[0].weight.__tensor_flatten__()[0]
    x = torch.randn(2, 64)
    assert torch.equal(again(x), small(x)) and isinstance(again[0], QuantizedLinear)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fuse_and_cached_decoding_run_on_a_quantized_model(scheme, gen):
    small = modify.quantize(gpt().eval(), scheme)
    ids = torch.randint(0, 64, (2, 8), generator=gen)
    assert torch.equal(modify.fuse(small)(ids), small(ids))
    cached = generate(small, ids, 6, top_k=1)
    assert torch.equal(cached, generate(small, ids, 6, top_k=1, use_cache=False))
