"""Fine-tuning at real size: a LoRA training step and a QLoRA + activation-checkpointing step, modify vs PEFT.

Each side runs in a fresh subprocess (``python -m benchmarks.finetune --child SIDE``) that imports
every library (torch, transformers, PEFT, bitsandbytes, torchao, modify), warms them up on a tiny
model, resets the peak resident memory to the current one (Linux's ``/proc/self/clear_refs``) and
records it (``VmHWM`` of ``/proc/self/status``) as the baseline; then it builds or loads the model, makes the adapters
and an AdamW over them, and runs one warm-up and ``STEPS`` timed training steps (forward,
cross-entropy, backward, optimizer step; 2 for GPT-2, while the Llama's first step is timed). Peak
RSS growth covers the weights, the activations and the optimizer state; the step time is the median
of the timed steps (wall time) and of their CPU time (``process_time``). GPT-2's two sides run at
once, one thread each, in ``GPT2_ROUNDS`` rounds (each process needs its own peak, so they cannot
interleave in one): both see the same load, and their CPU-time ratio, the median over rounds, is
not decided by load drift; the Llama's three sides run at once too, one thread each, one step each (bf16 matrix products
are slow on a CPU without bf16 units: a step takes minutes), timed whole.

- ``gpt2``: GPT-2 124M shape (12 layers, width 768, vocabulary 50257), random float32 weights,
  batch 4 x 128, LoRA rank 8 (alpha 16) on ``c_attn``/``c_proj``/``c_fc``, no dropout:
  ``modify.lora`` on ``modify.models.GPT`` vs ``get_peft_model`` on ``GPT2LMHeadModel``.
- ``llama``: a Llama-shaped bf16 folder of 0.2B parameters (12 layers, hidden 1024, GQA 16/8,
  intermediate 2816, vocabulary 32000) written here; batch 2 x 256, rank 16 (alpha 32) on all 7
  projections of every layer, activation checkpointing on every layer. modify:
  ``Llama.from_pretrained(..., quantize="nf4")`` (torchao NF4), ``lora``, ``checkpoint_activations``;
  ``modify-qlora-chunked`` computes the loss with ``modify.functional.chunked_cross_entropy``
  (the head 128 positions at a time: the whole logits never exist).
  PEFT: ``LlamaForCausalLM.from_pretrained`` in bf16 (``peft-bf16``) or with bitsandbytes'
  4-bit NF4, double quantization, bf16 compute (``peft-qlora``), each with
  ``gradient_checkpointing_enable(use_reentrant=False)`` and ``get_peft_model``
  (``prepare_model_for_kbit_training`` is left out: it upcasts the embeddings and norms to float32,
  which only adds memory to PEFT's side).
- ``load``: ``Llama.from_pretrained`` of that folder to the first logits, bf16 vs
  ``quantize="nf4"`` (peak RSS: the quantized copy plus the float layer being read).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

FOLDER = Path("build") / "finetune" / "llama-200m"
GPT2_ROUNDS = 3  # rounds of the two GPT-2 sides at once (1 with --quick)
STEPS = {"gpt2": 2, "llama": 0}  # timed steps after the first; 0: the first step is timed (minutes long)
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)
LLAMA = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
    num_key_value_heads=8, max_position_embeddings=2048,
)  # fmt: skip
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIDES = {
    "gpt2": ("modify-lora", "peft-lora"),
    "llama": ("modify-qlora", "modify-qlora-chunked", "peft-bf16", "peft-qlora"),
    "load": ("load-bf16", "load-nf4"),
}


def make_llama(folder: Path) -> Path:
    """A random bf16 Llama-shaped folder of the ~0.2B sizes above, tensor by tensor."""
    from .loading import make_bf16_llama

    return make_bf16_llama(folder, LLAMA)


def gpt2_model(side: str):
    """The adapted GPT-2-shaped model of ``side`` (the base frozen), and a function of ids to logits."""
    import transformers
    from peft import LoraConfig, get_peft_model

    import modify
    from modify.models import GPT, GPTConfig

    if side == "modify-lora":
        base = GPT(GPTConfig(block_size=1024, **GPT2)).requires_grad_(False)
        model = modify.lora(base, 8, 16.0, where=lambda path, m: path.endswith(("c_attn", "c_proj", "c_fc")))
        return model.train(), modify.lora_parameters(model), model
    config = transformers.GPT2Config(**GPT2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    model = get_peft_model(transformers.GPT2LMHeadModel(config), lora).train()
    return model, [p for p in model.parameters() if p.requires_grad], lambda ids: model(input_ids=ids).logits


def llama_model(side: str, folder: str):
    """The adapted, checkpointed Llama of ``side``, its trainable parameters and ids -> logits."""
    import transformers
    from peft import LoraConfig, get_peft_model

    import modify
    from modify.models import Llama

    if side.startswith("modify-qlora"):
        base = Llama.from_pretrained(folder, dtype=torch.bfloat16, quantize="nf4").requires_grad_(False)
        adapted = modify.lora(base, 16, 32.0, where=(modify.Linear, "model.layers.*"))
        model = modify.checkpoint_activations(adapted, where="model.layers.*").train()
        if side == "modify-qlora-chunked":  # the head and loss 128 positions at a time: no whole logits
            def loss_of(ids, targets):
                return modify.functional.chunked_cross_entropy(model.model(ids), model.lm_head, targets, chunk=128)

            return model, modify.lora_parameters(model), loss_of
        return model, modify.lora_parameters(model), plain_loss(model)
    quantization = None
    if side == "peft-qlora":
        quantization = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
    hf = transformers.LlamaForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, quantization_config=quantization, device_map="cpu" if quantization else None
    )
    hf.config.use_cache = False
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, target_modules=PROJECTIONS)).train()
    return model, [p for p in model.parameters() if p.requires_grad], plain_loss(lambda ids: model(input_ids=ids).logits)


def plain_loss(logits_of):
    """``(ids, targets) ->`` the float32 cross-entropy of the whole logits (as ``transformers``' loss)."""

    def loss_of(ids, targets):
        logits = logits_of(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    return loss_of


def peak_kib() -> int:
    """The peak resident size since the last reset (``VmHWM``; ``ru_maxrss`` keeps the parent's size after exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def warm_up() -> None:
    """First calls of every library on a tiny model, so their lazy imports are in the baseline."""
    import transformers

    import modify
    from modify.models import GPT, GPTConfig

    ids = torch.randint(0, 64, (1, 8))
    tiny = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=64))
    modify.lora(modify.quantize(tiny), 2)(ids).sum().backward()
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=8)
    transformers.GPT2LMHeadModel(config)(ids).logits.sum().backward()
    import bitsandbytes  # noqa: F401  (imported by PEFT's QLoRA path)


def load_child(side: str, folder: str, baseline: int) -> None:
    """``Llama.from_pretrained`` in bf16, plain or quantized while loading, to the first logits."""
    from modify.models import Llama

    start = time.perf_counter()
    model = Llama.from_pretrained(folder, dtype=torch.bfloat16, quantize="nf4" if side == "load-nf4" else None)
    with torch.no_grad():
        model(torch.randint(0, 100, (1, 8)))
    peak = peak_kib() - baseline
    print(json.dumps({"step_s": time.perf_counter() - start, "peak_mib": peak / 1024}))


def child(side: str, folder: str) -> None:
    """One side in this process: prints ``{"step_s": ..., "peak_mib": ...}``."""
    warnings.simplefilter("ignore")
    warm_up()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak restarts from the current RSS
    baseline = peak_kib()
    torch.manual_seed(0)
    if side in SIDES["load"]:
        return load_child(side, folder, baseline)
    if side in SIDES["gpt2"]:
        model, trainable, logits_of = gpt2_model(side)
        loss_of = plain_loss(logits_of)
        vocab, shape, steps = GPT2["vocab_size"], (4, 129), STEPS["gpt2"]
    else:
        model, trainable, loss_of = llama_model(side, folder)
        vocab, shape, steps = LLAMA["vocab_size"], (2, 257), STEPS["llama"]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    tokens = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(1))
    times, cpu_times = [], []
    for _ in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_of(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    times, cpu_times = times[1:] or times, cpu_times[1:] or cpu_times
    peak = peak_kib() - baseline
    trainable_count = sum(p.numel() for p in trainable)
    print(json.dumps({"step_s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
                      "peak_mib": peak / 1024, "trainable": trainable_count, "loss": loss.item()}))  # fmt: skip


def measure(side: str, folder: Path) -> dict:
    return measure_together([side], folder)[0]


def measure_together(sides: list[str], folder: Path, threads: int | None = None) -> list[dict]:
    """Each side in its own subprocess, all at once (so they share the machine's load alike)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    children = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.finetune", "--child", side, str(folder)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for side in sides
    ]  # fmt: skip
    results = []
    for side, process in zip(sides, children):
        out, err = process.communicate()
        if process.returncode:
            raise RuntimeError(f"{side} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {side}: {results[-1]}", file=sys.stderr, flush=True)
    return results


def gpt2_lines(quick: bool) -> list[str]:
    """The LoRA step's table: both sides at once, one thread each, per round; medians over rounds."""
    rounds = [measure_together(list(SIDES["gpt2"]), FOLDER, threads=1) for _ in range(1 if quick else GPT2_ROUNDS)]

    def median(key: str, side: int) -> float:
        return statistics.median(r[side][key] for r in rounds)

    def ratio(key: str) -> float:
        return statistics.median(ours[key] / peft[key] for ours, peft in rounds)

    return [
        f"GPT-2 124M shape, float32, batch 4 x 128, LoRA r=8 on c_attn/c_proj/c_fc; both sides at once, one thread "
        f"each, medians of {len(rounds)} round(s):",
        "| | modify.lora | PEFT LoRA | ratio | target |",
        "|---|---|---|---|---|",
        f"| training step, CPU time | {median('cpu_s', 0):.2f} s | {median('cpu_s', 1):.2f} s | {ratio('cpu_s'):.2f} | <= 0.75 |",
        f"| training step, wall time | {median('step_s', 0):.2f} s | {median('step_s', 1):.2f} s | {ratio('step_s'):.2f} | - |",
        f"| peak RSS growth | {median('peak_mib', 0):.0f} MiB | {median('peak_mib', 1):.0f} MiB | "
        f"{ratio('peak_mib'):.2f} | <= 0.75 |",
        "",
    ]


def run(quick: bool = False, cases: tuple[str, ...] = tuple(SIDES), sides: list[str] = list(SIDES["llama"])) -> str:
    """Each case's sides once (``sides``: the Llama case's, PEFT's two always), then the ratios against PEFT."""
    sides = [side for side in sides if not side.startswith("peft")] + ["peft-bf16", "peft-qlora"]
    lines = []
    if "gpt2" in cases:
        lines += gpt2_lines(quick)
    if "llama" in cases:
        folder = make_llama(FOLDER)
        ran = dict(zip(sides, measure_together(sides, folder, threads=1)))
        bf16, qlora = ran["peft-bf16"], ran["peft-qlora"]
        lines += [
            "Llama-shaped 0.2B bf16 folder, batch 2 x 256, r=16 on all 7 projections, activation checkpointing:",
            "| | peak RSS growth | vs PEFT bf16 | vs PEFT QLoRA | training step | vs PEFT QLoRA |",
            "|---|---|---|---|---|---|",
        ]
        for side in sides:
            name, side = side, ran[side]
            lines.append(
                f"| {name} | {side['peak_mib']:.0f} MiB | {side['peak_mib'] / bf16['peak_mib']:.2f} | "
                f"{side['peak_mib'] / qlora['peak_mib']:.2f} | {side['cpu_s']:.0f} s | {side['cpu_s'] / qlora['cpu_s']:.2f} |"
            )
    if "load" in cases:
        folder = make_llama(FOLDER)
        plain, nf4 = (measure(side, folder) for side in SIDES["load"])
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
        lines += [
            "",
            f"Llama.from_pretrained of the same folder ({size:.0f} MiB bf16) to the first logits:",
            "| | dtype=bf16 | quantize=\"nf4\" | ratio |",
            "|---|---|---|---|",
            f"| peak RSS growth | {plain['peak_mib']:.0f} MiB | {nf4['peak_mib']:.0f} MiB | {nf4['peak_mib'] / plain['peak_mib']:.2f} |",
            f"| wall time | {plain['step_s']:.2f} s | {nf4['step_s']:.2f} s | {nf4['step_s'] / plain['step_s']:.2f} |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--case", nargs="+", choices=tuple(SIDES), default=tuple(SIDES))
    parser.add_argument("--sides", nargs="+", choices=SIDES["llama"], default=list(SIDES["llama"]),
                        help="the Llama case's sides (PEFT's two always run)")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
    else:
        from .timing import machine

        print(f"machine: {machine()}")
        print(run(cases=tuple(args.case), sides=args.sides))
