"""Reading reference checkpoints and copying them into the models, for all three models.

A *source* is a Hugging Face checkpoint folder (``config.json`` plus ``model.safetensors``,
``pytorch_model.bin`` or their sharded ``*.index.json`` form, as ``save_pretrained`` writes
them), a single weights file, or a ``state_dict`` already in memory. :func:`read_checkpoint`
turns any of them into a state dict with the reference's key names (plus the folder's
``config.json``); :func:`load_checkpoint` copies it into a model through a key map and raises
one :class:`CheckpointError` listing every missing, unexpected and mis-shaped key.

Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``: no code is ever
unpickled, and nothing is downloaded.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file

Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]

# Weight files of a Hugging Face folder, in the order transformers prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, with every problem listed at once.

    Raised by the models' ``from_pretrained``/``from_torchvision`` before any weight is copied,
    so the model is never left half loaded. The error ``torch.nn.Module.load_state_dict`` raises
    for a strict load, as a ``ValueError`` and in the reference's key names (a model key is
    added in parentheses where it helps).

    Args:
        owner: who raised it, e.g. ``"GPT.from_pretrained"``.
        missing: reference keys the model needs and the checkpoint lacks.
        unexpected: checkpoint keys the model has no place for.
        mismatched: one line per key whose shape differs (or tied keys whose values differ).
        note: an extra remark appended to the message.

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
    ):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"{owner}: the checkpoint does not fit the model"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mismatched", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        if note:
            lines.append(f"  note: {note}")
        super().__init__("\n".join(lines))


@dataclass
class Checkpoint:
    """A state dict with the reference's key names, and the folder's ``config.json`` if any."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class KeyFormat:
    """How one reference names and lays out its weights.

    Args:
        rules: ``(regex, replacement)`` pairs; the first regex that fully matches a model key
            gives the reference key: a template with ``\\1`` for groups (``Match.expand``), or a
            function of the match.
        base_prefix: the reference's base-model prefix (``"transformer"``, ``"model"``); a
            checkpoint of the bare base model, whose keys lack it, gets it added.
        transform: ``(model key, tensor) -> tensor`` applied to each checkpoint tensor (GPT-2's
            ``Conv1D`` weights are transposed here).
        ignore: glob patterns of checkpoint keys to drop silently (non-persistent buffers that
            old checkpoints stored, such as GPT-2's causal mask ``attn.bias``).
        optional: glob patterns of model keys a checkpoint may lack; they keep their value
            (``num_batches_tracked``, absent from checkpoints older than PyTorch 0.4.1, as
            ``torch.nn.BatchNorm2d`` allows).
    """

    rules: Sequence[tuple[str, str | Callable[[re.Match[str]], str]]]
    base_prefix: str = ""
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None
    ignore: Sequence[str] = field(default_factory=tuple)
    optional: Sequence[str] = field(default_factory=tuple)

    def reference_key(self, key: str) -> str:
        """The reference's name for the model key ``key``."""
        for pattern, replacement in self.rules:
            match = re.fullmatch(pattern, key)
            if match:
                return match.expand(replacement) if isinstance(replacement, str) else replacement(match)
        raise RuntimeError(f"no checkpoint key rule for the model key '{key}'")  # a bug in the rules


def read_checkpoint(source: Source, owner: str) -> Checkpoint:
    """Read a folder, a weights file or an in-memory state dict into a :class:`Checkpoint`.

    Raises:
        FileNotFoundError: a path that does not exist; a folder without ``config.json`` or
            without any of :data:`WEIGHT_FILES`.
        TypeError: a source of another type, or a file that does not hold a state dict.
    """
    if isinstance(source, Mapping):
        return Checkpoint(_as_state_dict(dict(source), owner, "the state_dict given"))
    if not isinstance(source, (str, os.PathLike)):
        kind = type(source).__name__
        raise TypeError(f"{owner}: source must be a folder, a weights file or a state_dict, got {kind}")
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, owner)
    if not path.exists():
        raise FileNotFoundError(f"{owner}: no such checkpoint folder or file: '{path}'")
    return Checkpoint(read_weights(path, owner))


def _read_folder(folder: Path, owner: str) -> Checkpoint:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{owner}: folder '{folder}' has no config.json; pass a Hugging Face checkpoint folder, or a "
            f"weights file (e.g. '{folder / 'model.safetensors'}') together with the config as keywords"
        )
    config = json.loads(config_file.read_text())
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return Checkpoint(read_weights(folder / name, owner), config)
    raise FileNotFoundError(f"{owner}: folder '{folder}' holds none of {', '.join(WEIGHT_FILES)}")


