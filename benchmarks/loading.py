"""Loading real-size checkpoints: ``from_pretrained`` to the first logits, ours vs transformers.

Each load runs in a fresh subprocess (``python -m benchmarks.loading --child ...``) that imports
torch, transformers and modify, warms both libraries up on a tiny model, resets the peak resident
memory to the current one (Linux's ``/proc/self/clear_refs``: the imports' transient peak would
hide a smaller load) and records it (``resource.getrusage``'s ``ru_maxrss``) as the baseline, times
``from_pretrained`` up to the first logits of a ``(1, 8)`` batch. Sides alternate between rounds
(the file is in the page cache for both after the first); figures are medians.

- ``gpt2``: a random GPT-2 small (124M parameters) written by ``GPT2LMHeadModel.save_pretrained``:
  ``GPT.from_pretrained`` vs ``GPT2LMHeadModel.from_pretrained``, float32.
- ``llama-1b``: a random Llama-shaped bf16 folder (16 layers, hidden 2048, GQA 32/8, intermediate
  5632, vocab 32000: 0.85B parameters, 1.7 GB) made here: ``Llama.from_pretrained`` vs
  ``LlamaForCausalLM.from_pretrained``, both with ``dtype=torch.bfloat16``. Target: peak RSS
  growth at most 1.2x the file.

Folders are written once under ``build/loading/``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from huggingface_hub import save_torch_state_dict

from modify.models import GPT, GPTConfig, Llama

FOLDER = Path("build") / "loading"
LLAMA_1B = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=2048,
)  # fmt: skip


def make_gpt2(folder: Path) -> Path:
    """A random GPT-2 small folder, written by transformers."""
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(folder)
    return folder


def make_bf16_llama(folder: Path, sizes: dict = LLAMA_1B) -> Path:
    """A random bf16 Llama-shaped folder of ``sizes`` (default 0.85B parameters), tensor by tensor (no float32 model)."""
    if not (folder / "config.json").exists():
        config = transformers.LlamaConfig(**sizes, dtype="bfloat16")
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
        gen = torch.Generator().manual_seed(0)
        state = {
            k: (torch.ones(s) if "norm" in k else 0.02 * torch.randn(s, generator=gen)).to(torch.bfloat16)
            for k, s in shapes.items()
        }
        folder.mkdir(parents=True, exist_ok=True)
        save_torch_state_dict(state, folder, metadata={"format": "pt"})
        config.save_pretrained(folder)
    return folder


def file_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def child(side: str, case: str, folder: str) -> None:
    """One load in this process: prints ``{"seconds": ..., "peak_mib": ...}``."""
    torch.set_grad_enabled(False)
    ids = torch.randint(0, 1000, (1, 8))
    tiny = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=1000, n_positions=8)
    transformers.GPT2LMHeadModel(tiny).eval()(ids)  # warm-up of both libraries' first calls
    GPT(GPTConfig(block_size=8, vocab_size=1000, n_layer=1, n_head=2, n_embd=32)).eval()(ids)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak restarts from the current RSS
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if case == "gpt2":
        model = GPT.from_pretrained(folder) if side == "modify" else transformers.GPT2LMHeadModel.from_pretrained(folder)
    else:
        dtype = torch.bfloat16
        cls = Llama if side == "modify" else transformers.LlamaForCausalLM
        model = cls.from_pretrained(folder, dtype=dtype)
    loaded = time.perf_counter() - start
    logits = model(ids)
    logits = logits if isinstance(logits, torch.Tensor) else logits.logits
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    print(json.dumps({"seconds": seconds, "load_seconds": loaded, "peak_mib": peak / 1024, "shape": list(logits.shape)}))


def measure(side: str, case: str, folder: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.loading", "--child", side, case, str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {case} {side}: {figures['seconds']:.2f} s, +{figures['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    return figures


def compare(case: str, folder: Path, rounds: int) -> str:
    runs: dict[str, list[dict]] = {"modify": [], "transformers": []}
    for r in range(rounds):
        for side in ("modify", "transformers") if r % 2 == 0 else ("transformers", "modify"):
            runs[side].append(measure(side, case, folder))
    size = file_bytes(folder) / 2**20
    lines = [
        f"{case}: file {size:.0f} MiB, {rounds} round(s), medians (ratios: median of each round's ratio)",
        "| from `from_pretrained` | modify | transformers | ratio |",
        "|---|---|---|---|",
    ]
    for key, title, unit in (("seconds", "to first logits: wall time", "s"), ("peak_mib", "to first logits: peak RSS growth", "MiB"),
                             ("load_seconds", "`from_pretrained` alone: wall time", "s")):  # fmt: skip
        ours, theirs = (statistics.median(run[key] for run in runs[side]) for side in runs)
        ratio = statistics.median(a[key] / max(b[key], 1e-9) for a, b in zip(runs["modify"], runs["transformers"]))
        shown = [f"{v:.0f} MiB ({v / size:.2f}x file)" if unit == "MiB" else f"{v:.2f} s" for v in (ours, theirs)]
        lines.append(f"| {title} | {shown[0]} | {shown[1]} | {ratio:.2f} |")
    return "\n".join(lines)


def run(quick: bool = False, cases: tuple[str, ...] = ("gpt2", "llama-1b")) -> str:
    """Both cases (the 1B one once: it needs ~2 GB per process and minutes to write)."""
    tables = []
    if "gpt2" in cases:
        tables.append(compare("gpt2", make_gpt2(FOLDER / "gpt2"), 1 if quick else 3))
    if "llama-1b" in cases:
        tables.append(compare("llama-1b", make_bf16_llama(FOLDER / "llama-1b"), 1))
    return "\n\n".join(tables)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loading", description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "CASE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--case", nargs="+", choices=("gpt2", "llama-1b"), default=("gpt2", "llama-1b"))
    parser.add_argument("--quick", action="store_true", help="one round of the GPT-2 case")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
    else:
        print(run(args.quick, tuple(args.case)))
