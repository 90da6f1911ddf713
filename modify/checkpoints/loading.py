"""Loading reference checkpoints into the models without allocating anything twice.

:func:`load_pretrained` is every model's ``from_pretrained``: it reads the folder's
``config.json`` (checking its ``model_type``), builds the model on the meta device (no
memory, no random numbers), checks every key, shape and dtype kind of the checkpoint's headers
against it, and only then fills each parameter and buffer straight from the (memory-mapped)
checkpoint in the requested dtype on the requested device. A :class:`KeyFormat` maps our
``state_dict`` names to the reference's.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._core.identity import group_by_identity
from .._core.module import ModifyModule
from ..primitives.quantized import is_quantized, quantized_weight
from ..rewriting.quantize import quantizable
from ..rewriting.quantize import quantize as quantize_layers
from .errors import CheckpointError
from .files import Checkpoint, Entry, Source, read_config, read_entries

DType = Union[torch.dtype, str, None]
Device = Union[torch.device, str, int, None]


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
            ``Conv1D`` weights are transposed here); it must work on meta tensors and be its
            own inverse (it is applied again when saving).
        ignore: glob patterns of checkpoint keys to drop silently (non-persistent buffers that
            old checkpoints stored, such as GPT-2's causal mask ``attn.bias``).
        optional: glob patterns of model keys a checkpoint may lack; they get their initial
            value (``num_batches_tracked``, absent from checkpoints older than PyTorch 0.4.1,
            as ``torch.nn.BatchNorm2d`` allows).
        fan_in_fan_out: the reference's linear layers store their weights ``(in, out)`` (GPT-2's
            ``Conv1D``), as PEFT's ``LoraConfig.fan_in_fan_out`` says.
    """

    rules: Sequence[tuple[str, str | Callable[[re.Match[str]], str]]]
    base_prefix: str = ""
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None
    ignore: Sequence[str] = field(default_factory=tuple)
    optional: Sequence[str] = field(default_factory=tuple)
    fan_in_fan_out: bool = False

    def reference_key(self, key: str) -> str:
        """The reference's name for the model key ``key``."""
        reference = self.matched_key(key)
        if reference is None:
            raise RuntimeError(f"no checkpoint key rule for the model key '{key}'")  # a bug in the rules
        return reference

    def matched_key(self, key: str) -> str | None:
        """The reference's name for ``key`` by the first rule that matches it, or ``None``."""
        for pattern, replacement in self.rules:
            match = re.fullmatch(pattern, key)
            if match:
                return match.expand(replacement) if isinstance(replacement, str) else replacement(match)
        return None

    def name_modules(self, model: nn.Module) -> None:
        """Set the ``reference_name`` of every module of ``model`` that holds a ``weight``.

        The name is the reference's for that weight without ``.weight`` (GPT-2's
        ``transformer.h.0.attn.c_attn``): the key map, read once, names the layers for ``select``
        globs and adapter files. A model family calls it when it builds a model.
        """
        for path, module in model.named_modules():
            if isinstance(module, ModifyModule) and "weight" in module._parameters:
                reference = self.matched_key(f"{path}.weight")
                if reference is not None:
                    module.reference_name = reference.removesuffix(".weight")

    def transformed(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """``transform(key, value)``, or ``value`` without a transform."""
        return self.transform(key, value) if self.transform is not None else value


@dataclass(frozen=True)
class Family:
    """What ``from_pretrained`` needs to know about one model class.

    Args:
        config_cls: the config dataclass.
        keys: the reference's key names.
        model_types: ``config.json`` ``model_type`` values this model reads.
        from_reference: ``(config.json, owner) -> config fields``; raises ``ValueError`` for
            options not implemented.
    """

    config_cls: type
    keys: KeyFormat
    model_types: tuple[str, ...] = ()
    from_reference: Callable[[Mapping[str, Any], str], dict[str, Any]] | None = None


def load_pretrained(
    make: Callable[[Any], nn.Module],
    family: Family,
    source: Source,
    overrides: Mapping[str, Any],
    owner: str,
    *,
    dtype: DType = None,
    device: Device = None,
    quantize: str | None = None,
) -> nn.Module:
    """Check ``source`` against ``make(config)`` built on the meta device, then fill it; eval mode.

    With ``quantize`` (``"nf4"``/``"int8"``), each weight :func:`~modify.quantize` would quantize
    is quantized as soon as it is read, so at most one layer is ever held in float; every tensor is
    then read through a mapping of its own (:meth:`Entry.load_unshared`), released once the weight
    is quantized, and the tensors kept as they are are copied out of it, so no page of the file
    stays resident.

    Raises:
        TypeError: an unknown config override; a bad ``dtype``/``device`` type.
        ValueError: a ``device`` string torch does not know.
        CheckpointError: anything wrong with the checkpoint, before any weight is allocated.
    """
    dtype, device = _target_dtype(dtype, owner), _target_device(device, owner)
    config_json, where = read_config(source, owner)
    config = _config(family, config_json, overrides, owner, where)
    checkpoint = Checkpoint(read_entries(source, owner), where)
    with torch.device("meta"), _SkipMetaInit():
        model = make(config)
    plan = _plan(model, checkpoint, family.keys, owner)
    if quantize is None:
        _fill(model, plan, family.keys, dtype, device, owner)
        return model.eval()
    chosen = {id(layer.weight): path for path, layer in quantizable(model)}

    def quantized(target: _Target, value: torch.Tensor) -> torch.Tensor:
        path = chosen.get(id(target.meta))
        if path is None:  # kept: a copy, so that the file's mapping goes
            return value.clone()
        return quantized_weight(value, quantize, 64, f"{owner}: the Linear at '{path}'")

    _fill(model, plan, family.keys, dtype, device, owner, quantized, unshared=True)
    return quantize_layers(model, quantize).eval()


class _SkipMetaInit(TorchFunctionMode):
    """Initialisation of meta tensors skipped (in-place fills, ``torch.nn.init``, ``torch.normal``):
    it computes nothing (meta tensors hold no values), yet PyTorch's first random op on the meta
    device imports ``torch._dynamo``, seconds of a fresh process's load."""

    SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.copy_, torch.Tensor.fill_,
                         torch.Tensor.zero_})  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        initialises = func in self.SKIPPED or getattr(func, "__module__", None) == "torch.nn.init"
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
        if initialises and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func is torch.normal and tensors and all(t.is_meta for t in tensors):  # a Distribution's sample
            return torch.empty(torch.broadcast_shapes(*(t.shape for t in tensors)), dtype=tensors[0].dtype, device="meta")
        return func(*args, **kwargs)


