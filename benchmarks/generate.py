"""5. Decoding: ``modify.models.generate`` (key/value-cache sibling) against transformers' ``generate``.

One random ``GPT2LMHeadModel`` per size, loaded into ``modify.models.GPT`` with
``from_pretrained(state_dict, ...)``; both decode 100 new tokens greedily (``top_k=1`` /
``do_sample=False``) after a 16-token prompt, batch 1, one thread, sides interleaved. The tokens
are checked equal before timing. ``modify`` decodes eagerly and with ``compile=True`` (a static
cache, one compiled decode step); the compiled side is timed after an untimed warm-up ``generate``
that pays the compilation. ``--quick`` skips the 124M model. :func:`run_padded` decodes a batch of
8 prompts of lengths 4 to 32, left-padded, with ``attention_mask`` on both sides. :func:`head_layouts`
times the output head alone: ``modify.Linear`` (``F.linear``) against the two layouts of the
``DecodingHead`` that ``generate`` decodes through, and the transposed copy it makes for one row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import modify
from modify.models import GPT, DecodingHead, generate

from .timing import Timing, compare, table, us

NEW_TOKENS, PROMPT = 100, 16
TARGET = 0.7
HEADERS = ["transformers", "modify eager", "ratio", "modify compile=True", "ratio", f"target <= {TARGET:.2f}x met"]


@dataclass
class Size:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = 50257
    block_size: int = 1024


SIZES = (Size("4 layers, width 256", 4, 4, 256), Size("GPT-2 small (124M)", 12, 12, 768))


def models(size: Size):
    """The reference ``GPT2LMHeadModel`` and ours with its weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_positions=size.block_size, vocab_size=size.vocab_size, n_layer=size.n_layer, n_head=size.n_head,
        n_embd=size.n_embd, bos_token_id=0, eos_token_id=None,
    )  # fmt: skip
    reference = GPT2LMHeadModel(config).eval()
    fields = dict(block_size=size.block_size, vocab_size=size.vocab_size, n_layer=size.n_layer, n_head=size.n_head)
    ours = GPT.from_pretrained(reference.state_dict(), n_embd=size.n_embd, **fields)
    return reference, ours


def sides(size: Size) -> dict:
    reference, ours = models(size)
    prompt = torch.randint(0, size.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)

    def theirs():
        return reference.generate(prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)

    return _checked({"transformers": theirs, **_ours(ours, prompt)}, size.name)


def _ours(model: GPT, prompt: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """modify's two sides: eager, and ``compile=True`` (the equality check's call compiles it)."""

    def eager():
        return generate(model, prompt, NEW_TOKENS, top_k=1, attention_mask=mask)

    def compiled():
        return generate(model, prompt, NEW_TOKENS, top_k=1, attention_mask=mask, compile=True)

    return {"eager": eager, "compiled": compiled}


def _checked(sides: dict, name: str) -> dict:
    expected = sides["transformers"]()
    for side in ("eager", "compiled"):
        if not torch.equal(sides[side](), expected):
            raise RuntimeError(f"generate benchmark ({name}): modify {side} and transformers decode different tokens")
    return sides


def _row(name: str, timing: Timing) -> list[str]:
    eager, compiled = timing.ratio("eager", "transformers"), timing.ratio("compiled", "transformers")
    met = f"eager {'yes' if eager <= TARGET else 'no'}, compiled {'yes' if compiled <= TARGET else 'no'}"
    seconds = [us(timing.seconds(side)) for side in ("transformers", "eager", "compiled")]
    return [name, seconds[0], seconds[1], f"{eager:.3f}x", seconds[2], f"{compiled:.3f}x", met]


def run(quick: bool) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for size in SIZES[:1] if quick else SIZES:
            timing = compare(sides(size), rounds=5 if size.n_embd < 768 else 3, number=1, warmup=1)
            rows.append(_row(size.name, timing))
    finally:
        torch.set_num_threads(threads)
    return f"{table(['model', *HEADERS], rows)}\n\n{head_layouts()}"


def head_layouts(widths: tuple[int, ...] = (256, 768), batch: tuple[int, ...] = (1, 8)) -> str:
    """The vocabulary product of one decoding step, one thread: ``Linear`` against ``DecodingHead``.

    For each width and number of rows: ``modify.Linear`` (``F.linear``, the weight handed to BLAS
    transposed), ``DecodingHead`` without the copy (``(W x^T)^T``), the product with the copy
    (``x W_t``, the head's path for one row), the time of making the copy (``DecodingHead.of``),
    and after how many one-row steps the copy has paid for itself.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for width in widths:
            head = modify.Linear(width, 50257, bias=False)
            copy = compare({"copy": lambda: DecodingHead.of(head, transposed_copy=True)}, rounds=3, number=1)
            copied, plain = DecodingHead.of(head, transposed_copy=True), DecodingHead.of(head, transposed_copy=False)
            for count in batch:
                x = torch.randn(count, width)
                sides = {"Linear": lambda: head(x), "(W x^T)^T": lambda: plain(x), "x W_t": lambda: x @ copied.weight_t}
                timing = compare(sides, rounds=9, number=3, warmup=1)
                gain = timing.seconds("Linear") - timing.seconds("x W_t")
                pays = f"{copy.seconds('copy') / gain:.0f}" if count == 1 and gain > 0 else "-"
                rows.append([f"{width}", f"{count}", *(us(timing.seconds(side)) for side in sides),
                             us(copy.seconds("copy")) if count == 1 else "-", pays])
    finally:
        torch.set_num_threads(threads)
    headers = ["width", "rows", "Linear", "(W x^T)^T", "x W_t", "copy W_t", "copy pays after (steps)"]
    return table(headers, rows)


PADDED_ROWS = 8


def padded_sides(size: Size) -> dict:
    """8 left-padded prompts of lengths 4, 8, ..., 32, greedy, 100 new tokens, both with the mask."""
    reference, ours = models(size)
    gen = torch.Generator().manual_seed(2)
    lengths = torch.arange(1, PADDED_ROWS + 1) * 4
    mask = (torch.arange(int(lengths.max())) >= int(lengths.max()) - lengths[:, None]).long()
    prompt = torch.randint(1, size.vocab_size, mask.shape, generator=gen) * mask  # pad id 0

    def theirs():
        return reference.generate(
            prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )

    return _checked({"transformers": theirs, **_ours(ours, prompt, mask)}, f"{size.name}, padded")


def run_padded(quick: bool) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for size in SIZES[:1] if quick else SIZES:
            rows.append(_row(size.name, compare(padded_sides(size), rounds=3, number=1, warmup=1)))
    finally:
        torch.set_num_threads(threads)
    return table(["model, 8 left-padded prompts", *HEADERS], rows)
