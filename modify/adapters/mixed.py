"""``MixedLoRA``: one batched forward in which each sample runs through its own LoRA sibling.

PEFT serves batches that mix adapters (``model(x, adapter_names=[...])``) by looping over the
sub-batch of each adapter. Here every adapted layer gathers each sample's own adapter's weights
from the siblings' weights stacked along a new adapter axis (``index_select``, an index, not a
mask): one batched product of each sample's ``(r, in)`` ``down`` with its positions (``bmm``),
then one with its ``up``, scaled by its ``s``, accumulated into the base layer's fresh output
(``baddbmm_``; out of place for a conv, where a forward hook on the base layer may hold that
output, or where dtypes differ): ``y_i = W x_i + s_i up_i down_i x_i``. A sample on the base reads
an all-zero ``up``. An Embedding's or conv's ``down`` (and a Linear's under adapter dropout, each
adapter with its own) runs for every adapter, and each sample keeps its own adapter's ``r``
columns. The per-sample indices are made once per call and read by every layer; outside autograd
the stacked weights are kept until an adapter weight changes. No sub-batches, no data-dependent
shapes, so ``torch.compile(fullgraph=True)`` sees one graph.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._core.checks import checks_enabled
from ..rewriting.selection import select
from .blocks import LoRA


class _Selector:
    """The current call's per-sample indices and stacked-weight generation, made once per call and
    read by every mixed layer."""

    adapters: torch.Tensor | None = None  # (B,) the adapter whose down weights each sample reads (the base: 0)
    ups: torch.Tensor | None = None  # (B,) each sample's row of a layer's (K + 1,) scaled ups (the base: K, zeros)
    samples: torch.Tensor | None = None  # (B,) 0, 1, ..., B - 1
    generation: int | None = None  # the stacked weights a layer may keep and reuse (None: stack afresh, keep none)

    def set(self, ids: torch.Tensor | None, count: int, generation: int | None = None) -> None:
        """Index ``ids`` (``(B,)`` in ``[-1, count)``) for the layers, or forget them (``None``)."""
        self.generation = generation
        if ids is None:
            self.adapters = self.ups = self.samples = None
            return
        self.adapters, self.ups = ids.clamp(min=0), torch.where(ids < 0, count, ids)
        self.samples = torch.arange(ids.shape[0], device=ids.device)


class _MixedLayer(nn.Module):
    """One adapted layer over K siblings' blocks: base output plus each sample's own adapter's update."""

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
        self._downs, self._scales = tuple(b.down for b in blocks), tuple(b.scale for b in blocks)  # read once
        self._factors = self._downs + tuple(b.up for b in blocks)  # the layers whose weights are stacked
        self._cache: tuple = (None, None)  # (the generation they were stacked in, the stacked weights)
        self._dropouts = tuple(b.adapter.dropout for b in blocks if b.dropout > 0)
        self.rank = max(b.rank for b in blocks)  # smaller ranks are padded with zeros up to it

    def _padded(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` with zeros appended along its rank axis ``dim`` up to the layer's largest rank."""
        missing = self.rank - t.shape[dim]
        return F.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, missing]) if missing else t

    def _stacked(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The adapters' weights stacked, ``(down, up)``; kept while the call's generation is the one
        they were stacked in.

        ``up`` is ``(K + 1, r, out)``: each adapter's scaled by its ``s``, the last all zeros (the
        base's rows). ``down`` is a Linear's ``(K + 1, r, in + out)``: each adapter's ``(r, in)`` beside
        its scaled ``up`` (one gather picks both; ``up`` is a view of it); an Embedding's
        ``(num, K r)``; a conv's ``None`` (its downs run as convolutions).
        """
        generation = self.selector.generation
        if generation is not None and self._cache[0] == generation:
            return self._cache[1]
        weights = [m.weight for m in self._factors]
        downs, ups = weights[: len(self._scales)], weights[len(self._scales) :]
        ups = [self._padded(u.flatten(1).t(), 0) * s for u, s in zip(ups, self._scales)]
        if self.kind == "linear":
            both = [torch.cat([self._padded(d, 0), u], 1) for d, u in zip(downs, ups)]
            down = torch.stack([*both, torch.zeros_like(both[0])])
            stacked = down, down[..., downs[0].shape[1] :]
        else:
            down = torch.cat([self._padded(d, 1) for d in downs], 1) if self.kind == "embedding" else None
            stacked = down, torch.stack([*ups, torch.zeros_like(ups[0])])
        if generation is not None:
            self._cache = (generation, stacked)
        return stacked

    def _every_hidden(self, x: torch.Tensor, down: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Each sample's own adapter's columns of every adapter's ``down`` output, ``(B, N, r)``: an
        Embedding's, a conv's, or a Linear's under adapter dropout (each adapter its own dropout)."""
        selector, downs = self.selector, self._downs
        if self.kind == "embedding":
            every = F.embedding(x, down, self.base.padding_idx)
        else:
            x = x.to(dtype)
            dropping = self.training and any(d.training for d in self._dropouts)
            inputs = [b.adapter.dropout(x) for b in self.blocks] if dropping else [x] * len(downs)  # each its own
            if self.kind == "conv":
                every = torch.cat([self._padded(d(i), 1) for i, d in zip(inputs, downs)], 1)
                every = every.flatten(2).transpose(1, 2)  # (B, positions, K r)
            else:
                every = torch.cat([F.linear(i, self._padded(d.weight, 0)) for i, d in zip(inputs, downs)], -1)
        every = every.reshape(every.shape[0], -1, len(downs), self.rank)  # (B, N, K, r): every adapter's
        return every[selector.samples, :, selector.adapters]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self._stacked()
        if self.kind == "linear" and not (self.training and any(d.training for d in self._dropouts)):
            picked = down.index_select(0, self.selector.ups)  # (B, r, in + out): each sample's own, scaled up
            down, ups = picked.split([picked.shape[-1] - up.shape[-1], up.shape[-1]], -1)
            rows = x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])  # (B, N, in)
            rows = rows if rows.dtype == up.dtype else rows.to(up.dtype)
            hidden = torch.bmm(down, rows.transpose(1, 2)).transpose(1, 2)  # each (r, in) times its (in, N)
        else:
            hidden = self._every_hidden(x, down, up.dtype)
            ups = up.index_select(0, self.selector.ups)  # (B, r, out): each sample's own, scaled (the base's: zeros)
        return self._updated(self.base(x), hidden, ups)

    def _updated(self, base: torch.Tensor, hidden: torch.Tensor, ups: torch.Tensor) -> torch.Tensor:
        """The base layer's output ``(B, ..., out)`` (a conv's ``(B, out, *spatial)``) plus ``hidden @ ups``."""
        if self.kind == "conv":  # (B, out, *spatial) <-> (B, positions, out)
            rows = base.flatten(2).transpose(1, 2).to(hidden.dtype)
            return torch.baddbmm(rows, hidden, ups).transpose(1, 2).reshape(base.shape).to(base.dtype)
        rows = base if base.dim() == 3 else base.reshape(base.shape[0], -1, base.shape[-1])  # (B, N, out)
        if rows.dtype != hidden.dtype or self.base._forward_hooks:  # a hook may hold on to the base's output
            return torch.baddbmm(rows.to(hidden.dtype), hidden, ups).reshape(base.shape).to(base.dtype)
        updated = rows.baddbmm_(hidden, ups)  # into the base's fresh output: no copy of it
        return base if rows is base else updated.view(base.shape)


class MixedLoRA(nn.Module):
    """Run each sample of a batch through its own LoRA sibling of one base, in one batched forward.

    A plain ``torch.nn.Module`` outside the algebra (it takes ``(x, adapter_ids)``). The siblings
    are LoRA siblings of one base model with the same adapted paths (ranks and alphas may
    differ; not DoRA, as PEFT's mixed batches); ``mixed(x, adapter_ids)`` equals
    ``siblings[adapter_ids[i]](x[i:i+1])`` for each sample ``i`` (``-1``: the base alone). Built
    on the first sibling's tree, with each adapted layer replaced by a layer in which each sample
    gathers its own adapter's weights (batched products, no per-adapter loop): the siblings' own
    parameters are used (no copies), gradients reach each adapter used, and
    ``torch.compile(fullgraph=True)`` traces it whole. PEFT's mixed adapter batches (``adapter_names=``), without its per-sub-batch loop.

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
        self._generation, self._made_from = 0, (None, None, ())  # the generation's (mode, versions, weights)
        layers = {
            path: _MixedLayer([s.get_submodule(path) for s in siblings], self._selector, path) for path in paths[0]
        }
        by_block = {id(siblings[0].get_submodule(path)): layer for path, layer in layers.items()}
        self.model = select(siblings[0], LoRA).apply(lambda block: by_block[id(block)])
        self._factors = tuple(f for layer in layers.values() for f in layer._factors)  # every stacked weight's layer

    def forward(self, x, adapter_ids: torch.Tensor):
        if checks_enabled() and not torch.compiler.is_compiling():
            self._check(x, adapter_ids)
        # the per-sample indices and the stacked weights' generation, once for every layer
        self._selector.set(adapter_ids, len(self.siblings), self._stacked_generation())
        try:
            return self.model(x)
        finally:
            self._selector.set(None, len(self.siblings))

    def _stacked_generation(self) -> int | None:
        """The generation of stacked weights the layers may keep and reuse in this call, or ``None``.

        Without autograd recording them (serving: ``no_grad``/``inference_mode``, or frozen
        adapters) and outside ``torch.compile``, the layers stack their adapters' weights once and
        reuse them until one changes: a new tensor, or an in-place write (an optimizer step,
        ``load_state_dict``, ``copy_``) that moves its version; then a new generation begins.
        """
        if torch.compiler.is_compiling():
            return None
        weights = [f._parameters.get("weight") for f in self._factors]  # 10x faster than f.weight
        if any(w is None for w in weights):  # a weight held as a plain tensor attribute
            weights = [f.weight for f in self._factors]
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            return None
        mode, versions = torch.is_inference_mode_enabled(), [w._version for w in weights]
        made_mode, made_versions, made_weights = self._made_from
        if mode != made_mode or versions != made_versions or not all(map(operator.is_, weights, made_weights)):
            self._generation, self._made_from = self._generation + 1, (mode, versions, weights)
        return self._generation

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
