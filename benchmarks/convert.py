"""5. ``modify.convert``: a converted plain-torch nanoGPT against the original, eager training step.

The original is ``benchmarks/reference_gpt.py`` (nanoGPT's ``model.py``); ``modify.convert``
turns it into leaves joined by ``Sequential``/``Parallel`` that hold its very parameters. Both
sides (and the as-built ``modify.models.GPT`` of the same weights, for comparison) run the
overhead benchmark's training step: forward, cross entropy, backward. Sizes as there.
"""

from __future__ import annotations

import torch

import modify

from .overhead import SIZES, models, training_step
from .timing import compare, table, us

TARGET = 1.10


def run(quick: bool) -> str:
    rows = []
    rounds = 7 if quick else 15
    for size in SIZES:
        reference, ours = models(size)
        converted = modify.convert(reference)
        x = torch.randint(0, size.vocab_size, (size.batch, size.seq))
        with torch.no_grad():
            error = (converted(x) - reference(x)).abs().max().item()
        if error > 1e-5:
            raise RuntimeError(f"convert benchmark: the converted GPT differs from the original by {error}")
        number = 5 if size.name == "tiny" else 1
        sides = {"reference": reference, "converted": converted, "modify GPT": ours}
        timing = compare({k: training_step(m, size) for k, m in sides.items()}, rounds, number)
        converted_ratio, built_ratio = (timing.ratio(k, "reference") for k in ("converted", "modify GPT"))
        leaves = sum(1 for m in converted.modules() if isinstance(m, modify.Leaf))
        met = converted_ratio <= TARGET and converted_ratio <= built_ratio
        rows.append([
            size.name, f"{sum(1 for _ in converted.modules())} ({leaves} leaves)", us(timing.seconds("reference")),
            us(timing.seconds("converted")), f"{converted_ratio:.3f}x", f"{built_ratio:.3f}x",
            f"<= {TARGET:.2f}x and <= modify GPT", "yes" if met else "no",
        ])
    headers = ["size", "converted tree (modules)", "plain torch", "converted", "ratio", "modify GPT ratio", "target", "met"]
    return table(headers, rows)
