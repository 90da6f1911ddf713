"""PEFT's ``LoraConfig`` names given to ``lora``: a ``TypeError`` that says modify's name for each.

A user coming from PEFT writes ``lora(model, r=8, lora_alpha=16, target_modules=[...])``; Python
would only say "unexpected keyword argument". :func:`peft_names` wraps ``lora`` so that each of
PEFT's names is answered with modify's (a table, :data:`PEFT_NAMES`), and a ``transformers``
model is answered with the way into the algebra (:func:`~modify.rewriting.foreign.foreign_model_hint`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from ..rewriting.foreign import foreign_model_hint

F = TypeVar("F", bound=Callable[..., Any])

# PEFT LoraConfig field -> what to write in modify instead.
PEFT_NAMES = {
    "r": "rank: lora(model, rank=8)",
    "lora_alpha": "alpha: lora(model, 8, alpha=16)",
    "lora_dropout": "dropout: lora(model, 8, dropout=0.05)",
    "target_modules": "where: one criterion, or a tuple of criteria that must all hold",
    "use_dora": "dora: lora(model, 8, dora=True)",
    "init_lora_weights": (
        "none: lora always starts as PEFT's default (B zero, so outputs equal the base); to start otherwise, "
        "initialise the blocks' down/up weights yourself (modify.select(adapted, modify.LoRA))"
    ),
    "bias": "none: lora trains no bias; give the biases you want trained to the optimizer (modify.parameters)",
    "modules_to_save": (
        "none: train those modules directly, e.g. add modify.parameters(adapted, '*.ln_f') to the optimizer"
    ),
    "layers_to_transform": "where with a glob over the layer's path, e.g. where='transformer.h.0.*'",
    "exclude_modules": "where with a predicate, e.g. where=lambda path, module: not path.endswith('c_proj')",
    "rank_pattern": "call lora once per group of layers, each with its own rank and where",
    "alpha_pattern": "call lora once per group of layers, each with its own alpha and where",
    "fan_in_fan_out": "none: modify's layers know their own layout",
    "task_type": "none: lora adapts any model",
}


def peft_names(fn: F) -> F:
    """Decorate ``lora`` to answer PEFT's argument names and ``transformers`` models with modify's way.

    Args:
        fn: the rewriter; its first argument is the model.

    Returns:
        ``fn``, first checking its keywords against :data:`PEFT_NAMES` and its model with
        :func:`~modify.rewriting.foreign.foreign_model_hint`.

    Raises:
        TypeError: a keyword of PEFT's ``LoraConfig`` (naming modify's argument); a
            ``transformers`` model (naming ``modify.models.<Family>.from_pretrained`` and
            ``modify.convert``).

    Example:
        >>> import modify
        >>> modify.lora(modify.Linear(4, 4), r=8)
        Traceback (most recent call last):
        TypeError: lora: r= is PEFT's LoraConfig name; modify's is rank: lora(model, rank=8)
    """
    owner = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name in kwargs.keys() & PEFT_NAMES.keys():
            raise TypeError(_renamed(owner, name, kwargs[name]))
        model = args[0] if args else kwargs.get("model")
        hint = foreign_model_hint(model) if model is not None else ""
        if hint:
            raise TypeError(f"{owner}: {hint}")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _renamed(owner: str, name: str, value: Any) -> str:
    message = f"{owner}: {name}= is PEFT's LoraConfig name; modify's is {PEFT_NAMES[name]}"
    if name == "target_modules" and isinstance(value, (list, tuple, set)) and value:
        globs = ", ".join(repr(f"*.{v}" if isinstance(v, str) and "*" not in v else v) for v in value)
        message += f"; PEFT's list (any of these layers) is where=modify.any_of({globs})"
    return message
