"""Checkpoint files: reading, checking and writing the reference implementations' layouts.

The file-format layer under :mod:`modify.models` and :mod:`modify.adapters`: safetensors and
``torch.load(weights_only=True)`` reading (:mod:`~.files`), key maps and the meta-device fill
(:mod:`~.loading`), the ``from_pretrained``/``save_pretrained`` mixin (:mod:`~.pretrained`),
:class:`CheckpointError` (:mod:`~.errors`) and :func:`atomic_folder` (:mod:`~.atomic`), the one
saving routine: a folder holds its previous checkpoint or the new one, never a mix. It knows no
model family: each family describes its own keys.
"""

from .atomic import atomic_folder
from .errors import CheckpointError

__all__ = ["CheckpointError", "atomic_folder"]
