"""Fine-tune a causal language model with LoRA or QLoRA, activation checkpointing and padded batches.

    python examples/finetune.py                                   # a tiny built Llama, the embedded corpus
    python examples/finetune.py --quantize nf4                    # QLoRA: the base in 4-bit NormalFloat
    python examples/finetune.py --checkpoint ./llama --quantize nf4 --text lines.txt --steps 200
    python examples/finetune.py --save-every 10                   # after a crash, the same command with --resume
    python examples/finetune.py --quantize nf4 --loss-chunk 256   # the head and loss 256 positions at a time
    python examples/finetune.py --help                            # every option of Config below

1. Loads a Hugging Face GPT-2 or Llama folder (``--checkpoint``; with ``--quantize nf4`` each
   Linear is quantized as it is read, so memory stays near the 4-bit size) or, without one,
   builds a tiny Llama with random weights.
2. Reads one example per line (``--text``, or the embedded corpus: the Zen of Python and the
   first docstring line of every builtin), holds out every ``holdout``-th line, and tokenizes
   bytes (ids 0..255).
3. Makes the LoRA sibling (``modify.lora``; over the quantized base, QLoRA), and a sibling of it
   that recomputes each transformer block's activations in the backward pass
   (``modify.checkpoint_activations``): they share every parameter, so training one trains both.
4. Trains only the adapters on padded batches of examples of different lengths (loss masked at
   the pads, as ``labels=-100``), with progress bars; prints the held-out loss before and after.
5. Saves the adapters in PEFT's folder format (``modify.save_adapters``) and generates greedily
   from a batch of left-padded prompts.

``--save-every N`` writes the training state to ``<out>/train_state`` every N steps and at the
last one, atomically (``modify.checkpoints.atomic_folder``: a kill at any moment leaves the
previous state whole): the adapters, the optimizer's state, the step, the batch order (the data
position), torch's RNG state and the losses so far. Killed at any step, the same command with
``--resume`` continues from the last state and ends with the very adapters and losses of an
uninterrupted run (bit for bit on the CPU with one thread), with a quantized base too.

References:
    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
    Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314.
    Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174.
    Karpathy, nanoGPT, https://github.com/karpathy/nanoGPT (the training loop).
"""

from __future__ import annotations

import builtins
import codecs
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import modify
from modify.functional import chunked_cross_entropy
from modify.models import GPT, Llama, LlamaConfig, generate

from command_line import non_negative, opt, parse_config, positive, within
from training_state import SavedRun

PROG = "finetune.py"


@dataclass
class Config:
    checkpoint: str = opt("", "a local GPT-2 or Llama Hugging Face folder; '' builds a tiny random Llama")
    text: str = opt("", "a UTF-8 file, one example per line; '' uses the embedded corpus")
    quantize: str = opt("none", "'nf4' (QLoRA), 'int8' or 'none': how the frozen base is stored",
                         choices=("none", "nf4", "int8"))
    rank: int = opt(8, "LoRA rank r on every Linear of the transformer blocks", positive(int))
    alpha: float = opt(16.0, "LoRA scale numerator (scale alpha / r)")
    steps: int = opt(40, "optimizer steps", positive(int))
    batch_size: int = opt(8, "examples per step, padded to the longest", positive(int))
    lr: float = opt(1e-2, "AdamW learning rate of the adapters", positive(float))
    max_len: int = opt(96, "examples are cut to this many bytes", positive(int))
    holdout: int = opt(5, "every holdout-th line is held out for the before/after loss", positive(int))
    prompts: int = opt(4, "held-out lines whose first 8 bytes start the generation batch", positive(int))
    new_tokens: int = opt(24, "tokens generated per prompt", positive(int))
    out: str = opt("build/finetune", "the adapters go to <out>/adapter")
    seed: int = opt(0, "seed of the built model, the adapters and the batches")
    save_every: int = opt(0, "save the training state to <out>/train_state every N steps (0: never)",
                          within(int, 0, what="0 (never) or positive"))
    resume: bool = opt(False, "continue from <out>/train_state, saved by an interrupted run with the same options")
    loss_chunk: int = opt(0, "positions per run of the output head in the loss, so the whole logits never exist "
                             "(modify.functional.chunked_cross_entropy; same loss and gradients); 0: all at once",
                         non_negative(int))


