"""``summary``: parameter counts of models side by side, sharing found by identity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .lora import lora_parameters


def _numel(params: dict[int, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


@dataclass(frozen=True)
class Summary:
    """The table :func:`summary` returns: ``str(summary)`` is the text table; ``rows`` the counts.

    Attributes:
        names: one label per model.
        rows: one dict per model with int counts ``total``, ``trainable``, ``adapters`` and
            ``shared`` (``{other model's name: elements shared with it}``).
    """

    names: tuple[str, ...]
    rows: tuple[dict, ...]

    def __str__(self) -> str:
        others = [f"shared with {name}" for name in self.names] if len(self.names) > 1 else []
        headers = ["model", "total", "trainable", *others, "adapters"]
        cells = [headers]
        for name, row in zip(self.names, self.rows):
            shared = [f"{row['shared'][o]:,}" if o in row["shared"] else "-" for o in self.names] if others else []
            cells.append([name, f"{row['total']:,}", f"{row['trainable']:,}", *shared, f"{row['adapters']:,}"])
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells
        ]
        return "\n".join(lines)

    __repr__ = __str__


def summary(*models: nn.Module, names: Sequence[str] | None = None) -> Summary:
    """Each model's parameters as exact integer counts: total, trainable, shared with each other, adapters.

    One row per model, e.g. a base and its LoRA siblings side by side. Counts are elements
    (``numel``), each parameter object once per model (tied weights count once). *Shared with X*
    counts the elements of parameters that are the very same objects in ``X`` (``p_a is p_b``:
    stored once, zero bytes copied); *adapters* those of :func:`~modify.lora_parameters`; a
    frozen base shows in *trainable* as 0. As PEFT's ``print_trainable_parameters``, for several
    models at once and with sharing made visible.

    Args:
        *models: the models (at least one).
        names: one label per model (default ``"0: GPT"``, ``"1: GPT"``, ...).

    Returns:
        A :class:`Summary`; ``print(summary(...))`` shows the table.

    Raises:
        ValueError: no model, or ``names`` of another length (or repeated).
        TypeError: a model that is not a ``torch.nn.Module``.

    Example:
        >>> import modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> adapted = modify.lora(base, rank=2)
        >>> print(modify.summary(base, adapted, names=["base", "adapted"]))
        model    total  trainable  shared with base  shared with adapted  adapters
        base        90         90                 -                   90         0
        adapted    142        142                90                    -        52
    """
    if not models:
        raise ValueError("summary: give at least one model")
    for model in models:
        if not isinstance(model, nn.Module):
            raise TypeError(f"summary: models must be torch.nn.Module, got {type(model).__name__}")
    labels = tuple(names) if names is not None else tuple(f"{i}: {type(m).__name__}" for i, m in enumerate(models))
    if len(labels) != len(models) or len(set(labels)) != len(labels):
        raise ValueError(f"summary: give one distinct name per model ({len(models)}), got {list(labels)}")
    params = [{id(p): p for p in model.parameters()} for model in models]
    rows = []
    for i, own in enumerate(params):
        shared = {
            labels[j]: _numel({k: p for k, p in own.items() if k in other})
            for j, other in enumerate(params)
            if j != i
        }
        rows.append({
            "total": _numel(own),
            "trainable": _numel({k: p for k, p in own.items() if p.requires_grad}),
            "shared": shared,
            "adapters": sum(p.numel() for p in lora_parameters(models[i])),
        })  # fmt: skip
    return Summary(labels, tuple(rows))
