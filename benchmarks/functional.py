"""3. Functional calls: ``modify.functional_call`` and ``modify.flat`` against ``torch.func.functional_call``.

Per call, on a small MLP (64 -> 128 -> 128 -> 10, batch 16), with the model's own parameter
tensors substituted (``flat``: its own ``flat_param``), forward only, autograd recording as in
training.
"""

from __future__ import annotations

import copy

import torch

import modify

from .timing import compare, table, us


def mlp() -> modify.Sequential:
    torch.manual_seed(0)
    return modify.Sequential(
        modify.Linear(64, 128), modify.ReLU(), modify.Linear(128, 128), modify.ReLU(), modify.Linear(128, 10)
    )


def run(quick: bool) -> str:
    model, x = mlp(), torch.randn(16, 64)
    params = dict(model.named_parameters())
    flat = modify.flat(copy.deepcopy(model))
    theta = flat.flat_param
    sides = {
        "torch.func.functional_call": lambda: torch.func.functional_call(model, params, (x,)),
        "modify.functional_call": lambda: modify.functional_call(model, params, x),
        "modify.flat": lambda: flat(x, flat_param=theta),
        "plain model(x)": lambda: model(x),
    }
    for name, side in sides.items():
        torch.testing.assert_close(side(), model(x), msg=lambda m: f"functional benchmark, {name}: {m}")
    rounds, number = (7, 100) if quick else (15, 200)
    timing = compare(sides, rounds, number)
    base = "torch.func.functional_call"
    rows = []
    for name in sides:
        ratio = timing.ratio(name, base)
        met = "" if name in (base, "plain model(x)") else ("yes" if ratio <= 1.1 else "no")
        rows.append([name, us(timing.seconds(name)), f"{ratio:.3f}x", "<= 1.10x" if met else "", met])
    return table(["call on a 3-layer MLP", "time per call", "vs torch.func", "target", "met"], rows)
