"""ResNet (18/34/50 and any stage layout) built from leaves, ``Sequential`` and ``Parallel`` alone.

He et al. 2016, "Deep Residual Learning for Image Recognition" (the "v1.5" variant that
strides in the 3x3 convolution of a bottleneck, as torchvision and Hugging Face do). Weights
load from Hugging Face's ``ResNetForImageClassification`` and from torchvision's ``resnet*``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.arguments import check_fields, check_positive, typechecked
from ..combinators import Sequential
from ..primitives import AdaptiveAvgPool2d, Flatten, Linear, MaxPool2d, ReLU
from ..checkpoints.loading import Family, KeyFormat, hf_value, load_pretrained, require
from ..checkpoints.files import Source
from ..checkpoints.pretrained import Pretrained
from .building import batch_norm
from .resnet_blocks import BasicBlock, Bottleneck, conv

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet18": dict(layer_type="basic", hidden_sizes=(64, 128, 256, 512), depths=(2, 2, 2, 2)),
    "resnet34": dict(layer_type="basic", hidden_sizes=(64, 128, 256, 512), depths=(3, 4, 6, 3)),
    "resnet50": dict(layer_type="bottleneck", hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 6, 3)),
}


@dataclass
class ResNetConfig:
    """Hyperparameters of :class:`ResNet`, with Hugging Face's ``ResNetConfig`` field names (ResNet-50 defaults).

    Args:
        num_channels: input image channels (3).
        embedding_size: channels out of the 7x7 stem (64).
        hidden_sizes: output channels of each stage ((256, 512, 1024, 2048)).
        depths: blocks in each stage ((3, 4, 6, 3)).
        layer_type: ``"basic"`` (two 3x3 convolutions; ResNet-18/34) or ``"bottleneck"`` (1x1,
            3x3, 1x1 with a 4x narrower middle; ResNet-50 and up).
        downsample_in_first_stage: stride 2 in the first stage too (``False``).
        downsample_in_bottleneck: stride in a bottleneck's first 1x1 convolution instead of its
            3x3 (the original ResNet v1; ``False`` is v1.5).
        num_classes: outputs of the classifier (1000; Hugging Face's ``num_labels``).

    Lists given for ``hidden_sizes``/``depths`` are stored as tuples.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: non-positive sizes, ``hidden_sizes`` and ``depths`` of different lengths,
            an unknown ``layer_type``, or bottleneck widths not divisible by 4.

    Example:
        >>> from modify.models import ResNetConfig
        >>> ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic").hidden_sizes
        (8, 16)
    """

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] | list[int] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] | list[int] = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    num_classes: int = 1000

    def __post_init__(self) -> None:
        check_fields(self)
        self.hidden_sizes, self.depths = tuple(self.hidden_sizes), tuple(self.depths)
        check_positive(self, "num_channels", "embedding_size", "num_classes")
        if not self.depths or len(self.depths) != len(self.hidden_sizes) or min(self.depths + self.hidden_sizes) < 1:
            raise ValueError(
                f"ResNetConfig: hidden_sizes and depths must be positive and of one length, "
                f"got {self.hidden_sizes} and {self.depths}"
            )
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"ResNetConfig: layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if self.layer_type == "bottleneck" and any(size % 4 for size in self.hidden_sizes):
            raise ValueError(f"ResNetConfig: bottleneck hidden_sizes must be multiples of 4, got {self.hidden_sizes}")


def _stage(config: ResNetConfig, index: int) -> Sequential:
    n_in = config.hidden_sizes[index - 1] if index else config.embedding_size
    n_out = config.hidden_sizes[index]
    stride = 2 if index or config.downsample_in_first_stage else 1
    if config.layer_type == "basic":
        blocks = [BasicBlock(n_in, n_out, stride)] + [BasicBlock(n_out, n_out) for _ in range(config.depths[index] - 1)]
    else:
        first = Bottleneck(n_in, n_out, stride, config.downsample_in_bottleneck)
        blocks = [first] + [Bottleneck(n_out, n_out) for _ in range(config.depths[index] - 1)]
    return Sequential(*blocks)


class ResNet(Pretrained, Sequential):
    """ResNet image classifier as a tree of leaves, equal to torchvision's ``ResNet``.

    Loads torchvision's weights (:meth:`from_torchvision`) and Hugging Face's
    ``ResNetForImageClassification`` ones (:meth:`from_pretrained`: ``model_type`` ``resnet``,
    e.g. ``microsoft/resnet-50``; keys ``resnet.embedder...``, ``classifier.1.weight``; config
    overrides are :class:`ResNetConfig` fields, ``num_classes`` read from the labels; a
    ``hidden_act`` other than ``relu`` or no labels is refused; the batch-norm statistics take
    ``dtype`` too). A ``Sequential`` subclass
    that only names the tree and keeps its :class:`ResNetConfig` as ``config``::

        embedder              conv (7x7, stride 2) -> bn (BatchNorm2d -> ElementwiseAffine) -> relu
                              -> pool (3x3 max, stride 2)
        stages.<s>.<b>        BasicBlock or Bottleneck: branches.shortcut, branches.residual.conv1, .bn1, ...
        head                  pool (global average) -> flatten -> fc (Linear)

    Args:
        config: the hyperparameters; see also :func:`resnet18`, :func:`resnet34`, :func:`resnet50`.

    Shape:
        ``(B, num_channels, H, W)`` images -> ``(B, num_classes)`` logits.

    Attributes:
        config: the :class:`ResNetConfig`. Initialisation as torchvision: convolutions
            ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, batch norms one/zero,
            the classifier as ``torch.nn.Linear``.

    Raises:
        ModifyValueError: (at call) images without ``num_channels`` channels at axis 1.

    Example:
        >>> import torch
        >>> from modify.models import ResNet, ResNetConfig
        >>> config = ResNetConfig(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic",
        ...                       num_classes=5)
        >>> ResNet(config)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5])

        Loading the reference's own folder:

        >>> import tempfile, transformers  # transformers only to write a checkpoint here
        >>> hf_config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        ...                                       layer_type="basic", num_labels=3)
        >>> reference = transformers.ResNetForImageClassification(hf_config).eval()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     reference.save_pretrained(folder)
        ...     resnet = ResNet.from_pretrained(folder)
        >>> images = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(resnet(images), reference(images).logits, atol=1e-5)
        True
    """

    @typechecked
    def __init__(self, config: ResNetConfig):
        embedder = Sequential(
            conv=conv(config.num_channels, config.embedding_size, 7, 2),
            bn=batch_norm(config.embedding_size),
            relu=ReLU(),
            pool=MaxPool2d(3, stride=2, padding=1),
        )
        stages = Sequential(*(_stage(config, i) for i in range(len(config.depths))))
        fc = Linear(config.hidden_sizes[-1], config.num_classes)
        head = Sequential(pool=AdaptiveAvgPool2d(1), flatten=Flatten(1), fc=fc)
        super().__init__(embedder=embedder, stages=stages, head=head)
        self.config = config
        HF_KEYS.name_modules(self)  # reference names: transformers' layer names

    def reference_config(self) -> dict[str, Any]:
        """``ResNetConfig``'s ``config.json`` fields for this model (see ``save_pretrained``)."""
        config = self.config
        return dict(
            model_type="resnet", architectures=["ResNetForImageClassification"], num_channels=config.num_channels,
            embedding_size=config.embedding_size, hidden_sizes=list(config.hidden_sizes), depths=list(config.depths),
            layer_type=config.layer_type, hidden_act="relu", downsample_in_first_stage=config.downsample_in_first_stage,
            downsample_in_bottleneck=config.downsample_in_bottleneck,
            id2label={str(i): f"LABEL_{i}" for i in range(config.num_classes)},
            label2id={f"LABEL_{i}": i for i in range(config.num_classes)},
        )

    @classmethod
    @typechecked
    def from_torchvision(cls, source: Source, arch: str = "resnet18", num_classes: int = 1000) -> ResNet:
        """Load a torchvision ``resnet18``/``resnet34``/``resnet50`` ``state_dict``.

        Args:
            source: a weights file (``torch.save(model.state_dict(), path)``, or torchvision's
                downloaded ``.pth``) or the ``state_dict`` itself, with torchvision's keys
                (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``).
            arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
            num_classes: outputs of ``fc``.

        Returns:
            A :class:`ResNet` in eval mode.

        Raises:
            ValueError: an unknown ``arch``.
            IsADirectoryError: a folder (torchvision checkpoints are single files).
            CheckpointError: (a ``ValueError``) listing every missing, unexpected and
                mis-shaped key.

        Example:
            >>> from modify.models import CheckpointError, ResNet, resnet18
            >>> ours = resnet18(num_classes=10).state_dict()  # our key names, not torchvision's
            >>> try:
            ...     ResNet.from_torchvision(ours, "resnet18", num_classes=10)
            ... except CheckpointError as error:
            ...     print(error.missing[:3], error.unexpected[:1])
            ['conv1.weight', 'bn1.running_mean', 'bn1.running_var'] ['embedder.conv.weight']
        """
        if arch not in ARCHITECTURES:
            raise ValueError(f"ResNet.from_torchvision: arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            raise IsADirectoryError(
                f"ResNet.from_torchvision: expected a weights file or a state_dict, got the folder '{source}'"
            )
        overrides = {**ARCHITECTURES[arch], "num_classes": num_classes}
        return load_pretrained(cls, TORCHVISION, source, overrides, "ResNet.from_torchvision")


