"""Sampling from a language model, nanoGPT style, with or without a key/value cache."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Iterable

import torch
from torch import nn

from .._core.arguments import typechecked
from .._core.checks import set_checks
from ..rewriting.selection import select
from .cache import kv_cache, reset_cache
from .cached_positions import LastPosition
from .decoding_head import decoding_head
from .gpt import GPT
from .llama import Llama

# The compiled decode step's inductor options on the CPU (measured there): no per-call size and
# alignment asserts on its ~70 inputs, and a C++ wrapper instead of a Python one (about 0.4 ms less
# a step, docs/benchmarks.md section 11).
CPU_COMPILE_OPTIONS = {"size_asserts": False, "alignment_asserts": False, "cpp_wrapper": True}


@typechecked
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    *,
    use_cache: bool = True,
    block_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    attention_mask: torch.Tensor | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after ``idx``, one at a time (nanoGPT's ``generate``).

    Each step takes the logits of the last position, divides them by ``temperature``, keeps the
    ``top_k`` largest, and samples from the softmax (``top_k=1`` takes the argmax, greedy
    decoding, and draws nothing from ``generator``). The output head sees the last position
    only (as nanoGPT's inference path); a plain float32 ``Linear`` head on the CPU runs as a
    :class:`~modify.models.DecodingHead` (the same weight, multiplied in a faster layout; its
    logits equal the head's up to float rounding, so greedy tokens could differ only on a
    near-tie). With ``use_cache`` (the default) the model
    runs through its :func:`~modify.models.kv_cache` sibling (shared weights, cached keys and
    values): the prompt once, then one new position per step, as Hugging Face's ``generate``.
    Without, every step re-runs the whole context, as nanoGPT. Either way the model sees at
    most the last ``block_size`` tokens: once the cache is full it is refilled from the last
    ``block_size`` tokens (nanoGPT's crop), so both give the same logits. Steps run under
    ``torch.inference_mode()`` (the result is an ordinary tensor); the model's mode is left as
    is, so call ``model.eval()`` first to turn dropout off. ``model`` itself is never changed.

    Prompts of different lengths share a batch left-padded, with ``attention_mask`` (1 for a
    token, 0 for padding, as transformers): the model then sees ``(ids, mask)``, every new token
    extends the mask with a 1, and each row's positions count its tokens only, so greedy tokens
    equal transformers' ``generate(idx, attention_mask=mask, do_sample=False)``. With ``compile``
    the one-position decode step runs through ``torch.compile`` over a static cache of
    ``T + max_new_tokens`` positions (at most ``block_size``): every step has the same shapes, so
    one graph serves them all (same tokens; the first call pays the compilation); greedy decoding
    takes its argmax inside that graph.

    Args:
        model: a language model from ``(B, T)`` ids to ``(B, T, vocab)`` logits: a :class:`GPT`
            or :class:`~modify.models.Llama`, or any sibling or wrapper of one (with
            ``use_cache``, a causal decoder built from modify leaves; see ``kv_cache``).
        idx: ``(B, T)`` integer prompt ids, ``B, T >= 1`` (a batch of equal-length prompts).
        max_new_tokens: tokens to add (``>= 0``).
        temperature: softmax temperature, finite and ``> 0``; lower is greedier.
        top_k: sample among the ``top_k`` most likely tokens only (``None``: all; ``1``: greedy).
        use_cache: decode through the key/value-cache sibling (``True``) or re-run the context.
        block_size: the longest context the model takes; default ``model.config.block_size``
            (GPT) or ``model.config.max_position_embeddings`` (Llama). Required for other models.
        generator: a ``torch.Generator`` for reproducible samples.
        progress: wraps the range of steps to show progress, e.g. ``tqdm.tqdm`` or
            ``functools.partial(tqdm.tqdm, desc="sampling")``.
        attention_mask: ``(B, T)`` bool or integer, 1 for a token and 0 for padding, the padding
            on the left of each row (``None``: no padding).
        compile: run the cached decode step through ``torch.compile``, over a static cache (with
            ``use_cache``).

    Shape:
        ``idx``: ``(B, T)`` -> ``(B, T + max_new_tokens)``.

    Returns:
        ``(B, T + max_new_tokens)`` int64: ``idx`` followed by the sampled tokens.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a ``temperature`` that is not finite and ``> 0``, ``top_k < 1``,
            ``max_new_tokens < 0``, an ``idx`` that is not ``(B, T)`` integers with ``B, T >= 1``
            or (for a GPT or Llama) holds ids outside ``[0, vocab_size)``, no known ``block_size``;
            with ``use_cache``, a model without causal attention; an ``attention_mask`` not of
            ``idx``'s shape, not bool or integer, or padded on the right (naming the rows), or a
            row without a token.

    Example:
        >>> import torch
        >>> from modify.models import GPT, GPTConfig, generate
        >>> gpt = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=16)).eval()
        >>> prompt = torch.zeros(2, 1, dtype=torch.long)
        >>> fast = generate(gpt, prompt, 12, top_k=1)
        >>> fast.shape, torch.equal(fast, generate(gpt, prompt, 12, top_k=1, use_cache=False))
        (torch.Size([2, 13]), True)

        Prompts of lengths 3 and 1, left-padded; each row decodes as it would alone:

        >>> prompts, mask = torch.tensor([[4, 5, 6], [0, 0, 7]]), torch.tensor([[1, 1, 1], [0, 0, 1]])
        >>> padded = generate(gpt, prompts, 4, top_k=1, attention_mask=mask)
        >>> torch.equal(padded[1, 2:], generate(gpt, prompts[1:, 2:], 4, top_k=1)[0])
        True
    """
    block_size = _context_length(model, block_size)
    _check_arguments(idx, max_new_tokens, temperature, top_k)
    _check_ids(model, idx)
    mask = None if attention_mask is None else _check_mask(idx, attention_mask)
    rows, length = idx.shape
    ids = torch.empty(rows, length + max_new_tokens, dtype=torch.long, device=idx.device)  # written step by step
    ids[:, :length] = idx
    if mask is not None:
        mask = torch.cat((mask, mask.new_ones(rows, max_new_tokens)), dim=1)  # every new token is a token
    sample = partial(_sample, temperature=temperature, top_k=top_k, generator=generator)
    with torch.inference_mode():  # as no_grad, without version counters: each step's ops are cheaper
        decoder = _decoder(model, rows, max_new_tokens)
        if use_cache:
            capacity = min(block_size, length + max_new_tokens) if compile else None
            options = (CPU_COMPILE_OPTIONS if idx.device.type == "cpu" else {}) if compile else None
            next_tokens = _cached_tokens(decoder, block_size, sample, top_k == 1, options, capacity)
        else:
            next_tokens = _full_tokens(decoder, block_size, sample)
        for step in range(max_new_tokens) if progress is None else progress(range(max_new_tokens)):
            end = length + step
            ids[:, end : end + 1] = next_tokens(ids[:, :end], None if mask is None else mask[:, :end])
    return ids


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None):
    """``(B, vocab)`` logits -> ``(B, 1)`` ids: greedy for ``top_k=1``, else softmax sampling."""
    if top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