def read_weights(path: Path, owner: str) -> dict[str, torch.Tensor]:
    """One weights file: ``*.safetensors``, a sharded ``*.index.json``, or ``torch.load``-able.

    ``torch.load`` runs with ``weights_only=True`` and ``map_location="cpu"``.
    """
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(read_weights(path.parent / shard, owner))
        return state
    if path.suffix == ".safetensors":
        return load_file(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return _as_state_dict(loaded, owner, f"'{path}'")


def _as_state_dict(loaded: object, owner: str, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise TypeError(f"{owner}: {what} is not a state_dict (a dict of tensors), got {type(loaded).__name__}")
    return loaded


def load_checkpoint(model: torch.nn.Module, state: Mapping[str, torch.Tensor], keys: KeyFormat, owner: str) -> None:
    """Copy ``state`` (reference key names) into ``model``'s parameters and buffers, in place.

    Values are converted to the model's dtypes (a bfloat16 checkpoint fills a float32 model).

    Tied parameters (one ``Parameter`` object under several ``state_dict`` keys, such as GPT's
    ``lm_head.weight`` and token embedding) are one target: the checkpoint must hold at least
    one of their reference keys, and if it holds several their values must be equal.

    Raises:
        CheckpointError: listing every missing, unexpected and mis-shaped key; nothing is
            copied then.
    """
    state, note = _with_base_prefix(dict(state), keys.base_prefix)
    targets = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for key, tensor in targets.items():
        groups.setdefault(id(tensor), []).append(key)
    plan, missing, mismatched, used = [], [], [], set()
    for group in groups.values():
        found = {key: keys.reference_key(key) for key in group}
        present = {key: ref for key, ref in found.items() if ref in state}
        used.update(found.values())
        if not present:
            if not any(fnmatch.fnmatchcase(key, p) for key in group for p in keys.optional):
                missing.append(" = ".join(dict.fromkeys(found.values())))
            continue
        values = {key: _transformed(keys, key, state[ref]) for key, ref in present.items()}
        problem = _shape_problem(targets[group[0]], values, present)
        if problem:
            mismatched.append(problem)
        else:
            plan.append((targets[group[0]], next(iter(values.values()))))
    unexpected = [k for k in state if k not in used and not any(fnmatch.fnmatchcase(k, p) for p in keys.ignore)]
    if missing or unexpected or mismatched:
        raise CheckpointError(owner, missing, unexpected, mismatched, note)
    with torch.no_grad():
        for target, value in plan:
            target.copy_(value)


def _transformed(keys: KeyFormat, key: str, value: torch.Tensor) -> torch.Tensor:
    return keys.transform(key, value) if keys.transform is not None else value


def _shape_problem(target: torch.Tensor, values: dict[str, torch.Tensor], refs: dict[str, str]) -> str:
    """A line describing why ``values`` cannot fill ``target``, or ``""``."""
    for key, value in values.items():
        if value.shape != target.shape:
            return f"{refs[key]}: checkpoint {tuple(value.shape)}, model {tuple(target.shape)} (model key '{key}')"
    first, *others = values
    for key in others:
        if not torch.equal(values[first], values[key]):
            return f"{refs[first]} and {refs[key]} are tied in the model but hold different values"
    return ""


def _with_base_prefix(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], str]:
    """Add ``prefix.`` to every key of a bare base-model checkpoint (no key carries it)."""
    if not prefix or not state or any(k.startswith(prefix + ".") for k in state):
        return state, ""
    note = f"the checkpoint's keys lacked the '{prefix}.' prefix of a base model; it was added"
    return {f"{prefix}.{k}": v for k, v in state.items()}, note


def make_config(config_cls: type, fields: Mapping[str, Any], overrides: Mapping[str, Any], owner: str) -> Any:
    """``config_cls(**fields, **overrides)``, overrides winning; unknown names raise ``TypeError``."""
    known = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{owner}: unknown config field(s) {unknown}; {config_cls.__name__} has {sorted(known)}")
    return config_cls(**{**fields, **overrides})


def hf_value(config: Mapping[str, Any], name: str, default: Any) -> Any:
    """``config[name]``, or ``default`` (the reference config's default) when absent or ``None``."""
    value = config.get(name)
    return default if value is None else value


def require(condition: bool, owner: str, message: str) -> None:
    """Raise ``ValueError(f"{owner}: {message}")`` unless ``condition``: unsupported config values."""
    if not condition:
        raise ValueError(f"{owner}: {message}")


def build_pretrained(
    make: Callable[[Any], torch.nn.Module],
    config_cls: type,
    source: Source,
    overrides: Mapping[str, Any],
    keys: KeyFormat,
    owner: str,
    config_from_reference: Callable[[Mapping[str, Any], str], dict[str, Any]] | None = None,
) -> torch.nn.Module:
    """Read ``source``, build ``make(config)`` and load the weights; the model is returned in eval mode.

    The config is ``config_from_reference(config.json)`` for a folder (``{}`` otherwise), with
    ``overrides`` on top.
    """
    checkpoint = read_checkpoint(source, owner)
    fields = {}
    if checkpoint.config is not None and config_from_reference is not None:
        fields = config_from_reference(checkpoint.config, owner)
    model = make(make_config(config_cls, fields, overrides, owner))
    load_checkpoint(model, checkpoint.state, keys, owner)
    return model.eval()
