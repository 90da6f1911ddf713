"""What to do with a model of another library that modify's rewriters cannot open.

A ``transformers`` model given to ``lora`` or rewritten through ``select`` is one opaque leaf to
modify (its layers sit in plain ``torch.nn`` modules, not in ``Sequential``/``Parallel``), so no
rewrite can reach inside it. :func:`foreign_model_hint` says the two ways in: the family's own
model in ``modify.models`` loaded from a saved folder, or ``modify.convert``. The library is
recognised by the class's module name, so ``transformers`` is never imported here.
"""

from __future__ import annotations

from torch import nn

# transformers class-name prefix -> the modify.models class that loads its checkpoints.
_FAMILIES = {"GPT2": "GPT", "Llama": "Llama", "Mistral": "Llama", "Qwen2": "Llama", "ResNet": "ResNet"}


def foreign_model_hint(model: nn.Module) -> str:
    """How to bring a ``transformers`` model into the algebra, or ``""`` for any other model.

    Args:
        model: the model a rewriter was given.

    Returns:
        A sentence naming ``modify.models.<Family>.from_pretrained`` (where modify has the
        family) and ``modify.convert(model, args)``; ``""`` when no class in ``model``'s MRO
        comes from ``transformers``.

    Example:
        >>> import torch
        >>> from modify.rewriting.foreign import foreign_model_hint
        >>> foreign_model_hint(torch.nn.Linear(2, 2))
        ''
        >>> GPT2LMHeadModel = type("GPT2LMHeadModel", (torch.nn.Module,), {"__module__": "transformers.models.gpt2"})
        >>> print(foreign_model_hint(GPT2LMHeadModel()))  # doctest: +NORMALIZE_WHITESPACE
        GPT2LMHeadModel is a transformers model, which modify's rewriters do not open (they walk
        modify.Sequential and Parallel): load its weights into modify's own model with
        modify.models.GPT.from_pretrained(folder) (write the folder with transformers'
        model.save_pretrained(folder)), or convert it with modify.convert(model, args)
        (args: an example input, e.g. token ids of shape (B, T))
    """
    if not any(cls.__module__.split(".")[0] == "transformers" for cls in type(model).__mro__):
        return ""
    name = type(model).__name__
    family = next((ours for prefix, ours in _FAMILIES.items() if name.startswith(prefix)), None)
    own = (
        f"load its weights into modify's own model with modify.models.{family}.from_pretrained(folder) (write the "
        "folder with transformers' model.save_pretrained(folder)), or "
        if family
        else ""
    )
    return (
        f"{name} is a transformers model, which modify's rewriters do not open (they walk modify.Sequential and "
        f"Parallel): {own}convert it with modify.convert(model, args) (args: an example input, e.g. token ids of "
        "shape (B, T))"
    )
