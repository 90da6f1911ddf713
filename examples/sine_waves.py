"""The sine-wave tasks of the hypernetwork examples: each sample is a wave ``y = a * sin(x + phase)``
described by its code ``z = (a, sin(phase), cos(phase))``, with ``a`` in [0.5, 2) and ``x`` in [-pi, pi).

Reference: Finn et al. 2017, "Model-Agnostic Meta-Learning" (the sinusoid regression task).
"""

from __future__ import annotations

import math

import torch


def sample_waves(n: int, points: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``(n, 3)``, inputs ``(n, points, 1)`` and targets ``(n, points, 1)`` of ``n`` sine waves."""
    amplitude = 0.5 + 1.5 * torch.rand(n, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    z = torch.cat([amplitude, torch.sin(phase), torch.cos(phase)], dim=1)  # (n, 3)
    x = (torch.rand(n, points, 1, generator=gen) * 2 - 1) * math.pi  # (n, points, 1)
    return z, x, amplitude[:, None] * torch.sin(x + phase[:, None])
