"""Pretrain a small GPT built from modify primitives, then LoRA-adapt it and compare side by side.

    make demo                                   # creates .venv, installs, runs this file
    python examples/gpt_lora.py                 # the same, in an environment with modify installed
    python examples/gpt_lora.py --text notes.txt --steps 500
    python examples/gpt_lora.py --hf-checkpoint ./gpt2 --steps 30 --batch-size 8
    python examples/gpt_lora.py --save-every 50  # after a crash, the same command with --resume
    torchrun --nproc-per-node 2 examples/gpt_lora.py --ddp
    python examples/gpt_lora.py --help          # every option of DemoConfig below

1. Builds a character-level ``modify.models.GPT`` and pretrains it on corpus A: the Python
   standard library's own source code (found through ``sysconfig``; comments and docstrings
   removed by ``ast.unparse``). Nothing is downloaded, and the corpus is deterministic: sorted
   files, a bounded number of characters, a fixed seed.
2. Makes ``adapted = modify.lora(base, rank)``, a sibling sharing every base parameter, freezes the
   base and trains only the adapters on corpus B: the docstrings of the same modules, English prose
   (or your own text with ``--text``).
3. Prints both models' held-out loss on both corpora, a sample from each, ``modify.summary`` of
   both (parameters shared by identity: ``p_base is p_adapted``; the adapters' size), and that
   ``merge_lora`` gives the same outputs; saves a loss plot and ``models.html``, both models
   drawn side by side by ``modify.show`` (shared parameters and the LoRA blocks marked).
4. Saves the adapters alone with ``modify.save_adapters`` (PEFT's folder format) under ``--out``,
   reloads them into a fresh sibling with ``modify.load_adapters`` and shows the same held-out
   loss; with ``--hf-checkpoint``, loads the folder with PEFT onto ``transformers``' GPT-2 too.

``--hf-checkpoint DIR`` starts from GPT-2 weights in a local Hugging Face folder instead of
pretraining. Text is then tokenized with the folder's own GPT-2 tokenizer if it has one and
``transformers`` is installed; otherwise with GPT-2's 256 single-byte tokens (exact GPT-2 tokens,
unmerged, so the loss is per byte). ``--tokenizer`` forces one.

``--save-every N`` writes the training state to ``--out``/train_state every N steps and at the
end of each phase, atomically (``modify.checkpoints.atomic_folder``: a kill at any moment leaves
the previous state whole): the phase's trainable weights, the optimizer's state, the step, the
batch generator (the data position) and the RNG states of torch and ``random``. Killed at any
step, the same command with ``--resume`` continues from the last state and ends with the very
adapters and losses of an uninterrupted run (bit for bit on the CPU with one thread).

``--ddp`` under ``torchrun`` trains with DistributedDataParallel (gloo on CPU, nccl on GPU); only
rank 0 prints and plots. Bad input stops the run before any work with a one-line error, exit code 2.

References:
    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
    Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2).
    Karpathy, nanoGPT, https://github.com/karpathy/nanoGPT (model and training loop).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import pickle
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

import modify
from modify.models import GPT, GPTConfig, generate
from modify.traits import Linear, ParamFree, Restructure, Unary

from command_line import fail, opt, parse_config, within
from text_corpora import CharTokenizer, GPT2ByteTokenizer, HFTokenizer, embedded_corpora, has_tokenizer_files
from training_state import SavedRun

PROG = "gpt_lora.py"
POSITIVE_INT = within(int, 1, what="a positive integer")
POSITIVE = within(float, 0, closed=False, what="a positive finite number")


@dataclass
class DemoConfig:
    # model: nanoGPT's "baby GPT", scaled down to train in about a minute on 2 CPU cores
    n_layer: int = opt(4, "transformer blocks", POSITIVE_INT)
    n_head: int = opt(4, "attention heads per block", POSITIVE_INT)
    n_embd: int = opt(96, "embedding width", POSITIVE_INT)
    block_size: int = opt(64, "context length in tokens (characters)", POSITIVE_INT)
    dropout: float = opt(0.0, "dropout probability while pretraining", within(float, 0, 1, what="in [0, 1)"))
    # data
    corpus_chars: int = opt(200_000, "characters taken from each corpus (first ones, sorted files)", POSITIVE_INT)
    val_fraction: float = opt(0.1, "held-out tail of each corpus, for the loss table",
                             within(float, 0, 1, closed=False, what="in (0, 1)"))
    text: str | None = opt(None, "your own UTF-8 text file: replaces corpus B (the adaptation corpus)")
    # training, the same number of steps in each phase
    steps: int = opt(300, "optimizer steps for pretraining, and again for adaptation", POSITIVE_INT)
    batch_size: int = opt(32, "sequences per step (per process with --ddp)", POSITIVE_INT)
    lr: float = opt(3e-3, "peak AdamW learning rate for pretraining (warmup, then cosine decay)", POSITIVE)
    lora_rank: int = opt(8, "rank r of each adapter B @ A", POSITIVE_INT)
    lora_alpha: float = opt(16.0, "adapter scale is alpha / rank", POSITIVE)
    lora_lr: float = opt(1e-2, "peak learning rate for the adapters", POSITIVE)
    eval_batches: int = opt(8, "held-out batches per loss in the table", POSITIVE_INT)
    sample_tokens: int = opt(240, "tokens sampled from each model", POSITIVE_INT)
    seed: int = opt(1337, "seed for initialisation, batches and samples")
    # where and how
    hf_checkpoint: str | None = opt(None, "local Hugging Face GPT-2 folder to start from instead of pretraining")
    tokenizer: str = opt("auto", "with --hf-checkpoint: auto, bpe (the folder's, needs transformers) or bytes",
                         choices=("auto", "bpe", "bytes"))
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, cuda:N or mps", metavar="DEVICE")
    threads: int = opt(0, "CPU threads; 0: one for the small default model (its matrices are too small to gain "
                          "from more, and one thread is not stalled by other busy processes), all with --hf-checkpoint",
                       within(int, 0, what="0 (automatic) or a positive integer"))
    compile: bool = opt(False, "train through torch.compile")
    ddp: bool = opt(False, "DistributedDataParallel; launch with torchrun (gloo on CPU, nccl on GPU)")
    out: str = opt("build/demo", "folder for the loss plot, the saved adapter (adapter/) and the training state")
    save_every: int = opt(0, "save the training state to OUT/train_state every N steps (0: never)",
                          within(int, 0, what="0 (never) or a positive integer"))
    resume: bool = opt(False, "continue from OUT/train_state, saved by an interrupted run with the same options")


# ----------------------------------------------------------------------------- data and training

def as_splits(ids: list[int], cfg: DemoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids -> (train, held-out) tensors: the held-out part is the corpus's tail."""
    data = torch.tensor(ids, dtype=torch.long)
    n_val = max(1, int(len(data) * cfg.val_fraction))
    return data[:-n_val], data[-n_val:]


