"""``torch.nn`` layouts of the model-zoo families that conversion once got wrong, as their authors write them.

torchvision and timm cannot run here; each class is the block's code from there, cut to its core:
DenseNet's dense layer (``torch.cat`` of a list of features, a one-element list included),
ShuffleNet's channel shuffle (``view`` after ``transpose(...).contiguous()``), Swin's window
attention (a relative position bias gathered from a parameter table), ConvNeXt's block (layer
scale ``gamma`` and a ``permute``), nanoGPT's non-flash attention (the ``bias`` mask buffer sliced
to the sequence length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseLayer(nn.Module):
    """torchvision ``_DenseLayer``: BN-ReLU-Conv on the concatenation of all earlier features."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(channels, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))


class DenseBlock(nn.Module):
    """torchvision ``_DenseBlock``: each layer sees every earlier output, concatenated."""

    def __init__(self, channels: int = 4, growth: int = 3, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(channels + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class ShuffleUnit(nn.Module):
    """torchvision ShuffleNetV2's ``InvertedResidual`` (stride 1): split, branch, concat, shuffle."""

    def __init__(self, channels: int = 8):
        super().__init__()
        half = channels // 2
        self.branch2 = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
        )

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        batch, channels, height, width = x.size()
        x = x.view(batch, groups, channels // groups, height, width)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(batch, -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return self.channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


class WindowAttention(nn.Module):
    """Swin's ``WindowAttention``: multi-head attention plus a bias gathered from a parameter table."""

    def __init__(self, dim: int = 8, window: int = 3, heads: int = 2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1])
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = (attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's ``Block``: depthwise conv, channels-last LayerNorm MLP, layer scale, residual."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm, self.pwconv1, self.act, self.pwconv2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """PoolFormer/EfficientFormer's layer scale: ``x * gamma.view(C, 1, 1)``."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.conv, self.gamma = nn.Conv2d(dim, dim, 1), nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma.view(-1, 1, 1) * self.conv(x)


class CausalSelfAttention(nn.Module):
    """nanoGPT's ``CausalSelfAttention`` without flash attention: the masked softmax by hand."""

    def __init__(self, n_embd: int = 8, n_head: int = 2, block_size: int = 16):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd), n_head
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))