Tokens = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Sample = Callable[[torch.Tensor], torch.Tensor]


def _inputs(ids: torch.Tensor, mask: torch.Tensor | None):
    """The model's input: ``ids``, or ``(ids, mask)`` for a padded batch."""
    return ids if mask is None else (ids, mask)


def _full_tokens(decoder: nn.Module, block_size: int, sample: Sample) -> Tokens:
    """``ids (B, T) -> (B, 1)``, sampled from the last position's logits: nanoGPT's re-run of the context."""
    window = slice(-block_size, None)
    return lambda ids, mask: sample(decoder(_inputs(ids[:, window], None if mask is None else mask[:, window]))[:, -1])


def _decode_step(model: nn.Module, inputs, greedy: bool) -> torch.Tensor:
    """The last position's ``(B, vocab)`` logits, or with ``greedy`` their ``(B, 1)`` argmax (in the
    compiled graph, one pass over the head's transposed output instead of aten's strided argmax)."""
    logits = model(inputs)[:, -1]
    return logits.argmax(dim=-1, keepdim=True) if greedy else logits


def _cached_tokens(
    decoder: nn.Module,
    block_size: int,
    sample: Sample,
    greedy: bool,
    compile_options: dict | None = None,
    capacity: int | None = None,
) -> Tokens:
    """Like :func:`_full_tokens` through a ``kv_cache`` sibling fed only the ids it has not seen.

    Each call's ``ids`` extend the previous call's. When the new ids would overflow
    ``block_size`` cached positions, the cache is emptied and refilled from the last
    ``block_size`` ids, which is what the full re-run sees. One-position steps run with runtime
    checks off (the prompt's call checked every leaf, and ``generate`` checked the ids); with
    ``compile_options`` (inductor's; ``None``: eager) they run through ``torch.compile`` (the
    prompt runs eagerly), the cache static (``capacity`` positions) and its offsets symbolic
    integers, so all steps share one graph; a ``greedy`` ``sample`` (``top_k=1``) is its last op.
    """
    sibling = kv_cache(decoder, capacity=capacity)
    compile = compile_options is not None
    step = torch.compile(_decode_step, dynamic=True, options=compile_options) if compile else None
    seen = cached = 0  # ids consumed so far; positions in the cache

    def next_tokens(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        nonlocal seen, cached
        start = seen
        if cached + ids.shape[1] - seen > block_size:
            reset_cache(sibling)
            start, cached = ids.shape[1] - block_size, 0
        new = ids[:, start:]
        seen, cached = ids.shape[1], cached + new.shape[1]
        inputs = _inputs(new, None if mask is None else mask[:, start:])
        if new.shape[1] != 1:
            return sample(sibling(inputs)[:, -1])
        with set_checks(False):  # the prompt's call checked every leaf; a step differs only in length
            if not compile:
                return sample(sibling(inputs)[:, -1])
            with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True):  # offsets: symbolic
                out = step(sibling, inputs, greedy)
            return out if greedy else sample(out)

    return next_tokens


