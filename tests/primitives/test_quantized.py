"""NF4 dequantization in runs: bit-equal to torchao's, one full-size allocation, the same linear layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modify
from modify.primitives.quantized import QuantizedLinear, nf4_dequantized


def to_nf4(weight: torch.Tensor, block_size: int, scaler_block_size: int) -> torch.Tensor:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4 as torchao_to_nf4

    return torchao_to_nf4(weight, block_size, scaler_block_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "block_size", "scaler_block_size", "run"),
    [
        ((96, 128), 64, 64, 100),  # runs of 3 blocks (96 codes): 64 runs, the last one whole
        ((7, 64), 64, 7, 1),  # a run shorter than a block: one block a run
        ((33, 96), 32, 99, 48),  # odd rows, 16 codes a block, 33 runs
        ((13, 320), 64, 65, 1000),  # 65 blocks, runs of 31 blocks: the last run short
        ((40, 64), 16, 160, 1 << 20),  # one run over everything
    ],
)
def test_nf4_dequantized_equals_torchaos_get_original_weight_bit_for_bit(dtype, shape, block_size, scaler_block_size, run, gen):
    weight = to_nf4((3 * torch.randn(shape, generator=gen)).to(dtype), block_size, scaler_block_size)
    ours, theirs = nf4_dequantized(weight, run), weight.get_original_weight()
    assert ours.dtype == theirs.dtype == dtype and ours.shape == theirs.shape == shape
    assert torch.equal(ours, theirs)


def test_nf4_dequantized_allocates_only_its_result_at_full_size(gen):
    weight = to_nf4(torch.randn(512, 1024, generator=gen).to(torch.bfloat16), 64, 256)
    result_bytes = weight.numel() * 2

    def allocations(dequantize) -> list[int]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
            dequantize()
        return sorted(e.self_cpu_memory_usage for e in profile.events() if e.self_cpu_memory_usage > 0)  # per op

    ours, theirs = allocations(lambda: nf4_dequantized(weight, run=4096)), allocations(weight.get_original_weight)
    assert ours[-1] == result_bytes and max(ours[:-1]) <= result_bytes // 16
    assert sorted(theirs)[-2] >= result_bytes  # torchao's: int64 codes of the same size beside the result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("row_parts", [False, True])
def test_nf4_linear_equals_torchaos_in_output_and_input_gradient_bit_for_bit(dtype, bias, row_parts, gen, monkeypatch):
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor

    layer = modify.quantize(modify.Linear(128, 96, bias=bias).to(dtype), "nf4")
    parts = 3 if row_parts else 1  # 3: a vocabulary-sized head, in row chunks
    monkeypatch.setattr(QuantizedLinear, "DEQUANTIZED_AT_ONCE", 128 * 96 // parts)
    assert layer._row_parts(layer.weight) == parts
    x = torch.randn(3, 5, 128, generator=gen).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    biases = layer.bias.chunk(parts) if bias else [None] * parts
    # torchao's LinearNF4 through get_original_weight, on the same row chunks
    expected = torch.cat([F.linear(x_ref, rows, b) for rows, b in zip(layer.weight.chunk(parts), biases)], dim=-1)
    expected.backward(torch.ones_like(expected))
    calls = []
    original = NF4Tensor.get_original_weight
    monkeypatch.setattr(NF4Tensor, "get_original_weight", lambda w: calls.append(w) or original(w))
    y = layer(x)
    y.backward(torch.ones_like(y))
    assert not calls  # neither the forward nor the backward took torchao's dequantization
    assert torch.equal(y, expected) and torch.equal(x.grad, x_ref.grad)
    assert layer.weight.grad is None