def _make(arch: str, num_classes: int, overrides: dict[str, Any]) -> ResNet:
    return ResNet(ResNetConfig(**{**ARCHITECTURES[arch], "num_classes": num_classes, **overrides}))


@typechecked
def resnet18(num_classes: int = 1000, **config_overrides: Any) -> ResNet:
    """ResNet-18: basic blocks, stages of (2, 2, 2, 2), widths 64 to 512, randomly initialised.

    He et al. 2016, "Deep Residual Learning for Image Recognition"; torchvision's ``resnet18``
    (same layers, parameter count and init; weights load with :meth:`ResNet.from_torchvision`).
    The architecture's :class:`ResNetConfig` fields (``layer_type``, ``hidden_sizes``,
    ``depths``) with ``num_classes`` and ``config_overrides`` on top.

    Args:
        num_classes: outputs of the classifier (default ``1000``, ImageNet's classes).
        **config_overrides: other :class:`ResNetConfig` fields (e.g. ``num_channels=1``); they
            win over the architecture's own.

    Shape:
        ``(B, num_channels, H, W)`` images (``num_channels`` 3 unless overridden) ->
        ``(B, num_classes)`` logits, e.g. ``(B, 3, 224, 224) -> (B, 1000)``.

    Returns:
        A :class:`ResNet` in training mode (call ``.eval()`` for inference).

    Raises:
        TypeError: ``num_classes`` not an int; an unknown or mistyped config field.
        ValueError: a config value :class:`ResNetConfig` refuses (``num_classes < 1``, say).

    Example:
        >>> from modify.models import resnet18
        >>> sum(p.numel() for p in resnet18().parameters())  # torchvision's count
        11689512
    """
    return _make("resnet18", num_classes, config_overrides)


