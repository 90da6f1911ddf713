"""Training runs for ``test_distributed.py``: one process of a 2-process gloo job, or the single-process reference.

Each *scenario* trains a tiny GPT (or a LoRA sibling of it with the base frozen, its blocks
checkpointed or not) for a few SGD
steps on a fixed global batch, wrapped in DDP or FSDP2 (``fully_shard`` per block, then the root).
Rank ``r`` takes rows ``r::world`` of each global batch; gradients are averaged across ranks, so
the run must equal one process training on the whole batch.
"""

from __future__ import annotations

import os
import traceback
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import modify
from modify.models import GPT, GPTConfig

STEPS, GLOBAL_BATCH, T, VOCAB = 3, 4, 8, 32
SCENARIOS = [(wrapper, model) for wrapper in ("ddp", "fsdp") for model in ("gpt", "lora", "lora+checkpoint")]


def make_model(kind: str) -> nn.Module:
    """The model of a scenario: the same seeded weights in every process."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=T, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16))
    if kind == "gpt":
        return gpt
    adapted = modify.lora(gpt, rank=2, alpha=4.0)
    for p in gpt.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # a non-zero B, so that A gets a gradient from the first step
        for p in modify.lora_parameters(adapted):
            p.normal_(0.0, 0.1)
    if kind == "lora+checkpoint":  # every block recomputed in the backward pass
        return modify.checkpoint_activations(adapted, where="transformer.h.*")
    return adapted


def trainable(model: nn.Module, kind: str) -> list[nn.Parameter]:
    """What the optimizer trains; asked after wrapping, as FSDP2 replaces the parameters by shards."""
    return list(model.parameters()) if kind == "gpt" else modify.lora_parameters(model)


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (GLOBAL_BATCH, T + 1), generator=gen) for _ in range(STEPS)]


def train(model: nn.Module, params: list[nn.Parameter], rank: int = 0, world: int = 1) -> list[float]:
    """SGD steps on this rank's rows of each global batch; returns the global mean loss per step."""
    opt = torch.optim.SGD(params, lr=0.5)
    losses = []
    for batch in batches():
        rows = batch[rank::world]
        logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        losses.append(mean.item())
    return losses


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with FSDP2's sharded ``DTensor``s gathered into full tensors."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in model.state_dict().items()}


def wrapped(model: nn.Module, wrapper: str) -> nn.Module:
    if wrapper == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:  # one FSDP group per block, the rest in the root's
        fully_shard(block)
    return fully_shard(model)


def run_scenario(rank: int, world: int, wrapper: str, kind: str) -> dict:
    model = make_model(kind)
    distributed = wrapped(model, wrapper)
    losses = train(distributed, trainable(model, kind), rank, world)
    state = full_state(model)
    return {"losses": losses, "state": state}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Entry point of each spawned process: every scenario, results saved to ``out_dir/rank<r>.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # FSDP2 warns that the root returns a view (F.linear folds (B, T, C) to 2-d and back); the
    # training loop applies no in-place op to the logits, which is what the warning is about.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    try:
        for wrapper, kind in SCENARIOS:
            try:
                results[(wrapper, kind)] = run_scenario(rank, world, wrapper, kind)
            except Exception:  # reported by the test of that scenario, the others still run
                results[(wrapper, kind)] = {"error": traceback.format_exc()}
            dist.barrier()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
