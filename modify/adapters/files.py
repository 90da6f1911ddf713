"""PEFT's adapter folder format: ``save_adapters`` and ``load_adapters``.

A folder holds ``adapter_config.json`` (a ``LoraConfig``: ``peft_type: "LORA"``, ``r``,
``lora_alpha``, ``target_modules``, ``rank_pattern``/``alpha_pattern`` for per-layer values, ...)
and ``adapter_model.safetensors`` with one entry per adapter tensor, named
``base_model.model.<layer>.<suffix>`` as PEFT's ``save_pretrained`` writes them (``lora_A.weight``,
``lora_B.weight``, ``lora_embedding_A``/``lora_embedding_B`` for an Embedding,
``lora_magnitude_vector`` for DoRA). ``<layer>`` is the reference implementation's module name
where the layer has one (its ``reference_name``: transformers' names for ``modify.models``, which
read them off their checkpoint key maps; the original path for a converted model), the modify
path otherwise.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._core.arguments import typechecked
from ..checkpoints.loading import CheckpointError
from ..checkpoints.atomic import atomic_folder
from ..checkpoints.pretrained import Pretrained
from ..primitives.transposed_linear import TransposedLinear
from ..rewriting.criteria import reference_name
from ..rewriting.selection import select
from ..rewriting.walk import positions
from .blocks import LoRA, layer_kind

PathLike = Union[str, os.PathLike]
PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def peft_tensors(block: LoRA) -> dict[str, torch.Tensor]:
    """The block's adapter tensors by PEFT suffix, in PEFT's layout (views of the parameters)."""
    if block.dora:
        update = block.update
        return {"lora_A.weight": update.lora_A, "lora_B.weight": update.lora_B, "lora_magnitude_vector": update.magnitude}
    if block.kind == "embedding":
        return {"lora_embedding_A": block.down.weight.t(), "lora_embedding_B": block.up.weight}
    return {"lora_A.weight": block.down.weight, "lora_B.weight": block.up.weight}


def layer_names(model: nn.Module) -> dict[str, str]:
    """Module path -> the layer's name in an adapter file (its ``reference_name``, else the path)."""
    return {path: _name(path, module) for path, module, _ in positions(model)}


def _name(path: str, module: nn.Module) -> str:
    reference = reference_name(module)
    return path if reference is None else reference


def _most_common(values: dict[str, Any]) -> Any:
    return Counter(values.values()).most_common(1)[0][0]


def _config(model: nn.Module, blocks: dict[str, LoRA]) -> dict[str, Any]:
    """A PEFT ``LoraConfig`` dict for ``blocks`` (layer name -> block)."""
    ranks = {name: b.rank for name, b in blocks.items()}
    alphas = {name: b.alpha for name, b in blocks.items()}
    dropouts = {name: b.dropout for name, b in blocks.items()}
    for flag in ("use_rslora", "dora"):
        if len({getattr(b, flag) for b in blocks.values()}) > 1:
            raise ValueError(f"save_adapters: PEFT's format has one {flag} for all layers; the blocks differ")
    r, alpha, first = _most_common(ranks), _most_common(alphas), next(iter(blocks.values()))
    transposed = (isinstance(model, Pretrained) and model.family.keys.fan_in_fan_out) or all(
        isinstance(b.base, TransposedLinear) for b in blocks.values()
    )
    conv1d_layers = transposed and all(b.kind == "linear" for b in blocks.values())
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
        "inference_mode": True, "r": r, "lora_alpha": alpha, "lora_dropout": _most_common(dropouts),
        "target_modules": sorted(blocks), "rank_pattern": {n: v for n, v in ranks.items() if v != r},
        "alpha_pattern": {n: v for n, v in alphas.items() if v != alpha}, "use_rslora": first.use_rslora,
        "use_dora": first.dora, "fan_in_fan_out": conv1d_layers, "bias": "none", "lora_bias": False,
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
    }