def batch(data: torch.Tensor, cfg: DemoConfig, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``block_size`` tokens (B, T) and their next tokens (B, T)."""
    starts = torch.randint(len(data) - cfg.block_size, (cfg.batch_size,), generator=gen)
    x = torch.stack([data[i : i + cfg.block_size] for i in starts])
    y = torch.stack([data[i + 1 : i + 1 + cfg.block_size] for i in starts])
    return x.to(device), y.to(device)


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)  # (B, T, vocab_size)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over the first 10% of steps, then cosine decay to a tenth (as nanoGPT)."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, phase: str, data: torch.Tensor, cfg: DemoConfig, env: dict, *, lr: float, weight_decay: float,
          seed: int, desc: str, state: TrainingState) -> list[float]:
    """AdamW on ``model``'s trainable parameters only (decaying matrices, not vectors), for ``cfg.steps`` steps
    (from the step ``state`` resumes at); the loss of every step. ``state`` saves every ``--save-every`` steps."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed + 1000 * env["rank"])  # each process its own batches
    start, losses = state.restore(phase, named, optimizer, gen)
    module = wrap_for_training(model, cfg, env)
    module.train()
    bar = tqdm(range(start, cfg.steps), desc=desc, disable=not env["main"], dynamic_ncols=True, initial=start,
               total=cfg.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, lr)
        x, y = batch(data, cfg, gen, env["device"])
        loss = lm_loss(module, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        state.step_done(phase, step + 1, named, optimizer, gen, losses)
    return losses


class TrainingState(SavedRun):
    """``--save-every``/``--resume`` for both phases, in ``OUT/train_state``: ``base.safetensors`` (a
    base pretrained here), ``adapters.safetensors`` (while adapting) and ``state.pt`` (phase, step,
    optimizer, batch generator, torch and ``random`` RNG states, the losses so far, the options).
    The base is carried over, not rewritten, while adapting."""

    def __init__(self, cfg: DemoConfig, env: dict):
        super().__init__(cfg, PROG)
        self.main = env["main"]
        self.losses = self.saved["losses"] if self.saved else {"pretrain": [], "adapt": []}

    def where(self, saved: dict) -> str:
        return f"{saved['phase']} phase, step {saved['step']}"

    def phase_done(self, phase: str) -> bool:
        """Whether the saved state is past ``phase`` (``"pretrain"`` done once adapting, or at its last step)."""
        saved = self.saved
        return saved is not None and (saved["phase"] != phase or saved["step"] == self.config.steps)

    def restore(self, phase: str, named: dict, optimizer, gen: torch.Generator) -> tuple[int, list[float]]:
        """The step to start ``phase`` at and its losses so far, after loading the saved tensors and states."""
        if self.saved is None or self.saved["phase"] != phase:
            return 0, []
        self.fill(named, "base.safetensors" if phase == "pretrain" else "adapters.safetensors")
        optimizer.load_state_dict(self.saved["optimizer"])
        gen.set_state(self.saved["generator"])
        return self.saved["step"], list(self.losses[phase])

    def skip_pretraining(self, base) -> list[float]:
        """Fill ``base`` with the saved pretrained weights and restore the RNGs (the adapters' init draws
        from them); the pretraining losses."""
        self.fill(dict(base.named_parameters()), "base.safetensors")
        return self.losses["pretrain"]

    def fill(self, named: dict, file: str) -> None:
        """The saved tensors of ``file`` into ``named``, and the RNG states restored."""
        super().fill(named, file)
        torch.set_rng_state(self.saved["torch_rng"])
        random.setstate(self.saved["python_rng"])

    def step_done(self, phase: str, step: int, named: dict, optimizer, gen: torch.Generator, losses: list) -> None:
        """Save every ``--save-every`` steps and at the phase's last step (process 0 only)."""
        self.losses[phase] = list(losses)
        if not (self.main and self.due(step)):
            return
        state = {"phase": phase, "step": step, "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "losses": self.losses}
        pretraining = phase == "pretrain"
        weights = "base.safetensors" if pretraining else "adapters.safetensors"
        self.write(named, weights, state, replaces=("*",) if pretraining else ("state.pt", weights))  # keep the base


@torch.no_grad()
def evaluate(model, batches: list, desc: str) -> float:
    """Mean cross-entropy (nats per token) over fixed held-out batches, with a progress bar."""
    model.eval()
    bar = tqdm(batches, desc=desc, leave=False, dynamic_ncols=True)
    return sum(lm_loss(model, x, y).item() for x, y in bar) / len(batches)


def wrap_for_training(model, cfg: DemoConfig, env: dict):
    """The module the training loop calls: ``model``, compiled and/or wrapped in DDP."""
    module = torch.compile(model) if cfg.compile else model
    if cfg.ddp:
        device_ids = [env["device"].index] if env["device"].type == "cuda" else None
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    return module


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> DemoConfig:
    """``--n-layer 2`` etc. for every ``DemoConfig`` field; ``--compile``/``--ddp`` are switches."""
    return parse_config(DemoConfig, argv, prog=PROG, description=__doc__.split("\n")[0])


def validate(cfg: DemoConfig) -> None:
    """Check the options together before any work starts (each alone was checked while parsing)."""
    if cfg.n_embd % cfg.n_head:
        fail(PROG, f"--n-embd ({cfg.n_embd}) must be divisible by --n-head ({cfg.n_head})")
    if cfg.text is not None:
        read_text(cfg.text)
    if cfg.hf_checkpoint is not None:
        check_checkpoint(Path(cfg.hf_checkpoint), cfg.tokenizer)
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        fail(PROG, f"--out {cfg.out} exists and is not a folder")
    if cfg.ddp and (cfg.save_every or cfg.resume):
        fail(PROG, "--save-every and --resume run in one process (without --ddp)")
    if cfg.ddp and not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")):
        fail(PROG, "--ddp needs the environment torchrun sets: torchrun --nproc-per-node 2 examples/gpt_lora.py --ddp")
    resolve_device(cfg.device, local_rank=0)


def read_text(path: str) -> str:
    """The UTF-8 text of ``--text``, or ``fail``."""
    file = Path(path)
    if file.is_dir():
        fail(PROG, f"--text {path} is a folder, not a text file")
    if not file.is_file():
        fail(PROG, f"--text {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        fail(PROG, f"--text {path} is not UTF-8 text ({error.reason} at byte {error.start})")
    if not text.strip():
        fail(PROG, f"--text {path} is empty")
    return text


def check_checkpoint(folder: Path, tokenizer: str) -> None:
    """A Hugging Face GPT-2 folder as ``save_pretrained`` writes it, and a usable tokenizer."""
    if not folder.is_dir():
        fail(PROG, f"--hf-checkpoint {folder}: no such folder")
    if not (folder / "config.json").is_file():
        fail(PROG, f"--hf-checkpoint {folder} has no config.json (expected a Hugging Face save_pretrained folder)")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        fail(PROG, f"--hf-checkpoint {folder}/config.json is not a JSON object")
    if model_type != "gpt2":
        fail(PROG, f"--hf-checkpoint {folder} holds a {model_type!r} model; this demo needs GPT-2 (model_type 'gpt2')")
    if not any((folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        fail(PROG, f"--hf-checkpoint {folder} has no model.safetensors or pytorch_model.bin")
    if tokenizer == "bpe" and not has_tokenizer_files(folder):
        fail(PROG, f"--tokenizer bpe: {folder} has no tokenizer.json nor vocab.json + merges.txt")
    if tokenizer == "bpe" and importlib.util.find_spec("transformers") is None:
        fail(PROG, "--tokenizer bpe needs transformers (pip install transformers), or use --tokenizer bytes")


# What reading a damaged weights file raises: torch.load's pickle and archive errors, OS errors.
LOAD_ERRORS = (ValueError, TypeError, KeyError, OSError, EOFError, RuntimeError, pickle.UnpicklingError)


def resolve_device(spec: str, local_rank: int) -> torch.device:
    """``auto`` -> cuda (this process's GPU under DDP) if available, else cpu; checks availability."""
    if spec == "auto":
        spec = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        fail(PROG, f"--device {spec!r} is not a device (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(PROG, f"--device {spec}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail(PROG, f"--device {spec}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        fail(PROG, f"--device {spec}: this demo runs on cpu, cuda or mps")
    return device


def setup(cfg: DemoConfig) -> dict:
    """The process's rank, device and whether it prints; joins the process group under ``--ddp``."""
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if not cfg.ddp:
        rank = local_rank = 0
    device = resolve_device(cfg.device, local_rank)
    if cfg.ddp:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)  # env://: RANK, WORLD_SIZE, MASTER_ADDR/PORT
    if device.type == "cpu" and (cfg.threads or cfg.hf_checkpoint is None):
        torch.set_num_threads(cfg.threads or 1)
    return {"rank": rank, "main": rank == 0, "device": device}


# ----------------------------------------------------------------------------- the demo

def load_corpora(cfg: DemoConfig) -> list[tuple[str, str]]:
    """[(name, text)] for corpus A (pretraining) and corpus B (adaptation)."""
    code, docstrings = embedded_corpora(cfg.corpus_chars)
    if not code.strip() or not docstrings.strip():
        fail(PROG, "found no Python source files to build the default corpora from")
    if cfg.text is not None:
        return [("A: Python code", code), (f"B: {Path(cfg.text).name}", read_text(cfg.text)[: cfg.corpus_chars])]
    return [("A: Python code", code), ("B: docstrings", docstrings)]


def make_base(cfg: DemoConfig, texts: list[str]):
    """(tokenizer, base model): a fresh character-level GPT, or GPT-2 from ``--hf-checkpoint``."""
    if cfg.hf_checkpoint is None:
        tokenizer = CharTokenizer(*texts)  # the vocabulary covers both corpora
        torch.manual_seed(cfg.seed)
        config = GPTConfig(block_size=cfg.block_size, vocab_size=len(tokenizer.chars), n_layer=cfg.n_layer,
                           n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=False)
        return tokenizer, GPT(config)
    folder = Path(cfg.hf_checkpoint)
    transformers_here = importlib.util.find_spec("transformers") is not None
    use_bpe = cfg.tokenizer == "bpe" or (cfg.tokenizer == "auto" and has_tokenizer_files(folder) and transformers_here)
    tokenizer = HFTokenizer(str(folder)) if use_bpe else GPT2ByteTokenizer()
    try:
        base = GPT.from_pretrained(str(folder))
    except (*LOAD_ERRORS, SafetensorError) as error:  # e.g. a truncated model.safetensors, an empty .bin
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "the file ends early"
        fail(PROG, f"--hf-checkpoint {folder} could not be loaded: {type(error).__name__}: {reason}")
    cfg.block_size = min(cfg.block_size, base.config.block_size)
    return tokenizer, base


def tokenize(corpora, tokenizer, vocab_size: int, cfg: DemoConfig) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """[(name, train ids, held-out ids)], checking each corpus is long enough and fits the vocabulary."""
    splits = []
    for name, text in corpora:
        ids = tokenizer.encode(text)
        if max(ids, default=0) >= vocab_size:
            fail(PROG, f"the tokenizer gives ids up to {max(ids)} but the model has only {vocab_size} embeddings")
        train_ids, val_ids = as_splits(ids, cfg)
        if min(len(train_ids), len(val_ids)) <= cfg.block_size:
            fail(PROG, f"corpus {name} has {len(ids)} tokens: too short for --block-size {cfg.block_size} "
                 f"with --val-fraction {cfg.val_fraction} (use a longer text)")
        splits.append((name, train_ids, val_ids))
    return splits


def run(cfg: DemoConfig, env: dict) -> None:
    log = print if env["main"] else (lambda *args, **kwargs: None)
    start = time.perf_counter()
    corpora = load_corpora(cfg)
    tokenizer, base = make_base(cfg, [text for _, text in corpora])
    base = base.to(env["device"])
    splits = tokenize(corpora, tokenizer, base.config.vocab_size, cfg)
    (name_a, train_a, _), (name_b, train_b, _) = splits
    log(f"model:     modify.models.GPT, {count(base.parameters())} parameters, {base.config.n_layer} blocks, "
        f"on {env['device']}")
    log(f"tokenizer: {tokenizer.name}, {base.config.vocab_size} ids, context {cfg.block_size} tokens")
    for name, train_ids, val_ids in splits:
        log(f"corpus {name}: {len(train_ids):,} training tokens, {len(val_ids):,} held out")

    state = TrainingState(cfg, env)
    pre_losses = []
    if cfg.hf_checkpoint is None and state.phase_done("pretrain"):
        pre_losses = state.skip_pretraining(base)
    elif cfg.hf_checkpoint is None:
        pre_losses = train(base, "pretrain", train_a, cfg, env, lr=cfg.lr, weight_decay=0.1, seed=cfg.seed,
                           desc=f"pretrain on {name_a}", state=state)
    base.requires_grad_(False)  # phase 2 trains the adapters only
    before = {key: value.clone() for key, value in base.state_dict().items()}
    adapted = modify.lora(base, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    ada_losses = train(adapted, "adapt", train_b, cfg, env, lr=cfg.lora_lr, weight_decay=0.0, seed=cfg.seed + 1,
                       desc=f"LoRA on {name_b}", state=state)
    if env["main"]:
        gen = torch.Generator().manual_seed(cfg.seed)
        held_out = {name: [batch(val, cfg, gen, env["device"]) for _ in range(cfg.eval_batches)]
                    for name, _, val in splits}
        table = loss_table({"base": base, "adapted (LoRA)": adapted}, held_out, tokenizer)
        unchanged = all(torch.equal(value, before[key]) for key, value in base.state_dict().items())
        sharing(base, adapted, unchanged, name_b)
        picture = Path(cfg.out) / "models.html"
        modify.show(base, adapted, path=picture)
        print(f"models side by side (open in a browser; shared parameters and LoRA blocks marked): {picture}")
        merging(base, adapted, held_out[name_b][0][0])
        adapter_files(cfg, base, adapted, held_out[name_b], name_b)
        for label, model in (("base", base), ("adapted (LoRA)", adapted)):
            text = sample(model, tokenizer, cfg, env, label)
            log(f"\n--- sample from {label} (same prompt '\\n' and seed) ---\n{text}")
        path = plot(cfg, pre_losses, ada_losses, table, name_a, name_b)
        log(f"\nloss plot: {path}\nwall time: {time.perf_counter() - start:.0f} s")


def count(params) -> str:
    n = sum(p.numel() for p in params)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def loss_table(models: dict, held_out: dict, tokenizer) -> dict[tuple[str, str], float]:
    """Print and return the held-out loss of each model on each corpus, by (model label, corpus name)."""
    losses = {(label, name): evaluate(model, batches, f"evaluate {label} on {name}")
              for label, model in models.items() for name, batches in held_out.items()}
    unit = "character" if isinstance(tokenizer, CharTokenizer) else "token"
    print(f"\nheld-out loss (cross-entropy, nats per {unit}), lower is better")
    print(f"{'':16}" + "".join(f"{name:>22}" for name in held_out))
    for label in models:
        print(f"{label:16}" + "".join(f"{losses[label, name]:22.3f}" for name in held_out))
    return losses


def sharing(base, adapted, unchanged: bool, name_b: str) -> None:
    """Print both models' parameter counts: shared ones are the same objects (p_base is p_adapted), no bytes copied."""
    print("\nparameters (exact counts; shared: the very same tensor objects, p_base is p_adapted)")
    print(modify.summary(base, adapted, names=["base", "adapted (LoRA)"]))
    print(f"base unchanged by the adaptation: {unchanged}; {len(modify.select(adapted, modify.LoRA))} LoRA blocks, "
          f"whose adapters alone were trained on {name_b}")


def adapter_files(cfg: DemoConfig, base, adapted, batches: list, name_b: str) -> None:
    """Save the adapters alone in PEFT's format, reload them into a fresh sibling, compare held-out losses."""
    folder = Path(cfg.out) / "adapter"
    modify.save_adapters(adapted, folder)
    reloaded = modify.load_adapters(base, folder)
    size = (folder / "adapter_model.safetensors").stat().st_size
    print(f"save_adapters(adapted, '{folder}'): PEFT's format, {size:,} bytes of adapters")
    reloaded_loss = evaluate(reloaded, batches, f"evaluate the reloaded adapters on {name_b}")
    trained_loss = evaluate(adapted, batches, f"evaluate the trained sibling on {name_b}")
    print(f"load_adapters(base, '{folder}'): a fresh sibling, loss {reloaded_loss:.3f} on held-out "
          f"{name_b} (the trained sibling: {trained_loss:.3f})")
    if cfg.hf_checkpoint is not None:
        in_peft(cfg.hf_checkpoint, folder, adapted, batches[0][0])


@torch.no_grad()
def in_peft(checkpoint: str, folder: Path, adapted, x: torch.Tensor) -> None:
    """Load the adapter folder with PEFT onto transformers' GPT-2 and compare logits (when both are installed)."""
    call = f"PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained('{checkpoint}'), '{folder}')"
    if importlib.util.find_spec("peft") is None or importlib.util.find_spec("transformers") is None:
        print(f"in PEFT: {call} loads it (install peft and transformers to check here)")
        return
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' and PEFT's own notices (fan_in_fan_out, tied lm_head)
        reference = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(checkpoint), folder).eval()
        diff = (reference(x.cpu()).logits - adapted.eval()(x).cpu()).abs().max().item()
    print(f"in PEFT: {call} loads it; max |PEFT - modify| logit difference {diff:.1e}")


@torch.no_grad()
def merging(base, adapted, x: torch.Tensor) -> None:
    """Print that ``merge_lora`` computes what the adapted model does, and ``strip_lora`` gives the base back."""
    merged = modify.merge_lora(adapted).eval()
    diff = (merged(x) - adapted.eval()(x)).abs().max().item()
    same_keys = list(merged.state_dict()) == list(base.state_dict())
    print(f"merge_lora(adapted): max |merged - adapted| logit difference {diff:.1e}; "
          f"state_dict keys equal the base's: {same_keys}")
    stripped, base_params = list(modify.strip_lora(adapted).parameters()), list(base.parameters())
    same = len(stripped) == len(base_params) and all(p is q for p, q in zip(stripped, base_params))
    print(f"strip_lora(adapted) gives back the base's own parameters: {same}")


class FirstLogits(modify.Leaf, Unary, ParamFree, Linear, Restructure):
    """Keep the logits of ids ``0 .. n - 1`` only, so that samples stay among them: ``(*, V) -> (*, n)``."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., : self.n]


def sample(model, tokenizer, cfg: DemoConfig, env: dict, label: str) -> str:
    """``cfg.sample_tokens`` tokens after a newline, decoded through the key/value cache, with a progress bar."""
    gen = torch.Generator(env["device"]).manual_seed(cfg.seed)
    prompt = torch.tensor([tokenizer.encode("\n")], device=env["device"])
    if isinstance(tokenizer, GPT2ByteTokenizer):  # it cannot decode GPT-2's merged tokens: sample none
        model = modify.select(model, "lm_head").insert_after(FirstLogits(256))  # a sibling; model untouched
    bar = functools.partial(tqdm, desc=f"sample from {label}", leave=False, dynamic_ncols=True)
    out = generate(model.eval(), prompt, cfg.sample_tokens, temperature=0.8, block_size=cfg.block_size,
                   generator=gen, progress=bar)
    return tokenizer.decode(out[0, prompt.shape[1] :].tolist())


def plot(cfg: DemoConfig, pre_losses: list[float], ada_losses: list[float], held_out: dict, name_a: str,
         name_b: str) -> Path:
    """Training losses of both phases and the held-out losses, saved as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    phases = [(f"pretraining on {name_a} (all parameters)", pre_losses, name_a)] if pre_losses else []
    phases.append((f"adaptation on {name_b} (LoRA adapters only)", ada_losses, name_b))
    fig = Figure(figsize=(6 * len(phases), 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (title, losses, corpus) in zip(fig.subplots(1, len(phases), squeeze=False)[0], phases):
        ax.plot(range(1, len(losses) + 1), losses, lw=0.8, color="0.6", label="training loss")
        for (label, name), value in held_out.items():
            if name == corpus:
                color = "C0" if label == "base" else "C3"
                ax.axhline(value, ls="--", color=color, label=f"{label}, held out: {value:.3f}")
        ax.set(title=title, xlabel="step", ylabel="loss (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend()
    path = Path(cfg.out) / "gpt_lora_loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    validate(cfg)
    threads = torch.get_num_threads()
    env = setup(cfg)
    try:
        run(cfg, env)
        if cfg.ddp:
            torch.distributed.barrier()  # the other ranks wait while rank 0 reports
    finally:
        torch.set_num_threads(threads)
        if cfg.ddp:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