def _decoder(model: nn.Module, rows: int, new_tokens: int) -> nn.Module:
    """A sibling whose output head (a top-level ``lm_head``, as GPT and Llama have) sees only the
    last position, as a :class:`DecodingHead` where that is faster (see :func:`decoding_head`)."""
    if not select(model, "lm_head"):
        return model
    model = select(model, "lm_head").apply(lambda head: decoding_head(head, rows, new_tokens))
    return select(model, "lm_head").insert_before(LastPosition())


def _check_arguments(idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not (math.isfinite(temperature) and temperature > 0) or (top_k is not None and top_k < 1) or max_new_tokens < 0:
        raise ValueError(
            f"generate: needs a finite temperature > 0, top_k >= 1, max_new_tokens >= 0; "
            f"got {temperature}, {top_k}, {max_new_tokens}"
        )
    if idx.dim() != 2 or 0 in idx.shape or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(
            f"generate: idx must be (B, T) integer ids with B, T >= 1, got {tuple(idx.shape)} {idx.dtype}"
        )


def _check_mask(idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as bool after checking it: ``idx``'s shape, bool or integer, padding on the left only."""
    if mask.shape != idx.shape or mask.is_floating_point() or mask.is_complex():
        raise ValueError(
            f"generate: attention_mask must be bool or integer of idx's shape {tuple(idx.shape)}, "
            f"got {tuple(mask.shape)} {mask.dtype}"
        )
    mask = mask.bool()
    right_padded = (mask[:, :-1] & ~mask[:, 1:]).any(dim=1).nonzero().flatten().tolist()
    if right_padded:
        raise ValueError(
            f"generate: attention_mask rows {right_padded} are padded on the right (a 0 after a 1); "
            "pad prompts on the left, where new tokens do not follow padding"
        )
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"generate: attention_mask rows {empty} hold no token")
    return mask


def _check_ids(model: nn.Module, idx: torch.Tensor) -> None:
    """Ids outside a GPT's or Llama's vocabulary: a ``ValueError`` (the embedding's would be a bare IndexError)."""
    if not isinstance(model, (GPT, Llama)):
        return
    vocab_size = model.config.vocab_size
    outside = idx[(idx < 0) | (idx >= vocab_size)]
    if outside.numel():
        raise ValueError(
            f"generate: idx holds ids outside [0, {vocab_size}) for this {type(model).__name__}, "
            f"e.g. {outside[:5].tolist()}"
        )


def _context_length(model: nn.Module, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"generate: block_size must be at least 1, got {block_size}")
        return block_size
    if isinstance(model, GPT):
        return model.config.block_size
    if isinstance(model, Llama):
        return model.config.max_position_embeddings
    raise ValueError(f"generate: pass block_size= for a {type(model).__name__}; only GPT and Llama know theirs")
