"""Models built from primitives only: GPT, Llama, ResNet.

Each model is a ``Sequential`` subclass whose tree holds only leaves, ``Sequential`` and
``Parallel``, built from a config dataclass, with a ``from_pretrained`` classmethod that loads
the reference implementation's weights: Hugging Face's ``GPT2LMHeadModel``,
``LlamaForCausalLM`` and ``ResNetForImageClassification`` (and torchvision's ResNets).

Example:
    >>> import torch
    >>> from modify.models import GPT, GPTConfig
    >>> gpt = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8))
    >>> gpt(torch.zeros(1, 8, dtype=torch.long)).shape
    torch.Size([1, 8, 16])
"""

from ._cache import CachedAttention, CachedPositions, CachedRotaryEmbedding, LastPosition, cache_offset, kv_cache, reset_cache
from ._checkpoint import CheckpointError
from ._generate import generate
from ._layers import Positions
from ._resnet_blocks import BasicBlock, Bottleneck
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .resnet import ResNet, ResNetConfig, resnet18, resnet34, resnet50

__all__ = [
    "CachedAttention", "CachedPositions", "CachedRotaryEmbedding", "LastPosition", "cache_offset", "kv_cache", "reset_cache",
    "BasicBlock", "Bottleneck", "CheckpointError", "GPT", "GPTConfig", "Llama", "LlamaConfig", "Positions",
    "ResNet", "ResNetConfig", "generate", "resnet18", "resnet34", "resnet50",
]
