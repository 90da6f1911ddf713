"""Where a QLoRA training step's peak memory goes: resident memory around each phase of one step.

    python -m benchmarks.qlora_breakdown [--layers 2] [--chunked]

A fresh subprocess loads a Llama-shaped bf16 folder of the fine-tuning benchmark's widths
(``benchmarks.finetune.LLAMA``; ``--layers`` of them, 2 by default, as the step's extra memory
beside the weights does not grow with depth under checkpointing) with ``quantize="nf4"``, adds
rank-16 LoRA on the 7 projections and checkpoints every layer, then runs one step of batch
2 x 256 phase by phase: forward to the logits, float32 cross-entropy, backward, AdamW step
(``--chunked``: the hidden states, then ``modify.functional.chunked_cross_entropy`` as the loss).
Before each phase the peak is reset (Linux ``/proc/self/clear_refs``); after it, the phase's peak
(``VmHWM``) and the resident and anonymous sizes (``VmRSS``, ``RssAnon``) are printed in MiB
above the baseline taken before loading.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .finetune import FOLDER, LLAMA


def status_mib() -> dict[str, float]:
    fields = ("VmHWM", "VmRSS", "RssAnon")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines if line.split(":")[0] in fields}


def child(folder: str, chunked: bool) -> None:
    import modify
    from modify.models import Llama

    from .finetune import warm_up

    warnings.simplefilter("ignore")
    warm_up()
    rows, base = [], None

    def phase(name, run):
        nonlocal base
        Path("/proc/self/clear_refs").write_text("5")
        base = base or status_mib()
        result = run()
        now = status_mib()
        rows.append({"phase": name, **{k: round(v - base[k if k != "VmHWM" else "VmRSS"], 1) for k, v in now.items()}})
        return result

    model = phase("load", lambda: Llama.from_pretrained(folder, dtype=torch.bfloat16, quantize="nf4").requires_grad_(False))
    adapted = modify.lora(model, 16, 32.0, where=(modify.Linear, "model.layers.*"))
    train = modify.checkpoint_activations(adapted, where="model.layers.*").train()
    optimizer = torch.optim.AdamW(modify.lora_parameters(train), lr=1e-4)
    tokens = torch.randint(0, LLAMA["vocab_size"], (2, 257), generator=torch.Generator().manual_seed(1))
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    if chunked:
        hidden = phase("forward (hidden)", lambda: train.model(ids))
        loss = phase("chunked loss", lambda: modify.functional.chunked_cross_entropy(hidden, train.lm_head, targets, chunk=128))
    else:
        logits = phase("forward (logits)", lambda: train(ids))
        loss = phase("loss", lambda: F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)))
    phase("backward", loss.backward)
    phase("optimizer step", optimizer.step)
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.qlora_breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--child", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.chunked)
    from .loading import make_bf16_llama

    folder = make_bf16_llama(FOLDER.with_name(f"llama-{args.layers}-layers"), {**LLAMA, "num_hidden_layers": args.layers})
    command = [sys.executable, "-m", "benchmarks.qlora_breakdown", "--child", str(folder)] + ["--chunked"] * args.chunked
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print("| phase | peak over baseline | resident after | anonymous after |\n|---|---|---|---|")
    for row in json.loads(out.strip().splitlines()[-1]):
        print(f"| {row['phase']} | {row['VmHWM']:.0f} MiB | {row['VmRSS']:.0f} MiB | {row['RssAnon']:.0f} MiB |")


if __name__ == "__main__":
    main()
