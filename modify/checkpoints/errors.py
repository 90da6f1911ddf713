"""The one error of checkpoint loading and saving."""

from __future__ import annotations

import os
from collections.abc import Sequence


class CheckpointError(ValueError):
    """A checkpoint that cannot fill the model, with every problem listed at once.

    Raised by the models' ``from_pretrained``/``from_torchvision`` before any weight is
    allocated: a file that is not a checkpoint (empty, truncated, garbage, a malformed sharded
    index, a ``config.json`` that is not a JSON object), a checkpoint of another architecture
    (its ``model_type``), a config option the model does not implement, or keys that do not fit
    (the error ``torch.nn.Module.load_state_dict`` raises for a strict load, as a ``ValueError``
    and in the reference's key names, a model key added in parentheses where it helps).

    Args:
        owner: who raised it, e.g. ``"GPT.from_pretrained"``.
        missing: reference keys the model needs and the checkpoint lacks.
        unexpected: checkpoint keys the model has no place for.
        mismatched: one line per key whose shape differs (or tied keys whose values differ).
        note: the problem itself when no key is listed; else a remark appended to the list.
        source: the folder or file, named in the first line.

    Attributes:
        missing: the missing keys given, as a list, for programs to inspect.
        unexpected: the unexpected keys given, as a list.
        mismatched: the mismatch lines given, as a list.

    Example:
        >>> import torch
        >>> from modify.models import CheckpointError, Llama
        >>> config = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        ...               num_attention_heads=2)
        >>> state = {"model.embed_tokens.weight": torch.randn(10, 8), "model.norm.weight": torch.ones(8),
        ...          "model.layers.0.mlp.up_proj.weight": torch.randn(4, 8), "model.foo": torch.zeros(1)}
        >>> try:
        ...     Llama.from_pretrained(state, **config)
        ... except CheckpointError as error:
        ...     print(error)  # doctest: +ELLIPSIS
        Llama.from_pretrained: the checkpoint does not fit the model
          missing keys (9):
            model.layers.0.input_layernorm.weight
            model.layers.0.self_attn.q_proj.weight
            model.layers.0.self_attn.k_proj.weight
            model.layers.0.self_attn.v_proj.weight
            model.layers.0.self_attn.o_proj.weight
            model.layers.0.post_attention_layernorm.weight
            model.layers.0.mlp.gate_proj.weight
            model.layers.0.mlp.down_proj.weight
            lm_head.weight
          unexpected keys (1):
            model.foo
          mismatched (1):
            model.layers.0.mlp.up_proj.weight: checkpoint (4, 8), model (16, 8) (model key '...up_proj.weight')
    """

    def __init__(
        self,
        owner: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        note: str = "",
        *,
        source: str = "",
    ):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        if not (missing or unexpected or mismatched):
            super().__init__(f"{owner}: {source + ' ' if source else ''}{note}")
            return
        lines = [f"{owner}: the checkpoint {source + ' ' if source else ''}does not fit the model"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mismatched", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        if note:
            lines.append(f"  note: {note}")
        super().__init__("\n".join(lines))

    @classmethod
    def bad_file(cls, owner: str, path: str | os.PathLike, problem: str) -> CheckpointError:
        """``"{owner}: '{path}' {problem}"``: a file that cannot be read as what it should be."""
        return cls(owner, note=problem, source=f"'{path}'")
