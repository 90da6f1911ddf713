"""Reading checkpoint sources lazily: ``config.json``, safetensors, ``.bin`` and sharded indexes.

:func:`read_config` gives a folder's validated ``config.json``; :func:`read_entries` gives
one :class:`Entry` per tensor, holding its shape and dtype (read from the file's header or the
pickle's metadata) and a way to fetch it. No tensor data is read until :meth:`Entry.load`:
safetensors are opened with ``safe_open`` and ``.bin`` files with
``torch.load(mmap=True, weights_only=True)``, both mapping the file, so a tensor whose dtype
is kept costs no copy; :meth:`Entry.load_unshared` maps a safetensors tensor alone, so that its
pages are released as soon as it is freed. Every malformed input is one
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]

# Weight files of a Hugging Face folder, in the order transformers prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Entry:
    """One checkpoint tensor, not yet read: its shape, dtype and functions that read it.

    ``load`` may return a view of the file's mapping, shared by all the file's tensors, which keeps
    every page read through it resident while any of them lives; ``load_alone`` (when given) returns
    a view of a mapping of its own, unmapped (its pages released) as soon as the tensor is freed.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]
    load_alone: Callable[[], torch.Tensor] | None = None

    def load_unshared(self) -> torch.Tensor:
        """The tensor sharing no file mapping with the others: ``load_alone()``, or ``load()`` (a state dict)."""
        return self.load_alone() if self.load_alone is not None else self.load()


@dataclass
class Checkpoint:
    """The tensors of a source by the reference's key names, and ``where``: the source in
    messages (``"'/x'"`` for a folder or file, ``"the state_dict given"``)."""

    entries: dict[str, Entry]
    where: str


def read_config(source: Source, owner: str) -> tuple[dict[str, Any] | None, str]:
    """The validated ``config.json`` of a folder source (``None`` for a file or state dict), and its name.

    Raises:
        TypeError: a source of another type.
        FileNotFoundError: a path that does not exist (one that looks like a Hub name, ``"gpt2"``,
            says that nothing is downloaded and how to write the folder with transformers);
            a folder without ``config.json``.
        CheckpointError: a ``config.json`` that is not a JSON object.
    """
    if isinstance(source, Mapping):
        return None, "the state_dict given"
    if not isinstance(source, (str, os.PathLike)):
        kind = type(source).__name__
        raise TypeError(f"{owner}: source must be a folder, a weights file or a state_dict, got {kind}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{owner}: no such checkpoint folder or file: '{path}'{_hub_name_hint(source, owner)}")
    if not path.is_dir():
        return None, f"'{path}'"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{owner}: folder '{path}' has no config.json; pass a Hugging Face checkpoint folder, or a "
            f"weights file (e.g. '{path / 'model.safetensors'}') together with the config as keywords"
        )
    return _json_object(config_file, owner, "config.json"), f"'{path}'"


def _hub_name_hint(source: str | os.PathLike, owner: str) -> str:
    """For a source that looks like a Hub name (``"gpt2"``, ``"meta-llama/Llama-3.2-1B"``): how to make the folder."""
    name = os.fspath(source)
    if not isinstance(name, str) or not _HUB_NAME.fullmatch(name) or name.endswith(_WEIGHT_SUFFIXES):
        return ""
    local = f"{name.rsplit('/', 1)[-1]}-local"
    return (
        f". Nothing is downloaded: {name!r} looks like a Hugging Face Hub name, and from_pretrained reads a local "
        "folder (config.json and weights, as transformers' save_pretrained writes). Make one with transformers on "
        f"a machine with internet, e.g. AutoModelForCausalLM.from_pretrained({name!r}).save_pretrained({local!r}) "
        f"(GPT2LMHeadModel, LlamaForCausalLM; AutoModelForImageClassification for a ResNet), then {owner}({local!r})"
    )


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def read_entries(source: Source, owner: str) -> dict[str, Entry]:
    """The tensors of ``source`` (folder, weights file or state dict), read lazily.

    Raises:
        FileNotFoundError: a folder without any of :data:`WEIGHT_FILES`.
        CheckpointError: a file that is not a checkpoint (empty, truncated, garbage), a
            sharded index that is malformed or names missing shards, a state dict with
            non-string keys, values that are not tensors, or complex tensors.
    """
    if isinstance(source, Mapping):
        return _state_entries(source, owner, "the state_dict given")
    path = Path(source)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return read_file(path / name, owner)
        raise FileNotFoundError(f"{owner}: folder '{path}' holds none of {', '.join(WEIGHT_FILES)}")
    return read_file(path, owner)


def read_file(path: Path, owner: str) -> dict[str, Entry]:
    """One weights file: ``*.safetensors``, a sharded ``*.index.json``, or a ``torch.save`` file."""
    if path.name.endswith(".index.json"):
        return _read_index(path, owner)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, owner)
    return _read_pickle(path, owner)