@typechecked
def save_adapters(model: nn.Module, folder: PathLike) -> None:
    """Write only the adapters of a LoRA sibling, in PEFT's folder format.

    ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT's ``save_pretrained``
    writes them, so ``PeftModel.from_pretrained(reference_model, folder)`` loads them. A layer is
    named by its ``reference_name`` where it has one (for ``modify.models`` the ``transformers``
    model's: ``transformer.h.0.attn.c_attn``, ``model.layers.0.self_attn.q_proj``,
    ``resnet.embedder.embedder.convolution``; a converted model's original paths), by its modify
    path otherwise. Ranks and alphas that differ between layers go to ``rank_pattern`` and
    ``alpha_pattern``. Tensors are saved in the adapters' own dtype.

    Args:
        model: a model holding :class:`~modify.LoRA` blocks (one level, not stacked).
        folder: created if needed. The two files replace any earlier adapter there
            (``adapter_config.json``, ``adapter_model.*``), in one atomic swap of the folder
            (:func:`~modify.checkpoints.atomic_folder`): a save killed or failing midway leaves
            the previous adapter whole; other files are kept.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: no LoRA block; stacked blocks; blocks that mix ``use_rslora`` or ``dora``.
        OSError: the save failed (disk full, permission, ``folder`` or a folder above it a
            file: ``NotADirectoryError``), naming the folder and the cause; the folder is as
            it was.

    Example:
        >>> import tempfile, os, modify
        >>> adapted = modify.lora(modify.Sequential(fc=modify.Linear(4, 4)), rank=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     modify.save_adapters(adapted, folder)
        ...     sorted(os.listdir(folder))
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    names = layer_names(model)
    blocks = {names[path]: block for path, block in select(model, LoRA)}
    if not blocks:
        raise ValueError(f"save_adapters: the {type(model).__name__} holds no LoRA block")
    if any(isinstance(b.base, LoRA) for b in blocks.values()):
        raise ValueError("save_adapters: stacked LoRA blocks (lora applied twice) have no PEFT format; merge one first")
    tensors = {
        f"{PREFIX}{name}.{suffix}": tensor.detach().contiguous().clone()
        for name, block in blocks.items()
        for suffix, tensor in peft_tensors(block).items()
    }
    config = _config(model, blocks)
    with atomic_folder(folder, replaces=(CONFIG_FILE, "adapter_model.*"), owner="save_adapters") as staging:
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def _read_config(folder: Path, owner: str) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(owner, note=f"'{path}' is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(owner, note=f"'{path}' is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(owner, note=f"'{path}' holds a {type(config).__name__}, not a JSON object")
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only 'LORA')")
    if config.get("bias", "none") != "none" or config.get("lora_bias", False):
        problems.append("adapter biases (bias/lora_bias)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']!r}")
    for name in ("r", "lora_alpha"):
        if not isinstance(config.get(name), (int, float)) or isinstance(config.get(name), bool):
            problems.append(f"{name} {config.get(name)!r} (a number is needed)")
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(name) or {}, dict):
            problems.append(f"{name} {config.get(name)!r} (a JSON object is needed)")
    if problems:
        raise CheckpointError(owner, note=f"'{path}' has unsupported settings: {'; '.join(problems)}")
    return config


def _read_weights(folder: Path, owner: str) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(owner, note=f"'{path}' is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(owner, note=f"'{path}' is not a safetensors file ({error})") from None


def _pattern_value(patterns: dict, name: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", name)``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def _base_copies(tensors: dict[str, torch.Tensor], layers: dict[str, Any]) -> list[str]:
    """Drop the base weights PEFT also saves (``save_embedding_layers``); list those that differ from ours."""
    differ = []
    for name, (_, module) in layers.items():
        for key in (f"{PREFIX}{name}.weight", f"{PREFIX}{name}.base_layer.weight"):
            if key not in tensors:
                continue
            saved = tensors.pop(key)
            if saved.shape != module.weight.shape or not torch.equal(saved.to(module.weight), module.weight):
                differ.append(f"{key}: a base weight other than the model's (load_adapters never changes the base)")
    return differ


def _targeted(config: dict, name: str) -> bool:
    """PEFT's ``check_target_module_exists``: a regex ``target_modules`` fully matches, a list's entry ends the name."""
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets if isinstance(t, str))


def _grouped(tensors: dict[str, torch.Tensor], layers: dict[str, Any]) -> tuple[dict[str, dict], list[str]]:
    """File keys grouped by layer name (``{name: {suffix: tensor}}``), and the keys that fit no layer."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(f".{s}")), None)
        name = key[len(PREFIX) : -len(suffix) - 1] if suffix and key.startswith(PREFIX) else None
        if name not in layers:
            unexpected.append(key)
            continue
        grouped.setdefault(name, {})[suffix] = tensor
    return grouped, unexpected


