"""Interleaved timing: each side runs in turn, in one process, and ratios come from the same round.

Timing two models one after the other lets a change in machine load (other processes, frequency
scaling) land on one side only. Here every round times each side once, in alternating order, and
a ratio is taken within the round; the reported figure is the median over rounds.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    """Seconds per call of each side in each round (``rounds[name][r]``)."""

    rounds: dict[str, list[float]]

    def seconds(self, name: str) -> float:
        """Median seconds per call of one side."""
        return statistics.median(self.rounds[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of ``name``'s time over ``baseline``'s time in the same round."""
        return statistics.median(a / b for a, b in zip(self.rounds[name], self.rounds[baseline]))


CLOCK: Callable[[], float] = time.perf_counter
"""The clock of :func:`compare`; ``python -m benchmarks --cpu-time`` sets ``time.thread_time``, which
counts only this thread's CPU time, for a machine that other processes load (one torch thread)."""


def compare(sides: dict[str, Callable[[], object]], rounds: int, number: int, warmup: int = 2) -> Timing:
    """Time each callable ``number`` times per round for ``rounds`` rounds, interleaved.

    Args:
        sides: name -> zero-argument callable.
        rounds: rounds (each gives one ratio per pair of sides).
        number: calls per side per round (their mean is the round's time).
        warmup: untimed calls of each side first.

    Returns:
        A :class:`Timing`.
    """
    names = list(sides)
    for name in names:
        for _ in range(warmup):
            sides[name]()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = sides[name]
            start = CLOCK()
            for _ in range(number):
                fn()
            per_round[name].append((CLOCK() - start) / number)
    return Timing(per_round)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub Markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def us(seconds: float) -> str:
    """A duration in µs, ms or s, 3 significant digits."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1.0 else f"{seconds:.3g} s"


def machine() -> str:
    """One line naming the CPU, cores, threads, torch and Python versions, and the load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}; load average {load}"
    )