def _target_dtype(dtype: DType, owner: str) -> torch.dtype | None:
    """``None`` (keep each tensor's: ``"auto"``) or a floating dtype; the default float32."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{owner}: dtype must be a floating torch.dtype or 'auto', got {dtype!r}")
    return dtype


def _target_device(device: Device, owner: str) -> torch.device:
    """``device`` as a ``torch.device`` (CPU by default); a ``ValueError`` naming ``owner`` for a bad string."""
    try:
        return torch.device("cpu" if device is None else device)
    except RuntimeError as error:
        raise ValueError(f"{owner}: device {device!r} is not a torch device ({error})") from None


def _config(family: Family, config_json: dict[str, Any] | None, overrides: Mapping[str, Any], owner: str, where: str):
    known = set(family.config_cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{owner}: unknown config field(s) {unknown}; {family.config_cls.__name__} has {sorted(known)}")
    if config_json is None:
        return family.config_cls(**overrides)
    model_type = config_json.get("model_type", family.model_types[0])
    if model_type not in family.model_types:
        raise CheckpointError(
            owner, source=f"folder {where}",
            note=f"holds a {model_type!r} model (config.json model_type); this model reads {list(family.model_types)}",
        )
    try:
        fields = family.from_reference(config_json, owner) if family.from_reference else {}
        return family.config_cls(**{**fields, **overrides})
    except (TypeError, ValueError) as error:
        reason = str(error).removeprefix(f"{owner}: ")
        raise CheckpointError(owner, source=f"folder {where}", note=f"has a config.json this model refuses: {reason}")


@dataclass
class _Target:
    """One parameter or buffer of the model (all its tied ``state_dict`` keys) and its checkpoint tensors."""

    keys: list[str]
    refs: dict[str, str]
    meta: torch.Tensor
    found: dict[str, Entry]


def _plan(model: nn.Module, checkpoint: Checkpoint, keys: KeyFormat, owner: str) -> list[_Target]:
    """Match every model tensor to its checkpoint entries; raise one error listing every problem."""
    entries, note = _with_base_prefix(checkpoint.entries, keys.base_prefix)
    plan, missing, mismatched, used = [], [], [], set()
    for group, meta in group_by_identity(model.state_dict(keep_vars=True).items()):
        refs = {key: keys.reference_key(key) for key in group}
        used.update(refs.values())
        found = {key: entries[ref] for key, ref in refs.items() if ref in entries}
        if not found and not any(fnmatch.fnmatchcase(key, p) for key in group for p in keys.optional):
            missing.append(" = ".join(dict.fromkeys(refs.values())))
        problem = next((_mismatch(keys, key, refs[key], entry, meta) for key, entry in found.items()), "")
        if problem:
            mismatched.append(problem)
        plan.append(_Target(group, refs, meta, found))
    unexpected = [k for k in entries if k not in used and not any(fnmatch.fnmatchcase(k, p) for p in keys.ignore)]
    if missing or unexpected or mismatched:
        source = "" if checkpoint.where.startswith("the ") else checkpoint.where
        raise CheckpointError(owner, missing, unexpected, mismatched, note, source=source)
    return plan


def _mismatch(keys: KeyFormat, key: str, ref: str, entry: Entry, target: torch.Tensor) -> str:
    """A line saying why ``entry`` cannot fill ``target``, or ``""``."""
    shape = keys.transformed(key, torch.empty(entry.shape, dtype=entry.dtype, device="meta")).shape
    if shape != target.shape:
        return f"{ref}: checkpoint {tuple(shape)}, model {tuple(target.shape)} (model key '{key}')"
    if entry.dtype.is_floating_point != target.dtype.is_floating_point:
        return f"{ref}: checkpoint dtype {entry.dtype}, model {target.dtype} (model key '{key}')"
    return ""


def _with_base_prefix(entries: dict[str, Entry], prefix: str) -> tuple[dict[str, Entry], str]:
    """Add ``prefix.`` to every key of a bare base-model checkpoint (no key carries it)."""
    if not prefix or not entries or any(k.startswith(prefix + ".") for k in entries):
        return entries, ""
    note = f"the checkpoint's keys lacked the '{prefix}.' prefix of a base model; it was added"
    return {f"{prefix}.{k}": v for k, v in entries.items()}, note


def _fill(
    model: nn.Module, plan: list[_Target], keys: KeyFormat, dtype: torch.dtype | None, device: torch.device,
    owner: str, convert: Callable[[_Target, torch.Tensor], torch.Tensor] | None = None, *, unshared: bool = False,
):
    """Replace every meta tensor by the checkpoint's (or ``convert(target, value)``), one tensor at a
    time (tied ones stay one object); ``unshared``: read each with :meth:`Entry.load_unshared`."""
    modules = dict(model.named_modules())
    for target in plan:
        value = _value(target, keys, dtype, device, owner, unshared)
        value = value if convert is None else convert(target, value)
        if isinstance(target.meta, nn.Parameter):
            value = nn.Parameter(value, requires_grad=target.meta.requires_grad and not is_quantized(value))
        for key in target.keys:
            path, _, name = key.rpartition(".")
            module = modules[path]
            (module._parameters if name in module._parameters else module._buffers)[name] = value
    for path, module in modules.items():  # non-persistent buffers: each leaf computes its own on the device
        if isinstance(module, ModifyModule):
            with torch.device(device):
                module.reset_buffers()
        leftover = [name for name, buffer in module._buffers.items() if buffer is not None and buffer.is_meta]
        if leftover and device.type != "meta":
            raise RuntimeError(f"{owner}: no way to fill the buffers {leftover} of '{path}'")  # a bug here


def _value(
    target: _Target, keys: KeyFormat, dtype: torch.dtype | None, device: torch.device, owner: str, unshared: bool
) -> torch.Tensor:
    meta = target.meta
    if not target.found:  # an optional key: its initial value
        return torch.zeros(meta.shape, dtype=meta.dtype, device=device)
    read = [entry.load_unshared() if unshared else entry.load() for entry in target.found.values()]
    values = [keys.transformed(key, value) for key, value in zip(target.found, read)]
    first, *others = values
    names = [target.refs[key] for key in target.found]
    for name, other in zip(names[1:], others):
        if not torch.equal(first, other):
            raise CheckpointError(owner, mismatched=[f"{names[0]} and {name} are tied in the model but hold different values"])
    kind = (dtype or first.dtype) if first.is_floating_point() else first.dtype
    return first.to(device=device, dtype=kind)


def hf_value(config: Mapping[str, Any], name: str, default: Any) -> Any:
    """``config[name]``, or ``default`` (the reference config's default) when absent or ``None``."""
    value = config.get(name)
    return default if value is None else value


def require(condition: bool, owner: str, message: str) -> None:
    """Raise ``ValueError(f"{owner}: {message}")`` unless ``condition``: unsupported config values."""
    if not condition:
        raise ValueError(f"{owner}: {message}")
