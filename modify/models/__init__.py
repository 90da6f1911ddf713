"""Models built from primitives only: GPT, Llama, ResNet.

Each model is a ``Sequential`` subclass whose tree holds only leaves, ``Sequential`` and
``Parallel``, built from a config dataclass, with a ``from_pretrained`` classmethod that loads
the reference implementation's weights: Hugging Face's ``GPT2LMHeadModel``,
``LlamaForCausalLM`` (with ``MistralForCausalLM`` and ``Qwen2ForCausalLM``) and
``ResNetForImageClassification`` (and torchvision's ResNets), and a ``save_pretrained`` method
that writes them back in that layout.

``from_pretrained(source, *, dtype=None, device=None, **config)`` reads the folder's
``config.json`` (refusing another ``model_type`` or an option the model does not implement),
builds the model on the meta device (no memory, no random numbers), checks every key, shape and
dtype kind of the checkpoint's headers against it, and only then fills each tensor straight from
the memory-mapped file in ``dtype`` on ``device``: any problem is one :class:`CheckpointError`
naming the file or folder, raised before a weight is allocated.

Example:
    >>> import torch
    >>> from modify.models import GPT, GPTConfig
    >>> gpt = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8))
    >>> gpt(torch.zeros(1, 8, dtype=torch.long)).shape
    torch.Size([1, 8, 16])
"""

from .cached_attention import CachedAttention
from .cached_positions import CachedPositions, CachedRotaryEmbedding, CachedTokenInput, LastPosition
from .cache import cache_offset, kv_cache, reset_cache
from .padding import CarryAdd, Pick, TokenInput
from ..checkpoints import CheckpointError
from .decoding import generate
from .decoding_head import DecodingHead
from .resnet_blocks import BasicBlock, Bottleneck
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .resnet import ResNet, ResNetConfig, resnet18, resnet34, resnet50

__all__ = [
    "CachedAttention", "CachedPositions", "CachedRotaryEmbedding", "CachedTokenInput", "CarryAdd", "DecodingHead",
    "LastPosition", "Pick", "TokenInput", "cache_offset", "kv_cache", "reset_cache",
    "BasicBlock", "Bottleneck", "CheckpointError", "GPT", "GPTConfig", "Llama", "LlamaConfig",
    "ResNet", "ResNetConfig", "generate", "resnet18", "resnet34", "resnet50",
]
