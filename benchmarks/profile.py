"""Where the eager time goes: ``python -m benchmarks.profile``.

For the tiny GPT of the overhead benchmark (reference, as built, fused) it prints the module calls
per forward, the ATen ops per training step (``torch.profiler``), and the cost of the pieces where
the algebra differs from hand-written torch (each timed alone, median of rounds).
"""

from __future__ import annotations

import collections
import einops
import torch
from torch.profiler import ProfilerActivity, profile

import modify

from .overhead import SIZES, models, training_step
from .timing import compare, table


def module_calls(model: torch.nn.Module, x: torch.Tensor) -> int:
    calls = collections.Counter()
    handles = [m.register_forward_pre_hook(lambda m, args: calls.update([id(m)])) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sum(calls.values())


def aten_ops(step) -> int:
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def pieces(rounds: int = 9) -> list[list[str]]:
    """The algebra's building blocks against the torch code they replace, interleaved pairwise."""
    x = torch.randn(4, 64, 128, requires_grad=True)
    pair = modify.Sequential(modify.LayerNorm(128), modify.ElementwiseAffine(128))
    fused, torch_norm = modify.fuse(pair), torch.nn.LayerNorm(128)
    residual, identity, torch_identity = modify.Residual(modify.Identity()), modify.Identity(), torch.nn.Identity()
    rearrange = modify.Rearrange("b t (h d) -> b h t d", h=4)
    cases = [
        ("LayerNorm, ElementwiseAffine (fwd+bwd)", lambda: pair(x).sum().backward(), lambda: torch_norm(x).sum().backward()),
        ("fuse(...) of the same (fwd+bwd)", lambda: fused(x).sum().backward(), lambda: torch_norm(x).sum().backward()),
        ("Residual(Identity()) vs x + x", lambda: residual(x), lambda: x + x),
        ("Rearrange leaf vs view, transpose", lambda: rearrange(x), lambda: x.view(4, 64, 4, 32).transpose(1, 2)),
        ("einops.rearrange vs view, transpose", lambda: einops.rearrange(x, "b t (h d) -> b h t d", h=4), lambda: x.view(4, 64, 4, 32).transpose(1, 2)),
        ("Identity leaf vs nn.Identity", lambda: identity(x), lambda: torch_identity(x)),
    ]
    rows = []
    for name, ours, theirs in cases:
        timing = compare({"modify": ours, "torch": theirs}, rounds, number=200)
        ours_us, torch_us = timing.seconds("modify") * 1e6, timing.seconds("torch") * 1e6
        rows.append([name, f"{ours_us:.1f} µs", f"{torch_us:.1f} µs", f"{ours_us - torch_us:+.1f} µs"])
    return rows


def main() -> None:
    size = SIZES[0]
    reference, ours = models(size)
    sides = {"plain torch": reference, "modify, as built": ours, "modify, fused": modify.fuse(ours)}
    x = torch.randint(0, size.vocab_size, (size.batch, size.seq))
    rows = [[name, module_calls(m, x), aten_ops(training_step(m, size))] for name, m in sides.items()]
    print(f"tiny GPT ({size.n_layer} layers, width {size.n_embd}), batch {size.batch} x {size.seq}\n")
    print(table(["model", "module calls per forward", "ATen ops per training step"], rows))
    print()
    print(table(["piece", "modify", "torch", "difference"], pieces()))


if __name__ == "__main__":
    main()