# ----------------------------------------------------------------------------- data


def embedded_lines() -> list[str]:
    """The Zen of Python, then the first docstring line of every builtin: text on every machine."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    zen = codecs.decode(this.s, "rot13").splitlines()[2:]
    docs = [getattr(builtins, name).__doc__ for name in sorted(dir(builtins)) if not name.startswith("_")]
    return zen + [doc.strip().splitlines()[0] for doc in docs if doc and doc.strip()]


def read_lines(config: Config) -> list[str]:
    lines = Path(config.text).read_text(encoding="utf-8").splitlines() if config.text else embedded_lines()
    return [line for line in (raw.strip() for raw in lines) if len(line.encode()) >= 2]


def encode(line: str, max_len: int) -> list[int]:
    return list(line.encode("utf-8"))[:max_len]


def pad_right(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``(B, T)``: rows padded on the right with 0 to the longest; mask 1 at tokens."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def pad_left(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` with the rows padded on the left (prompts for batched generation)."""
    ids, mask = pad_right([row[::-1] for row in rows])
    return ids.flip(1), mask.flip(1)


# ----------------------------------------------------------------------------- model


def load_base(config: Config) -> tuple[torch.nn.Module, str]:
    """The frozen base (quantized if asked) and the glob of its transformer blocks."""
    quantize = None if config.quantize == "none" else config.quantize
    if config.checkpoint:
        model_type = json.loads((Path(config.checkpoint) / "config.json").read_text())["model_type"]
        cls = GPT if model_type == "gpt2" else Llama
        base = cls.from_pretrained(config.checkpoint, dtype="auto", quantize=quantize)
    else:
        torch.manual_seed(config.seed)
        sizes = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
        base = Llama(sizes).eval()
        base = modify.quantize(base, quantize) if quantize else base
    base.requires_grad_(False)
    return base, "transformer.h.*" if isinstance(base, GPT) else "model.layers.*"


def token_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy over real tokens (pads ignored, as ``labels=-100``).

    The model takes ``(ids, attention_mask)``: padded keys are never attended to and each row's
    positions count only its tokens. With ``chunk``, the output head and the loss run ``chunk``
    positions at a time (``chunked_cross_entropy``): the vocabulary-sized logits of the whole
    batch, their float32 copy and their gradients never exist, for the same loss and gradients.
    """
    inputs, targets = (ids[:, :-1], mask[:, :-1]), ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    if chunk:
        body = model.transformer if isinstance(model, GPT) else model.model
        return chunked_cross_entropy(body(inputs), model.lm_head, targets, chunk=chunk)
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, rows: list[list[int]], batch_size: int) -> float:
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_right(rows[start : start + batch_size])
        tokens = int(mask[:, 1:].sum())
        total, count = total + token_loss(model, ids, mask).item() * tokens, count + tokens
    return total / count


def generate_left_padded(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> list[list[int]]:
    """Greedy continuations of left-padded prompts, one list of new tokens per row.

    All rows decode in one batch through the key/value cache, ``attention_mask`` marking the pads.
    """
    out = generate(model, ids, new_tokens, top_k=1, attention_mask=mask)
    return out[:, ids.shape[1] :].tolist()


# ----------------------------------------------------------------------------- training


def train_adapters(
    trained: torch.nn.Module, adapted: torch.nn.Module, rows: list[list[int]], config: Config, state: TrainingState
) -> list[float]:
    """AdamW on ``adapted``'s adapters through ``trained`` (its checkpointed sibling), from the step
    ``state`` resumes at; every step's loss. Batches walk a seeded permutation of ``rows``."""
    named = adapter_names(adapted)
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr)
    start, losses, order = state.restore(named, optimizer, torch.randperm(len(rows)))
    for step in (bar := tqdm(range(start, config.steps), desc="adapters", initial=start, total=config.steps)):
        picks = [(step * config.batch_size + k) % len(rows) for k in range(config.batch_size)]
        ids, mask = pad_right([rows[order[p]] for p in picks])
        loss = token_loss(trained, ids, mask, config.loss_chunk)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        state.step_done(step + 1, named, optimizer, order, losses)
    return losses


