"""Run the benchmarks and print their tables: ``python -m benchmarks [--quick]`` (or ``make bench``).

1. overhead: modify GPT vs plain-torch GPT-2, eager (as built and fused) and compiled.
2. lora: ``modify.lora`` vs Hugging Face PEFT, each relative to its own base.
3. functional: ``modify.functional_call`` / ``modify.flat`` vs ``torch.func.functional_call``.
4. rewrite: ``select`` / ``rewrite`` / ``lora`` on 10,000 leaves, and the memory of a sibling.
5. loading: ``from_pretrained`` of real-size checkpoints (GPT-2 124M, a 0.85B bf16 Llama) vs transformers.
6. mixed: ``modify.MixedLoRA`` vs PEFT's mixed-adapter batch (``adapter_names=``), 4 adapters.
7. convert: a ``modify.convert``-ed plain-torch nanoGPT vs the original, eager training step.
8. generate: decoding 100 tokens through the key/value-cache sibling vs transformers' ``generate``.
9. convert_transformers: ``modify.convert`` of transformers' GPT-2 124M (time) and GPT-2/Llama training steps.
10. finetune: a LoRA step at GPT-2 124M shape and a QLoRA + activation-checkpointing step vs PEFT.
11. padded: decoding a batch of 8 left-padded prompts with ``attention_mask`` vs transformers' ``generate``.
12. instructions: CPU instructions per training step (valgrind), modify GPT vs plain-torch GPT-2.

Ratios are measured in one process, the sides interleaved, medians over rounds; see
``benchmarks/timing.py``. Never used as assertions in tests. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from . import (
    convert, convert_transformers, finetune, functional, generate, instructions, loading, lora, overhead, rewrite_cost, timing,
)
from .timing import machine

BENCHMARKS = {
    "overhead": ("1. Overhead of the algebra: training step, modify GPT vs plain-torch GPT-2", overhead.run),
    "lora": ("2. LoRA: slowdown over its own base, modify.lora vs PEFT", lora.run),
    "functional": ("3. Functional calls, per call", functional.run),
    "rewrite": ("4. Rewrite cost and sibling memory", rewrite_cost.run),
    "loading": ("5. Loading checkpoints: from_pretrained to first logits, modify vs transformers", loading.run),
    "mixed": ("6. Mixed-adapter batches: modify.MixedLoRA vs PEFT's adapter_names=", lora.run_mixed),
    "convert": ("7. modify.convert: converted nanoGPT vs the original, eager training step", convert.run),
    "generate": ("8. Decoding 100 tokens, one thread: modify vs transformers", generate.run),
    "convert_transformers": ("9. modify.convert of transformers models: convert time, eager training step", convert_transformers.run),
    "finetune": ("10. Fine-tuning at real size: LoRA and QLoRA training steps vs PEFT", finetune.run),
    "padded": ("11. Decoding 8 left-padded prompts, 100 tokens, one thread: modify vs transformers", generate.run_padded),
    "instructions": ("12. Instructions per training step (callgrind): modify GPT vs plain-torch GPT-2", instructions.run),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds; skip compiling the larger model")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--cpu-time", action="store_true", help="time this thread's CPU time (use with --threads 1)")
    args = parser.parse_args()
    if args.cpu_time:
        timing.CLOCK = time.thread_time
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.cwd() / "build" / "inductor-cache"))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) / 2:
        print("warning: other processes are using the CPU; timings (ratios less so) will be noisy")
    flags = (" --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads else "")
    print(f"command: python -m benchmarks{flags}{' --cpu-time' if args.cpu_time else ''}")
    for name in args.only or BENCHMARKS:
        title, run = BENCHMARKS[name]
        start = time.perf_counter()
        result = run(args.quick)
        print(f"\n{title} ({time.perf_counter() - start:.0f} s)\n\n{result}", flush=True)


if __name__ == "__main__":
    main()