@typechecked
def resnet34(num_classes: int = 1000, **config_overrides: Any) -> ResNet:
    """ResNet-34: basic blocks, stages of (3, 4, 6, 3), widths 64 to 512, randomly initialised.

    He et al. 2016, "Deep Residual Learning for Image Recognition"; torchvision's ``resnet34``
    (same layers, parameter count and init). Arguments, shape, result and errors as :func:`resnet18`.

    Example:
        >>> from modify.models import resnet34
        >>> resnet34(num_classes=10).config.depths
        (3, 4, 6, 3)
    """
    return _make("resnet34", num_classes, config_overrides)


@typechecked
def resnet50(num_classes: int = 1000, **config_overrides: Any) -> ResNet:
    """ResNet-50: bottleneck blocks, stages of (3, 4, 6, 3), widths 256 to 2048, randomly initialised.

    He et al. 2016, "Deep Residual Learning for Image Recognition"; torchvision's ``resnet50``
    (same layers, parameter count and init). Each bottleneck narrows the width 4x with a 1x1
    convolution, runs its 3x3 convolution there and widens back with another 1x1 convolution.
    Arguments, shape, result and errors as :func:`resnet18`.

    Example:
        >>> from modify.models import resnet50
        >>> resnet50(num_classes=10).config.layer_type
        'bottleneck'
    """
    return _make("resnet50", num_classes, config_overrides)


