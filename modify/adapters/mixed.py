"""``MixedLoRA``: one batched forward in which each sample runs through its own LoRA sibling.

PEFT serves batches that mix adapters (``model(x, adapter_names=[...])``) by looping over the
sub-batch of each adapter. Here every adapted layer computes all adapters for the whole batch at
once, as dense matrix products over the siblings' own ``down``/``up`` weights concatenated along
the rank axis, and a per-sample mask (holding each adapter's scale) keeps for each sample only
the columns of its adapter: ``y = W x + up_cat((down_cat x) * mask[ids])``. No sub-batches,
no data-dependent shapes, so ``torch.compile(fullgraph=True)`` sees one graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._core.checks import checks_enabled
from ..rewriting.selection import select
from .blocks import LoRA


class _Selector:
    """The adapter ids of the current call, shared by the mixed layers of one ``MixedLoRA``."""

    ids: torch.Tensor | None = None


class _MixedLayer(nn.Module):
    """One adapted layer over K siblings' blocks: base output plus the per-sample adapter's update."""

    def __init__(self, blocks: list[LoRA], selector: _Selector, path: str):
        super().__init__()
        first = blocks[0]
        for block in blocks:
            if block.base is not first.base or block.kind != first.kind or block.dora or isinstance(block.base, LoRA):
                raise ValueError(
                    f"MixedLoRA: the blocks at '{path}' must be plain (not DoRA, not stacked) LoRA blocks of one "
                    "layer type over the very same base layer"
                )
        self.base, self.kind, self.selector = first.base, first.kind, selector
        self.blocks = nn.ModuleList(blocks)  # the siblings' own blocks: parameters shared, never copied
        owner = torch.cat([torch.full((b.rank,), k, dtype=torch.long) for k, b in enumerate(blocks)])
        scale = torch.cat([torch.full((b.rank,), b.scale) for b in blocks])
        self.register_buffer("owner", owner, persistent=False)  # (R,) the adapter of each rank column
        self.register_buffer("column_scale", scale.to(first.down.weight), persistent=False)  # (R,)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Every adapter's ``down`` output, concatenated: ``(B, *, R)`` or ``(B, R, *)`` for a conv."""
        dtype = self.column_scale.dtype
        if self.kind == "embedding":
            return F.embedding(x, torch.cat([b.down.weight for b in self.blocks], 1), self.base.padding_idx)
        inputs = [b.adapter.dropout(x.to(dtype)) for b in self.blocks]  # each sibling's own dropout
        if self.kind == "linear":
            if not self.training or all(i is inputs[0] for i in inputs):
                return F.linear(inputs[0], torch.cat([b.down.weight for b in self.blocks]))
            return torch.cat([F.linear(i, b.down.weight) for i, b in zip(inputs, self.blocks)], -1)
        return torch.cat([b.down(i) for i, b in zip(inputs, self.blocks)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.selector.ids  # (B,)
        mask = (ids[:, None] == self.owner) * self.column_scale  # (B, R): the sample's adapter, scaled
        hidden = self._hidden(x)
        ups = torch.cat([b.up.weight for b in self.blocks], 1)  # (out, R, ...)
        if self.kind == "conv":
            mask = mask.reshape(*mask.shape, *([1] * (hidden.dim() - 2)))  # (B, R, 1, ...)
            update = F.conv1d(hidden * mask, ups) if hidden.dim() == 3 else F.conv2d(hidden * mask, ups)
        else:
            mask = mask.reshape(mask.shape[0], *([1] * (hidden.dim() - 2)), mask.shape[1])  # (B, 1, ..., R)
            update = F.linear(hidden * mask, ups)
        base = self.base(x)
        return (base + update).to(base.dtype)


class MixedLoRA(nn.Module):
    """Run each sample of a batch through its own LoRA sibling of one base, in one batched forward.

    A plain ``torch.nn.Module`` outside the algebra (it takes ``(x, adapter_ids)``). The siblings
    are LoRA siblings of one base model with the same adapted paths (ranks and alphas may
    differ; not DoRA, as PEFT's mixed batches); ``mixed(x, adapter_ids)`` equals
    ``siblings[adapter_ids[i]](x[i:i+1])`` for each sample ``i`` (``-1``: the base alone). Built
    on the first sibling's tree, with each adapted layer replaced by a layer that computes every
    adapter over the whole batch and masks per sample: the siblings' own parameters are used (no
    copies), gradients reach each adapter used, and ``torch.compile(fullgraph=True)`` traces it
    whole. PEFT's mixed adapter batches (``adapter_names=``), without its per-sub-batch loop.

    Args:
        siblings: the LoRA siblings (at least one).

    Shape:
        ``x``: the models' input with batch axis first, ``(B, ...)``, or a tuple of such (a padded
        batch of a language model: ``(ids, attention_mask)``); ``adapter_ids``: ``(B,)`` int64 in
        ``[-1, len(siblings))``. Output: the models' output, ``(B, ...)``.

    Attributes:
        model: the mixed tree (shares every leaf with the siblings).
        siblings: the siblings given, as a tuple.

    Raises:
        ValueError: no sibling; siblings without LoRA blocks, with different adapted paths, DoRA
            or stacked blocks, or blocks over different base layers; on a call, ``adapter_ids``
            not ``(B,)`` int64 in range (checked outside ``torch.compile``).

    Example:
        >>> import torch, modify
        >>> base = modify.Sequential(modify.Linear(4, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> a, b = modify.lora(base, rank=2), modify.lora(base, rank=4, alpha=2.0)
        >>> _ = [torch.nn.init.normal_(p) for p in modify.lora_parameters(a) + modify.lora_parameters(b)]
        >>> mixed = modify.MixedLoRA([a, b])
        >>> x, ids = torch.randn(3, 4), torch.tensor([1, -1, 0])
        >>> out = mixed(x, ids)
        >>> torch.allclose(out[0], b(x[:1])[0]), torch.allclose(out[1], base(x[1:2])[0]), torch.allclose(out[2], a(x)[2])
        (True, True, True)
    """

    def __init__(self, siblings: Sequence[nn.Module]):
        super().__init__()
        siblings = tuple(siblings)
        if not siblings or not all(isinstance(s, nn.Module) for s in siblings):
            raise ValueError(f"MixedLoRA: give a non-empty sequence of LoRA siblings, got {siblings!r:.80}")
        paths = [select(s, LoRA).paths() for s in siblings]
        if not paths[0] or any(p != paths[0] for p in paths):
            raise ValueError(f"MixedLoRA: the siblings must have LoRA blocks at the same paths, got {paths}")
        self.siblings, self._selector = siblings, _Selector()
        layers = {
            path: _MixedLayer([s.get_submodule(path) for s in siblings], self._selector, path) for path in paths[0]
        }
        by_block = {id(siblings[0].get_submodule(path)): layer for path, layer in layers.items()}
        self.model = select(siblings[0], LoRA).apply(lambda block: by_block[id(block)])

    def forward(self, x, adapter_ids: torch.Tensor):
        if checks_enabled() and not torch.compiler.is_compiling():
            self._check(x, adapter_ids)
        self._selector.ids = adapter_ids
        out = self.model(x)
        self._selector.ids = None
        return out

    def _check(self, x, ids: object) -> None:
        first = x[0] if isinstance(x, tuple) and x else x  # a padded batch: (ids, attention_mask)
        batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else None
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.shape != (batch,):
            got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"MixedLoRA: adapter_ids must be ({batch},) int64, one per sample, got {got}")
        if ids.numel() and not (-1 <= int(ids.min()) and int(ids.max()) < len(self.siblings)):
            raise ValueError(f"MixedLoRA: adapter_ids must lie in [-1, {len(self.siblings)}), got {ids.tolist()}")

    def extra_repr(self) -> str:
        return f"siblings={len(self.siblings)}"
