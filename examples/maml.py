"""MAML on few-shot sine regression, with the model as one flat parameter vector (modify.flat).

    python examples/maml.py                          # tiny defaults: a few seconds on a CPU
    python examples/maml.py --steps 5000 --meta-batch 25 --width 40   # closer to the paper
    python examples/maml.py --help                   # every option of Config below

Each task is a sine wave ``y = A sin(x - phase)`` with ``A`` in [0.1, 5], phase in [0, pi] and
``x`` in [-5, 5] (Finn et al. 2017, section 5.1). The learner sees ``shots`` points of a new task,
takes ``inner_steps`` plain SGD steps from the meta-learned starting point, and is scored on other
points of the same wave. ``f = modify.flat(mlp)`` turns the MLP into one vector ``f.flat_param``;
``f(x, flat_param=theta)`` runs it on any vector, so an inner step is just
``theta - inner_lr * grad`` and the meta-gradient flows through it (second order, as in the
paper). The script prints the post-adaptation error on held-out tasks before and after
meta-training, next to a model trained from the same start without meta-learning.

References:
    Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks", arXiv:1703.03400.
    T. Wang, PyTorch-Reparam-Module (flat parameters for MAML),
    https://github.com/ssnl/PyTorch-Reparam-Module
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import modify

from command_line import opt, parse_config, positive


@dataclass
class Config:
    steps: int = opt(300, "meta-training steps (the paper: 70000)", positive(int))
    meta_batch: int = opt(8, "tasks per meta step (the paper: 25)", positive(int))
    shots: int = opt(10, "K: points seen to adapt, and again to score", positive(int))
    inner_steps: int = opt(1, "SGD steps of the adaptation, in training and evaluation", positive(int))
    inner_lr: float = opt(0.01, "adaptation step size (the paper: 0.01)", positive(float))
    meta_lr: float = opt(1e-3, "Adam learning rate of the starting point (the paper: 0.001)", positive(float))
    width: int = opt(40, "hidden width of the MLP 1 -> width -> width -> 1 (the paper: 40)", positive(int))
    eval_tasks: int = opt(100, "held-out tasks for the before/after error", positive(int))
    seed: int = opt(0, "torch seed: tasks and initialisation")
    threads: int = opt(1, "torch CPU threads; tiny networks run fastest on one", positive(int))
    log_every: int = opt(100, "print the meta loss every this many steps", positive(int))


def sample_tasks(n: int, points: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(n, 2 * points, 1)``: the first half to adapt on, the rest to score."""
    amplitude = 0.1 + 4.9 * torch.rand(n, 1, 1, generator=gen)
    phase = math.pi * torch.rand(n, 1, 1, generator=gen)
    x = 10 * torch.rand(n, 2 * points, 1, generator=gen) - 5
    return x, amplitude * torch.sin(x - phase)


def adapted_loss(f: modify.FlatParam, theta: torch.Tensor, x, y, config: Config, create_graph: bool):
    """Query loss after ``inner_steps`` SGD steps on the support half, starting from ``theta``."""
    xs, ys, xq, yq = x[: config.shots], y[: config.shots], x[config.shots :], y[config.shots :]
    for _ in range(config.inner_steps):
        support = F.mse_loss(f(xs, flat_param=theta), ys)
        grad, = torch.autograd.grad(support, theta, create_graph=create_graph)
        theta = theta - config.inner_lr * grad
    return F.mse_loss(f(xq, flat_param=theta), yq)


def evaluate(f: modify.FlatParam, theta: torch.Tensor, tasks, config: Config) -> float:
    """Mean post-adaptation query error over held-out tasks (first-order: no graph kept)."""
    xs, ys = tasks
    theta = theta.detach().requires_grad_()
    losses = [adapted_loss(f, theta, x, y, config, create_graph=False).item() for x, y in zip(xs, ys)]
    return sum(losses) / len(losses)


def meta_train(f: modify.FlatParam, config: Config, gen: torch.Generator, maml: bool) -> None:
    """Adam on ``f.flat_param``: through the adaptation (MAML) or on the plain loss (baseline)."""
    opt = torch.optim.Adam(f.parameters(), lr=config.meta_lr)
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        xs, ys = sample_tasks(config.meta_batch, config.shots, gen)
        if maml:
            losses = [adapted_loss(f, f.flat_param, x, y, config, create_graph=True) for x, y in zip(xs, ys)]
            loss = torch.stack(losses).mean()
        else:
            loss = F.mse_loss(f(xs), ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if maml and (step % config.log_every == 0 or step == config.steps):
            print(f"step {step:5d}  meta loss {loss.item():.3f}  ({time.perf_counter() - start:.1f}s)")


def run(config: Config) -> dict[str, float]:
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    mlp = modify.Sequential(
        modify.Linear(1, config.width), modify.ReLU(),
        modify.Linear(config.width, config.width), modify.ReLU(),
        modify.Linear(config.width, 1),
    )
    f, baseline = modify.flat(mlp), modify.flat(copy.deepcopy(mlp))  # same start, own parameters
    held_out = sample_tasks(config.eval_tasks, config.shots, torch.Generator().manual_seed(config.seed + 1))

    before = evaluate(f, f.flat_param, held_out, config)
    meta_train(f, config, gen, maml=True)
    meta_train(baseline, config, torch.Generator().manual_seed(config.seed), maml=False)
    after = evaluate(f, f.flat_param, held_out, config)
    pretrained = evaluate(baseline, baseline.flat_param, held_out, config)
    print(f"post-adaptation mse on {config.eval_tasks} held-out tasks ({config.shots} shots, "
          f"{config.inner_steps} step{'s' if config.inner_steps > 1 else ''}):")
    print(f"  random init {before:.3f}   pretrained on all tasks {pretrained:.3f}   MAML {after:.3f}")
    return {"before": before, "after": after, "pretrained": pretrained}


def parse(argv: list[str] | None) -> Config:
    """``--steps 500`` etc. for every ``Config`` field; a bad value exits 2 with one line."""
    return parse_config(Config, argv, prog="maml.py", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict[str, float]:
    config = parse(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return run(config)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
