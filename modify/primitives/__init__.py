"""Primitives: the leaves of the algebra, named as the torch function they run, capitalised."""

from .activations import GELU, Dropout, Exp, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .arithmetic import Add, Div, MatMul, Mul, Scale, Sub
from .attention import RotaryEmbedding, ScaledDotProductAttention
from .debug import Breakpoint, Print, PrintShape
from .fused import AffineGroupNorm, AffineLayerNorm, AffineRMSNorm, ScaledLinear
from .joins import Cat, Split, Stack
from .function import Function
from .linear import Conv1d, Conv2d, Embedding, Linear
from .batchnorm import BatchNorm1d, BatchNorm2d
from .norms import ElementwiseAffine, GroupNorm, LayerNorm, RMSNorm
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .reductions import Max, Mean, Sum
from .shape import Flatten, Permute, Rearrange, Reshape, Transpose
from .structure import Copy, Identity, Index, Positions

__all__ = [
    "AdaptiveAvgPool2d", "Add", "AffineGroupNorm", "AffineLayerNorm", "AffineRMSNorm", "AvgPool2d",
    "BatchNorm1d", "BatchNorm2d", "Breakpoint", "Cat", "Conv1d", "Conv2d", "Copy", "Div", "Dropout",
    "ElementwiseAffine", "Embedding", "Exp", "Flatten", "Function", "GELU", "GroupNorm", "Identity", "Index", "LayerNorm",
    "Linear", "LogSoftmax", "MatMul", "Max", "MaxPool2d", "Mean", "Mul", "Permute", "Positions", "Print",
    "PrintShape", "RMSNorm", "Rearrange", "ReLU", "Reshape", "RotaryEmbedding", "Scale",
    "ScaledDotProductAttention", "ScaledLinear", "Sigmoid", "SiLU", "Softmax", "Split", "Stack", "Sub", "Sum",
    "Tanh", "Transpose",
]
