"""12. Instructions per training step: modify GPT against plain torch, counted by valgrind (callgrind).

The overhead benchmark times steps; on this kind of machine where a model's tensors lie moves a
step by a few percent (its A/A row), as much as the gap it measures. The number of instructions a
step executes does not move: callgrind counts them exactly, the same to 0.05% run to run. A count
is work done, not time (cache misses and memory stalls are not in it), so it says whether ours
does more than plain torch, not whether it is slower.

Each side runs in its own valgrind process (``torch.utils.benchmark.Timer.collect_callgrind``),
about 50 times slower than native; its setup loads one random GPT-2 state, written here to a
safetensors file, into the same models as the overhead benchmark, and runs warm-up steps before
callgrind starts counting. The count is ``denoise``-d (CPython's dictionary lookups dropped, as
torch's docs advise). Needs ``valgrind`` on the PATH (``apt-get install valgrind``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from torch.utils.benchmark import Timer

from .overhead import SIZES, Size, hf_state
from .timing import table

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5  # counted steps per side, after WARMUP uncounted ones
WARMUP = 10
SIDES = ("plain torch", "modify, as built", "modify, fused")

SETUP = """
import sys
sys.path.insert(0, {root!r})
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
import modify
from modify.models import GPT
from benchmarks.reference_gpt import ReferenceConfig, ReferenceGPT
torch.set_num_threads(1)
state, config = load_file({state!r}), {config!r}
side = {side!r}
if side == "plain torch":
    model = ReferenceGPT(ReferenceConfig(**config)).load_hf_state_dict(state)
else:
    model = GPT.from_pretrained(state, **config)
    model = modify.fuse(model) if side == "modify, fused" else model
model.train()
tokens = torch.randint(0, config["vocab_size"], ({batch}, {seq} + 1), generator=torch.Generator().manual_seed(1))
x, y = tokens[:, :-1], tokens[:, 1:].reshape(-1)
for _ in range({warmup}):
    F.cross_entropy(model(x).view(-1, config["vocab_size"]), y).backward()
"""
STEP = 'F.cross_entropy(model(x).view(-1, config["vocab_size"]), y).backward()'


def instructions(size: Size, side: str, state_file: str) -> float:
    """Instructions per training step of one side, counted by callgrind in a child process."""
    setup = SETUP.format(root=str(ROOT), state=state_file, config=size.config(), side=side,
                         batch=size.batch, seq=size.seq, warmup=WARMUP)  # fmt: skip
    stats = Timer(STEP, setup=setup).collect_callgrind(number=STEPS, collect_baseline=False)
    return stats.counts(denoise=True) / STEPS


def run(quick: bool) -> str:
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind): nothing counted."
    # collect_callgrind starts "python" from the PATH: make it this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    rows = []
    for size in SIZES[:1] if quick else SIZES:
        with tempfile.TemporaryDirectory() as folder:
            state_file = str(Path(folder) / "gpt2.safetensors")
            save_file({k: v.clone() for k, v in hf_state(size).items()}, state_file)  # tied weights apart
            counts = {side: instructions(size, side, state_file) for side in SIDES}
        plain = counts["plain torch"]
        rows += [[size.name, side, f"{n / 1e6:.2f} M", f"{n / plain:.3f}x"] for side, n in counts.items()]
    return table(["size", "training step", "instructions", "ratio to plain torch"], rows)