def _config_from_hf(hf: dict[str, Any], owner: str) -> dict[str, Any]:
    """``ResNetConfig`` fields from a Hugging Face ``ResNetConfig`` ``config.json``."""
    activation = hf_value(hf, "hidden_act", "relu")
    require(activation == "relu", owner, f"hidden_act {activation!r} is not supported (only 'relu')")
    labels = hf.get("id2label")
    num_classes = len(labels) if labels else hf_value(hf, "num_labels", 2)
    require(num_classes > 0, owner, "a classifier with no labels (num_labels=0) is not supported")
    defaults = ResNetConfig.__dataclass_fields__
    names = ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type")
    names += ("downsample_in_first_stage", "downsample_in_bottleneck")
    return {**{name: hf_value(hf, name, defaults[name].default) for name in names}, "num_classes": num_classes}


# Our block keys: stages.<s>.<b>.branches.{residual.conv1, residual.bn1.norm, shortcut.conv, ...}.<name>
_BLOCK = r"stages\.(\d+)\.(\d+)\.branches\."
_BN = r"bn\.(?:norm|affine)\.(\w+)"  # both halves of a batch norm map to one torch.nn.BatchNorm2d
_PART = r"(conv|bn)(\d)?\.(?:norm\.|affine\.)?(\w+)"  # conv1.weight, bn1.norm.running_mean, bn.affine.bias


def _hf_block(match: re.Match[str]) -> str:
    stage, block, branch, kind, index, name = match.groups()
    part = "convolution" if kind == "conv" else "normalization"
    if branch == "shortcut":
        return f"resnet.encoder.stages.{stage}.layers.{block}.shortcut.{part}.{name}"
    return f"resnet.encoder.stages.{stage}.layers.{block}.layer.{int(index) - 1}.{part}.{name}"


def _torchvision_block(match: re.Match[str]) -> str:
    stage, block, branch, kind, index, name = match.groups()
    layer = f"layer{int(stage) + 1}.{block}"
    if branch == "shortcut":
        return f"{layer}.downsample.{0 if kind == 'conv' else 1}.{name}"
    return f"{layer}.{kind}{index}.{name}"


def _keys(stem_conv: str, stem_bn: str, block: Callable[[re.Match[str]], str], fc: str, **options: Any) -> KeyFormat:
    """A ResNet key format: where the stem's conv and batch norm, the blocks and the classifier go."""
    rules = (
        (r"embedder\.conv\.weight", stem_conv),
        (r"embedder\." + _BN, stem_bn + r".\1"),
        (_BLOCK + r"(residual|shortcut)\." + _PART, block),
        (r"head\.fc\.(\w+)", fc + r".\1"),
    )
    return KeyFormat(rules=rules, optional=("*num_batches_tracked",), **options)


# Our state_dict keys -> Hugging Face ResNetForImageClassification's, and torchvision ResNet's.
HF_KEYS = _keys("resnet.embedder.embedder.convolution.weight", "resnet.embedder.embedder.normalization", _hf_block,
                "classifier.1", base_prefix="resnet")
TORCHVISION_KEYS = _keys("conv1.weight", "bn1", _torchvision_block, "fc")

FAMILY = Family(ResNetConfig, HF_KEYS, ("resnet",), _config_from_hf)
TORCHVISION = Family(ResNetConfig, TORCHVISION_KEYS)
ResNet.family = FAMILY
