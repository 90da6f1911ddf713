"""1. Overhead of the algebra: ``modify.models.GPT`` against a plain-torch GPT-2 of the same size and weights.

Both load one random ``GPT2LMHeadModel`` initialisation; each training step is forward + cross
entropy + backward, eager (as built, and after :func:`modify.fuse`) and compiled with the default
inductor backend; the guards dynamo checks on every compiled call are counted too, and so are
the aten ops of an eager step (the copies among them: a copy the reference does not make is
time that no Python saving can win back). Two sizes,
where Python overhead shows: a tiny one (2 layers, width 64) and 4 layers of width 128
(vocabulary 512, batch 4 x 64), the configuration of issue 14.

Each side is ``COPIES`` deep copies of its model, and its calls cycle through them. Where a
model's tensors lie in memory moves its step time by a few percent (a deep copy of the plain model
timed against the model itself read 0.964x to 1.010x over three runs of 15 rounds), so one copy
per side measures its placement as much as its code. A second set of copies of the plain model is
timed as a side of its own: its ratio, "plain torch (A/A)", is the noise floor of the run.
"""

from __future__ import annotations

import collections
import copy
import itertools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import modify
from modify.models import GPT

from .reference_gpt import ReferenceConfig, ReferenceGPT
from .timing import compare, table, us


@dataclass
class Size:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    batch: int
    seq: int

    def config(self) -> dict:
        fields = ("n_layer", "n_head", "n_embd", "vocab_size")
        return dict(block_size=self.seq, **{f: getattr(self, f) for f in fields})


# Issue 21's targets (one thread, CPU time): the ratio to plain torch, by size and mode.
TARGETS = {
    ("tiny", "as built"): 1.02, ("tiny", "fused"): 1.00, ("tiny", "compiled"): 1.00,
    ("4x128", "as built"): 1.01, ("4x128", "fused"): 1.01, ("4x128", "compiled"): 1.00,
}

COPIES = 4  # of each side's model, cycled through by its calls
LABELS = {"A/A": "plain torch (A/A)"}

SIZES = (
    Size("tiny", n_layer=2, n_head=4, n_embd=64, vocab_size=512, batch=4, seq=32),
    Size("4x128", n_layer=4, n_head=4, n_embd=128, vocab_size=512, batch=4, seq=64),
)


def hf_state(size: Size) -> dict[str, torch.Tensor]:
    """A random ``GPT2LMHeadModel`` state_dict (dropout off), seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_positions=size.seq, vocab_size=size.vocab_size, n_layer=size.n_layer, n_head=size.n_head,
        n_embd=size.n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config).state_dict()


def models(size: Size) -> tuple[nn.Module, nn.Module]:
    """The reference and ours, same weights, training mode; outputs checked equal."""
    state = hf_state(size)
    reference = ReferenceGPT(ReferenceConfig(**size.config())).load_hf_state_dict(state).train()
    ours = GPT.from_pretrained(state, **size.config()).train()
    x = torch.randint(0, size.vocab_size, (size.batch, size.seq))
    with torch.no_grad():
        error = (reference(x) - ours(x)).abs().max().item()
    if error > 1e-4:
        raise RuntimeError(f"overhead benchmark: modify GPT and the reference differ by {error}")
    return reference, ours


def training_step(model: nn.Module | list[nn.Module], size: Size):
    """Forward, cross entropy and backward on a fixed batch (gradients accumulate, as both sides do).

    Given a list of models, each call uses the next one, in turn.
    """
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, size.vocab_size, (size.batch, size.seq + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    turns = itertools.cycle(model if isinstance(model, list) else [model])

    def step():
        F.cross_entropy(next(turns)(x).view(-1, size.vocab_size), y).backward()

    return step


def copies(model: nn.Module) -> list[nn.Module]:
    """``model`` and ``COPIES - 1`` deep copies of it (the same values, tensors elsewhere in memory)."""
    return [model, *(copy.deepcopy(model) for _ in range(COPIES - 1))]


def guards(model: nn.Module, size: Size) -> int:
    """How many guards dynamo checks before reusing ``model``'s compiled forward (``torch._dynamo.explain``)."""
    torch._dynamo.reset()
    x = torch.randint(0, size.vocab_size, (size.batch, size.seq))
    return len(torch._dynamo.explain(model)(x).out_guards)


class AtenOps(TorchDispatchMode):
    """Counts the aten ops that run under it, forward and backward, by name."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


COPYING_OPS = ("clone", "copy_", "cat", "stack", "contiguous")


def aten_ops(model: nn.Module, size: Size) -> str:
    """Aten ops in one training step of ``model``, with the copies among them (``COPYING_OPS``)."""
    step = training_step(model, size)
    for _ in range(2):  # a modify model runs as one written function from its third call
        step()
    with AtenOps() as ops:
        step()
    copies = sum(ops.counts[name] for name in COPYING_OPS)
    return f"{sum(ops.counts.values())} ({copies} copies)"


def run(quick: bool) -> str:
    rows, counts, ops = [], [], []
    rounds = 15 if quick else 60
    for size in SIZES:
        reference, ours = models(size)
        number = 4
        built = {"reference": reference, "A/A": copy.deepcopy(reference), "as built": ours, "fused": modify.fuse(ours)}
        sides = {name: copies(model) for name, model in built.items()}
        timing = compare({k: training_step(m, size) for k, m in sides.items()}, rounds, number)
        for name in ("A/A", "as built", "fused"):
            rows.append(_row(size, f"eager, {LABELS.get(name, name)}", timing, name, TARGETS.get((size.name, name))))
        if quick and size.name != "tiny":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # inductor's own torch.jit use
            compiled = {k: [torch.compile(m) for m in sides[k]] for k in ("reference", "A/A", "as built")}
            timing = compare({k: training_step(m, size) for k, m in compiled.items()}, rounds, number, warmup=3 * COPIES)
        for name in ("A/A", "as built"):
            target = TARGETS.get((size.name, "compiled")) if name == "as built" else None
            rows.append(_row(size, f"compiled (inductor), {LABELS.get(name, name)}", timing, name, target))
        counts.append(f"{size.name}: plain torch {guards(reference, size)}, modify {guards(ours, size)}")
        ops.append(f"{size.name}: plain torch {aten_ops(reference, size)}, modify {aten_ops(ours, size)}")
    headers = ["size", "modify GPT", "plain torch", "modify", "ratio", "target", "met"]
    return (f"{table(headers, rows)}\n\nDynamo guards per compiled forward: {'; '.join(counts)}.\n\n"
            f"Aten ops per eager training step (forward, loss, backward): {'; '.join(ops)}.")


def _row(size: Size, mode: str, timing, name: str, target: float | None) -> list:
    ratio = timing.ratio(name, "reference")
    met = "-" if target is None else "yes" if ratio <= target else "no"
    target_text = "noise floor" if target is None else f"<= {target:.2f}x"
    return [size.name, mode, us(timing.seconds("reference")), us(timing.seconds(name)), f"{ratio:.3f}x", target_text, met]
