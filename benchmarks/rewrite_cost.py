"""4. Rewrite cost: ``select``, ``rewrite`` and ``lora`` on a model of 10,000 leaves; memory of a sibling.

The model is ``Sequential`` of 5,000 ``Sequential(Linear(4, 4), ReLU())`` blocks. Each operation
is timed alone (median of several runs). Memory: the bytes of base parameters a LoRA sibling
holds in storage of its own, found by comparing storage pointers (0 means every base parameter
of the sibling lives in the base model's storage).

Two ratios, each side timed in the same rounds (interleaved, median of the per-round ratios):

- walk overhead: (``rewrite`` of all 5,000 ``ReLU`` to ``GELU`` minus building 5,000 ``GELU``s)
  over building them, both with Python's cyclic garbage collector paused (the walk pauses it);
  target at most 1 (the walk costs no more than what it builds);
- ``lora`` on all 5,000 ``Linear`` over PEFT's ``inject_adapter_in_model(LoraConfig(r=2,
  target_modules=r".*\.0"), model)`` on the same model in plain ``torch.nn`` (a fresh one per
  round, built outside the timer); target at most 0.3. PEFT runs with the collector on, as users
  run it, and again with it paused, to show what the pause is worth.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings

import torch
from torch import nn

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


def plain_model() -> nn.Sequential:
    return nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(BLOCKS)))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paused(fn):
    """``fn`` run with Python's cyclic garbage collector paused, as ``modify``'s walk runs."""

    def run() -> object:
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()

    return run


def ratios(base: modify.Sequential, rounds: int) -> list[list[str]]:
    """The walk-overhead ratio and the lora/PEFT ratios, sides interleaved in each round."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=2, target_modules=r".*\.0")

    def peft(collector: bool) -> float:
        plain = plain_model()  # a fresh model each time: PEFT injects in place
        inject = (lambda: inject_adapter_in_model(config, plain))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return seconds(inject if collector else paused(inject))

    sides = {
        "build": lambda: seconds(paused(lambda: [modify.GELU() for _ in range(BLOCKS)])),
        "rewrite": lambda: seconds(lambda: modify.rewrite(base, lambda m: modify.GELU(), modify.ReLU)),
        "lora": lambda: seconds(lambda: modify.lora(base, rank=2)),
        "peft": lambda: peft(collector=True),
        "peft, collector paused": lambda: peft(collector=False),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for name, side in sides.items():
            times[name].append(side())
    times = {name: values[1:] for name, values in times.items()}

    def ratio(fn) -> float:
        return statistics.median(fn(*values) for values in zip(*times.values()))

    walk = ratio(lambda build, rewrite, lora, peft, quiet: (rewrite - build) / build)
    versus = ratio(lambda build, rewrite, lora, peft, quiet: lora / peft)
    versus_quiet = ratio(lambda build, rewrite, lora, peft, quiet: lora / quiet)
    median = {name: us(statistics.median(values)) for name, values in times.items()}
    return [
        ["(rewrite all ReLU -> GELU - building 5,000 GELUs) / building them", f"{walk:.2f}",
         f"rewrite {median['rewrite']}, GELUs {median['build']}", "<= 1", "yes" if walk <= 1 else "no"],
        ["lora all 5,000 Linear / PEFT inject_adapter_in_model", f"{versus:.2f}",
         f"lora {median['lora']}, PEFT {median['peft']}", "<= 0.3", "yes" if versus <= 0.3 else "no"],
        ["the same, PEFT with the collector paused too", f"{versus_quiet:.2f}",
         f"PEFT {median['peft, collector paused']}", "", ""],
    ]


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
    timings = table([title, "time", "target", "met", "sibling memory"], rows)
    compared = table(["ratio (same rounds)", "ratio", "medians", "target", "met"], ratios(base, repeats))
    return f"{timings}\n\n{compared}"
