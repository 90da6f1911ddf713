"""The models' checkpoint methods, written once: ``from_pretrained`` and ``save_pretrained``."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Self

import torch
from huggingface_hub import save_torch_state_dict
from huggingface_hub.serialization._base import parse_size_to_int
from torch import nn

from .._core.arguments import typechecked
from .._core.identity import group_by_identity
from .atomic import atomic_folder
from .files import WEIGHT_FILES, Source
from .loading import Device, DType, Family, KeyFormat, load_pretrained

# What a saved checkpoint replaces in its folder: the config and the weights in every layout
# (shards included); other files (a tokenizer, a README) are kept.
CHECKPOINT_FILES = ("config.json", *WEIGHT_FILES, "model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")


class Pretrained:
    """Mixin of the models: loading and writing the reference implementation's checkpoints.

    A model class sets ``family`` (its :class:`Family`: config class, the reference's key names,
    the ``model_type`` values it reads) and implements :meth:`reference_config`; its own
    docstring says what differs (the reference classes, the key layout, the config fields read).
    """

    family: ClassVar[Family]
    config: Any

    def extra_repr(self) -> str:
        return f"config={self.config}"

    @classmethod
    @typechecked
    def from_pretrained(
        cls, source: Source, *, dtype: DType = None, device: Device = None, **config_overrides: Any
    ) -> Self:
        """Load the reference implementation's weights (see the model's own docstring for which).

        Args:
            source: a checkpoint folder (``config.json`` plus ``model.safetensors``,
                ``pytorch_model.bin`` or a sharded ``*.index.json``, as ``save_pretrained``
                writes), a single weights file, or a ``state_dict`` in the reference's key
                names. Tied weights (an output head tied to the embedding) fill one parameter
                from either key: either may be absent; if both are present they must be equal.
            dtype: of every parameter and floating buffer: ``torch.float32`` (``None``, the
                default), ``torch.bfloat16``, ``torch.float16``, or ``"auto"`` (the
                checkpoint's). Buffers the reference keeps in float32 (rotary frequencies) stay
                float32.
            device: where the weights go (``None``: the CPU).
            **config_overrides: fields of the model's config dataclass, on top of
                ``config.json`` (a folder) or of the defaults (a file or a ``state_dict``: pass
                at least the sizes).

        Returns:
            The model in eval mode, built on the meta device and filled straight from the
            checkpoint (memory-mapped: a tensor whose dtype is kept is not copied; see
            :mod:`modify.models` for what is checked first). Nothing is downloaded.

        Raises:
            FileNotFoundError: a missing path; a folder without ``config.json`` or weights.
            TypeError: an unknown config field; a bad ``dtype``.
            ValueError: a ``device`` string torch does not know.
            CheckpointError: (a ``ValueError``) a folder of another ``model_type``; a
                ``config.json`` with options the model does not implement (each model lists
                them); an unreadable file; one error listing every missing, unexpected and
                mis-shaped key.

        Example:
            A ``state_dict`` in the reference's names, with the sizes as config keywords (a
            folder needs none: ``GPT.from_pretrained("path/to/gpt2")``):

            >>> import torch
            >>> from transformers import GPT2Config, GPT2LMHeadModel  # only to make reference weights here
            >>> from modify.models import GPT
            >>> reference = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2,
            ...                                        n_head=2, bos_token_id=0, eos_token_id=0)).eval()
            >>> sizes = dict(vocab_size=100, block_size=32, n_embd=32, n_layer=2, n_head=2)
            >>> gpt = GPT.from_pretrained(reference.state_dict(), **sizes)
            >>> ids = torch.randint(0, 100, (2, 32))
            >>> torch.allclose(gpt(ids), reference(ids).logits, atol=1e-5), gpt.training
            (True, False)
            >>> GPT.from_pretrained(reference.state_dict(), dtype=torch.bfloat16, **sizes).lm_head.weight.dtype
            torch.bfloat16
        """
        owner = f"{cls.__name__}.from_pretrained"
        return load_pretrained(cls, cls.family, source, config_overrides, owner, dtype=dtype, device=device)

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

        Saving never loses a checkpoint: the folder is written beside the old one and swapped in
        whole (:func:`~modify.checkpoints.atomic_folder`), so a save that is killed or fails
        (a full disk) leaves the complete previous checkpoint, and the next save removes what it
        left.

        Args:
            folder: where to write (created if needed). An earlier checkpoint there (its config and
                weights in any layout, shards included) is replaced; other files are kept.
            max_shard_size: largest shard, in bytes or as ``"5GB"``/``"500MB"``.

        Raises:
            ValueError: a model the reference cannot express (e.g. a GPT without biases);
                ``max_shard_size`` not a positive size.
            OSError: the save failed (disk full, permission, ``folder`` or a folder above it a
                file: ``NotADirectoryError``), naming the folder and the cause; the folder is as
                it was.

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
        state = reference_state(self, self.family.keys)
        with atomic_folder(folder, replaces=CHECKPOINT_FILES, owner=owner) as staging:
            save_torch_state_dict(state, staging, max_shard_size=max_shard_size, metadata={"format": "pt"})
            (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def reference_state(model: nn.Module, keys: KeyFormat) -> dict[str, torch.Tensor]:
    """``model``'s persistent tensors under the reference's names and layout, tied ones once (first name)."""
    groups = group_by_identity(model.state_dict(keep_vars=True).items())
    return {keys.reference_key(names[0]): keys.transformed(names[0], t.detach()).contiguous() for names, t in groups}


def _shard_size(size: int | str, owner: str) -> int:
    """``size`` in bytes (``"5GB"``, ``"500MB"`` or an int); a ``ValueError`` naming ``owner`` otherwise."""
    try:
        parsed = size if isinstance(size, int) and not isinstance(size, bool) else parse_size_to_int(str(size))
    except ValueError as error:
        raise ValueError(f"{owner}: max_shard_size must be bytes or a size like '5GB', got {size!r}") from error
    if parsed < 1:
        raise ValueError(f"{owner}: max_shard_size must be positive, got {size!r}")
    return parsed
