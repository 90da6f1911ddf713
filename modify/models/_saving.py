"""Writing the models back out in their reference's layout: ``save_pretrained``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import save_torch_state_dict
from huggingface_hub.serialization._base import parse_size_to_int
from torch import nn

from ._checkpoint import KeyFormat


class SavesPretrained:
    """Mixin of the models: ``save_pretrained`` in the reference's folder layout.

    A subclass sets ``reference_keys`` (its :class:`KeyFormat`) and implements
    :meth:`reference_config`.
    """

    reference_keys: ClassVar[KeyFormat]

    def reference_config(self) -> dict[str, Any]:
        """The reference's ``config.json`` for this model (with ``model_type`` and ``architectures``)."""
        raise NotImplementedError

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_size: int | str = "5GB") -> None:
        """Write a Hugging Face checkpoint folder that the reference implementation loads.

        ``config.json`` with the reference's fields, ``model_type`` and ``architectures``, and
        the weights in the reference's key names and layout as ``model.safetensors`` or, above
        ``max_shard_size``, as shards plus ``model.safetensors.index.json``
        (``huggingface_hub.save_torch_state_dict``). Tied weights are written once, as
        transformers does (the output head is left out when tied to the embedding). The
        model's own ``from_pretrained`` reads the folder back bit for bit, in the dtype saved.

        Args:
            folder: where to write (created if needed; earlier shards there are replaced).
            max_shard_size: largest shard, in bytes or as ``"5GB"``/``"500MB"``.

        Raises:
            ValueError: a model the reference cannot express (e.g. a GPT without biases); ``folder``
                an existing file; ``max_shard_size`` not a positive size.

        Example:
            >>> import tempfile, torch
            >>> from modify.models import GPT, GPTConfig
            >>> gpt = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8)).eval()
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     gpt.save_pretrained(folder)
            ...     again = GPT.from_pretrained(folder)
            >>> all(torch.equal(a, b) for a, b in zip(gpt.state_dict().values(), again.state_dict().values()))
            True
        """
        assert isinstance(self, nn.Module)
        owner = f"{type(self).__name__}.save_pretrained"
        max_shard_size = _shard_size(max_shard_size, owner)
        config = {**self.reference_config(), "dtype": str(next(self.parameters()).dtype).removeprefix("torch.")}
        folder = output_folder(folder, owner)
        state = reference_state(self, self.reference_keys)
        save_torch_state_dict(state, folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def reference_state(model: nn.Module, keys: KeyFormat) -> dict[str, torch.Tensor]:
    """``model``'s persistent tensors under the reference's names and layout, tied ones once (first name)."""
    seen: set[int] = set()
    state = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            state[keys.reference_key(key)] = keys.transformed(key, tensor.detach()).contiguous()
    return state


def output_folder(folder: str | os.PathLike, owner: str) -> Path:
    """``folder`` as a ``Path``, created if needed.

    Raises:
        ValueError: ``folder`` (or a folder above it) is an existing file, named in the message.
    """
    folder = Path(folder)
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise ValueError(f"{owner}: '{folder}' must be a folder, but '{above}' is a file")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shard_size(size: int | str, owner: str) -> int:
    """``size`` in bytes (``"5GB"``, ``"500MB"`` or an int); a ``ValueError`` naming ``owner`` otherwise."""
    try:
        parsed = size if isinstance(size, int) and not isinstance(size, bool) else parse_size_to_int(str(size))
    except ValueError as error:
        raise ValueError(f"{owner}: max_shard_size must be bytes or a size like '5GB', got {size!r}") from error
    if parsed < 1:
        raise ValueError(f"{owner}: max_shard_size must be positive, got {size!r}")
    return parsed