def _json_object(path: Path, owner: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError.bad_file(owner, path, f"is not a JSON {what} ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError.bad_file(owner, path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def _read_index(path: Path, owner: str) -> dict[str, Entry]:
    weight_map = _json_object(path, owner, "sharded index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError.bad_file(owner, path, f"has no 'weight_map' object (got {weight_map!r})")
    bad = {k: v for k, v in weight_map.items() if not isinstance(v, str)}
    if bad:
        raise CheckpointError.bad_file(owner, path, f"maps keys to non-file names: {_sample(bad)}")
    entries: dict[str, Entry] = {}
    for shard in sorted(set(weight_map.values())):
        file = path.parent / shard
        if Path(shard).name != shard or shard.endswith(".json"):
            raise CheckpointError.bad_file(owner, path, f"names {shard!r}, which is not a weights file beside it")
        if not file.is_file():
            raise CheckpointError.bad_file(owner, path, f"names the shard '{shard}', which does not exist")
        entries.update(read_file(file, owner))
    absent = sorted(set(weight_map) - set(entries))
    if absent:
        raise CheckpointError.bad_file(owner, path, f"maps keys their shards lack: {absent[:5]}")
    return entries


def _read_safetensors(path: Path, owner: str) -> dict[str, Entry]:
    if path.stat().st_size == 0:
        raise CheckpointError.bad_file(owner, path, "is not a readable safetensors file (it is empty)")
    try:
        with safe_open(path, framework="pt") as handle:
            names = list(handle.keys())
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
            dtypes = {name: handle.get_slice(name).get_dtype() for name in names}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError.bad_file(owner, path, f"is not a readable safetensors file ({error})") from None
    complex_ = [name for name, kind in dtypes.items() if kind.startswith("C")]
    if complex_:
        raise CheckpointError.bad_file(owner, path, f"holds complex tensors, which no model takes: {complex_[:5]}")
    opened: list[Any] = []

    def loader(name: str) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            if not opened:  # one mapping of the file, shared by its tensors
                opened.append(safe_open(path, framework="pt"))
            return opened[0].get_tensor(name)

        return load

    def alone(name: str) -> Callable[[], torch.Tensor]:
        def load_alone() -> torch.Tensor:
            with safe_open(path, framework="pt") as handle:  # a mapping that lives as long as the tensor
                return handle.get_tensor(name)

        return load_alone

    return {
        name: Entry(shapes[name], _safetensors_dtype(dtypes[name], path, owner), loader(name), alone(name))
        for name in names
    }


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def _safetensors_dtype(name: str, path: Path, owner: str) -> torch.dtype:
    if name not in _SAFETENSORS_DTYPES:
        raise CheckpointError.bad_file(owner, path, f"holds tensors of dtype {name}, which no model takes")
    return _SAFETENSORS_DTYPES[name]


def _read_pickle(path: Path, owner: str) -> dict[str, Entry]:
    if path.stat().st_size == 0:
        raise CheckpointError.bad_file(owner, path, "is not a readable torch.save file (it is empty)")
    try:  # files torch.save wrote before PyTorch 1.6 are not zip archives and cannot be mapped
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, KeyError, ...
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise CheckpointError.bad_file(owner, path, f"is not a readable torch.save file ({reason})") from None
    return _state_entries(loaded, owner, f"'{path}'")


def _state_entries(state: object, owner: str, what: str) -> dict[str, Entry]:
    if not isinstance(state, Mapping):
        raise CheckpointError(owner, note=f"{what} is not a state_dict (a dict of tensors), got {type(state).__name__}")
    keys = [key for key in state if not isinstance(key, str)]
    values = {key: type(value).__name__ for key, value in state.items() if not isinstance(value, torch.Tensor)}
    complex_ = [key for key, value in state.items() if isinstance(value, torch.Tensor) and value.is_complex()]
    problems = []
    if keys:
        problems.append(f"non-string keys {_sample(keys)}")
    if values:
        problems.append(f"values that are not tensors {_sample(values)}")
    if complex_:
        problems.append(f"complex tensors {_sample(complex_)}")
    if problems:
        raise CheckpointError(owner, note=f"{what} is not a state_dict of real tensors: it has {'; '.join(problems)}")
    return {key: Entry(tuple(value.shape), value.dtype, _constant(value)) for key, value in state.items()}


def _constant(value: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: value


def _sample(items: Any, limit: int = 5) -> str:
    """A short ``repr`` of the first ``limit`` items of a list or dict."""
    if isinstance(items, dict):
        shown = dict(list(items.items())[:limit])
    else:
        shown = list(items)[:limit]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{shown!r}{more}"
