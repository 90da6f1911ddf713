"""Plain ``torch.nn`` models for the ``modify.convert`` tests, written as their authors write them."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """An MLP block with a pre-norm residual connection and a head."""

    def __init__(self, dim: int = 16, hidden: int = 32, out: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc2(self.act(self.fc1(self.norm(x))))
        return self.head(x)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (``torchvision/models/resnet.py``), as written there."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet18(nn.Module):
    """torchvision's ``resnet18`` layout (``layers=[2, 2, 2, 2]``), with a ``width`` knob for speed."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, 2)
        self.layer2 = self._make_layer(2 * width, 2, stride=2)
        self.layer3 = self._make_layer(4 * width, 2, stride=2)
        self.layer4 = self._make_layer(8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class Tied(nn.Module):
    """One block called twice (with another layer between) and a weight tied between two layers."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, dim, bias=False)
        self.head.weight = self.mid.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.mid(self.block(x))))


class TwoTowers(nn.Module):
    """Two inputs, a shared encoder, a concatenation and an opaque bit (a learned scale, a slice)."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.encoder = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 2 * dim))
        self.out = nn.Linear(2 * dim, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.encoder(a), torch.relu(self.encoder(b))], dim=-1) * self.scale
        return self.out(both)[:, :2] + 1.0
