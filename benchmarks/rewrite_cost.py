"""4. Rewrite cost: ``select``, ``rewrite`` and ``lora`` on a model of 10,000 leaves; memory of a sibling.

The model is ``Sequential`` of 5,000 ``Sequential(Linear(4, 4), ReLU())`` blocks. Each operation
is timed alone (median of several runs). Memory: the bytes of base parameters a LoRA sibling
holds in storage of its own, found by comparing storage pointers (0 means every base parameter
of the sibling lives in the base model's storage).
"""

from __future__ import annotations

import statistics
import time

import torch

import modify

from .timing import table, us

BLOCKS = 5_000


def model() -> modify.Sequential:
    torch.manual_seed(0)
    return modify.Sequential(*(modify.Sequential(modify.Linear(4, 4), modify.ReLU()) for _ in range(BLOCKS)))


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls (3 for an operation slower than half a second), and a result."""
    times = []
    while len(times) < (repeats if not times or times[0] < 0.5 else 3):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def copied_base_bytes(base: torch.nn.Module, sibling: torch.nn.Module) -> tuple[int, int]:
    """Bytes of the sibling's parameters outside the base's storage: (base-shaped ones, adapters)."""
    adapters = {id(p) for p in modify.lora_parameters(sibling)}
    base_storage = {p.untyped_storage().data_ptr() for p in base.parameters()}
    copied = adapter_bytes = 0
    for p in sibling.parameters():
        size = p.numel() * p.element_size()
        if id(p) in adapters:
            adapter_bytes += size
        elif p.untyped_storage().data_ptr() not in base_storage:
            copied += size
    return copied, adapter_bytes


def run(quick: bool) -> str:
    base = model()
    leaves = sum(1 for m in base.modules() if not isinstance(m, modify.Combinator))
    repeats = 3 if quick else 7
    operations = {
        "select(model, Linear)": lambda: modify.select(base, modify.Linear),
        "rewrite one leaf (by path)": lambda: modify.rewrite(base, lambda m: modify.GELU(), "0.1"),
        "rewrite all 5,000 ReLU -> GELU": lambda: modify.rewrite(base, lambda m: modify.GELU(), modify.ReLU),
        "lora one Linear (by path)": lambda: modify.lora(base, rank=2, where=("0.0",)),
        "lora all 5,000 Linear": lambda: modify.lora(base, rank=2),
    }
    rows = []
    for name, fn in operations.items():
        seconds, result = timed(fn, repeats)
        memory = ""
        if name.startswith("lora"):
            copied, adapters = copied_base_bytes(base, result)
            memory = f"{copied} B base copied, {adapters:,} B adapters"
        rows.append([name, us(seconds), "< 50 ms", "yes" if seconds < 0.05 else "no", memory])
    title = f"on {leaves:,} leaves"
    return table([title, "time", "target", "met", "sibling memory"], rows)
