"""Models built from primitives only: GPT, Llama, ResNet."""

from ._checkpoint import CheckpointError
from ._generate import generate
from ._layers import Positions
from ._resnet_blocks import BasicBlock, Bottleneck
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .resnet import ResNet, ResNetConfig, resnet18, resnet34, resnet50

__all__ = [
    "BasicBlock", "Bottleneck", "CheckpointError", "GPT", "GPTConfig", "Llama", "LlamaConfig", "Positions",
    "ResNet", "ResNetConfig", "generate", "resnet18", "resnet34", "resnet50",
]