def _blocks(config: dict, grouped: dict, layers: dict, owner: str) -> dict[int, LoRA]:
    """A new block per adapted layer, by the layer module's id, as the config describes it."""
    blocks = {}
    for name in grouped:
        path, module = layers[name]
        rank = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        options = {"use_rslora": bool(config.get("use_rslora")), "dora": bool(config.get("use_dora"))}
        try:
            blocks[id(module)] = LoRA(module, int(rank), float(alpha), float(config.get("lora_dropout", 0.0)), **options)
        except (TypeError, ValueError) as error:
            raise CheckpointError(owner, note=f"the layer '{name}' cannot take this adapter: {error}") from None
    return blocks


@typechecked
def load_adapters(base: nn.Module, folder: PathLike) -> nn.Module:
    """A LoRA sibling of ``base`` carrying the adapters of a PEFT-format folder.

    Reads what :func:`save_adapters` writes, or PEFT's ``save_pretrained`` for the reference
    model (``transformers``' GPT-2, Llama or ResNet onto ``modify.models``; layers are found by
    ``reference_name``, else by module path): ``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``,
    ``lora_dropout``, ``use_rslora`` and ``use_dora`` from the config, the adapted layers from
    the weights file. Every key and shape is checked before anything is built; ``base`` is left
    untouched (the sibling shares its parameters, as :func:`~modify.lora` does). Base weights
    that PEFT saves beside the adapters (``save_embedding_layers``, e.g. for ``lm_head``) must
    equal the base's own.

    Args:
        base: the base model (no adapters).
        folder: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        The adapted sibling, with the same outputs as PEFT's model on the reference.

    Raises:
        TypeError: an argument of the wrong type.
        CheckpointError: (a ``ValueError``) a file given for the folder, a missing or non-JSON
            config, settings this loader does not implement (another ``peft_type``, adapter
            biases, ``modules_to_save``), an unreadable weights file, or missing, unexpected and
            mis-shaped keys (all listed in one error, with the file's path).

    Example:
        >>> import tempfile, torch, modify
        >>> base = modify.Sequential(fc=modify.Linear(4, 4))
        >>> adapted = modify.lora(base, rank=2)
        >>> _ = torch.nn.init.normal_(adapted.fc.up.weight)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     modify.save_adapters(adapted, folder)
        ...     again = modify.load_adapters(base, folder)
        >>> x = torch.randn(3, 4)
        >>> torch.equal(again(x), adapted(x)), again.fc.base is base.fc
        (True, True)
    """
    folder = Path(folder)
    owner = f"load_adapters('{folder}')"
    if folder.is_file():
        raise CheckpointError(owner, note=f"'{folder}' is a file; give the folder of {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = _read_config(folder, owner)
    tensors = _read_weights(folder, owner)
    names = layer_names(base)
    layers = {names[path]: (path, m) for path, m in base.named_modules() if _is_layer(m, path)}
    mismatched = _base_copies(tensors, layers)
    grouped, unexpected = _grouped(tensors, layers)
    blocks = _blocks(config, grouped, layers, owner)
    missing = [f"{PREFIX}{name}.lora_A.weight (target_modules names it)" for name in layers
               if name not in grouped and _targeted(config, name)]  # fmt: skip
    for name, given in grouped.items():
        expected = peft_tensors(blocks[id(layers[name][1])])
        unexpected += [f"{PREFIX}{name}.{s}" for s in given if s not in expected]
        missing += [f"{PREFIX}{name}.{s}" for s in expected if s not in given]
        mismatched += [
            f"{PREFIX}{name}.{s}: file {tuple(given[s].shape)}, model {tuple(t.shape)}"
            for s, t in expected.items()
            if s in given and given[s].shape != t.shape
        ]
    if missing or unexpected or mismatched or not grouped:
        note = f"'{folder / WEIGHTS_FILE}'" + ("" if grouped else " holds no adapter of this model's layers")
        raise CheckpointError(owner, missing, unexpected, mismatched, note)
    with torch.no_grad():
        for name, given in grouped.items():
            for suffix, target in peft_tensors(blocks[id(layers[name][1])]).items():
                target.copy_(given[suffix])
    return select(base, lambda path, m: id(m) in blocks).apply(lambda m: blocks[id(m)])


def _is_layer(module: nn.Module, path: str) -> bool:
    try:
        layer_kind(module, path)
    except TypeError:
        return False
    return True