def adapter_names(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``modify.lora_parameters(model)`` by their paths, in its order (the optimizer's)."""
    paths = {id(p): name for name, p in model.named_parameters()}
    return {paths[id(p)]: p for p in modify.lora_parameters(model)}


class TrainingState(SavedRun):
    """``--save-every``/``--resume``: ``adapters.safetensors`` and ``state.pt`` (step, optimizer, batch
    order, torch's RNG state, the losses so far, the options) in ``<out>/train_state``."""

    def __init__(self, config: Config):
        super().__init__(config, PROG)

    def restore(self, named: dict, optimizer, order: torch.Tensor) -> tuple[int, list[float], torch.Tensor]:
        """The step to start at, the losses so far and the batch order, after loading the saved states."""
        if self.saved is None:
            return 0, [], order
        self.fill(named, "adapters.safetensors")
        optimizer.load_state_dict(self.saved["optimizer"])
        torch.set_rng_state(self.saved["torch_rng"])
        return self.saved["step"], list(self.saved["losses"]), self.saved["order"]

    def step_done(self, step: int, named: dict, optimizer, order: torch.Tensor, losses: list[float]) -> None:
        """Save every ``--save-every`` steps and at the last step."""
        if self.due(step):
            state = {"step": step, "optimizer": optimizer.state_dict(), "order": order,
                     "torch_rng": torch.get_rng_state(), "losses": list(losses)}  # fmt: skip
            self.write(named, "adapters.safetensors", state)


# ----------------------------------------------------------------------------- main


def main(config: Config) -> dict[str, float | list[float]]:
    state = TrainingState(config)  # with --resume, refuses other options before any work
    torch.manual_seed(config.seed)
    lines = read_lines(config)
    rows = [encode(line, config.max_len) for line in lines]
    train = [r for i, r in enumerate(rows) if i % config.holdout]
    held = [r for i, r in enumerate(rows) if not i % config.holdout]
    base, blocks = load_base(config)
    adapted = modify.lora(base, config.rank, config.alpha, where=(modify.Linear, blocks))
    trained = modify.checkpoint_activations(adapted, where=blocks).train()
    print(f"{len(train)} training and {len(held)} held-out examples; base quantized: {config.quantize}")
    print(modify.summary(base, adapted, names=["base", "adapted"]))
    before = held_out_loss(adapted, held, config.batch_size)
    losses = train_adapters(trained, adapted, train, config, state)
    after = held_out_loss(adapted.eval(), held, config.batch_size)
    print(f"held-out loss per byte: before {before:.3f}, after {after:.3f}")
    folder = Path(config.out) / "adapter"
    modify.save_adapters(adapted, folder)
    print(f"adapters saved to {folder} (PEFT's format)")
    prompts = [row[:8] for row in held[: config.prompts]]
    ids, mask = pad_left(prompts)
    for prompt, new in zip(prompts, generate_left_padded(adapted, ids, mask, config.new_tokens)):
        print(f"{bytes(prompt).decode(errors='replace')!r} -> {bytes(new).decode(errors='replace')!r}")
    return {"before": before, "after": after, "losses": losses}


def parse(argv: list[str] | None = None) -> Config:
    """``--rank 4`` etc. for every ``Config`` field; a bad value exits 2 with one line."""
    return parse_config(Config, argv, prog=PROG, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main(parse())
