"""A hypernetwork that predicts a LoRA adapter per sample, over one shared frozen base network.

    python examples/hypernetwork_lora.py                 # tiny defaults: seconds on a CPU
    python examples/hypernetwork_lora.py --rank 8 --steps 1000
    python examples/hypernetwork_lora.py --help          # every option of Config below

1. Trains a small base MLP (built from modify primitives) on one sine wave, ``y = sin(x)``.
2. Makes ``adapted = modify.lora(base, rank)``: a sibling that shares every base parameter.
3. A ``modify.HyperNetwork(..., params=names)`` maps each wave's code ``z = (a, sin(phase),
   cos(phase))`` of ``y = a * sin(x + phase)`` to the adapter weights alone (the names of
   ``modify.lora_parameters``), so a batch of ``B`` codes gives ``B`` adapters over one base;
   ``torch.func.vmap`` runs sample ``i``'s points through adapter ``i`` with
   ``modify.functional_call(adapted, params, x, strict=False)``, the base filling in the rest.
   Only the hypernetwork trains; the base stays bit-identical.
4. Prints the held-out error of the base alone and of the predicted adapters before and after.

References:
    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
    Ha, Dai & Le 2016, "HyperNetworks", arXiv:1609.09106.
    torch.func (vmap, functional_call): https://pytorch.org/docs/stable/func.html
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import modify

from command_line import non_negative, opt, parse_config, positive
from sine_waves import sample_waves


@dataclass
class Config:
    base_steps: int = opt(300, "Adam steps training the base on y = sin(x)", non_negative(int))
    steps: int = opt(300, "Adam steps training the hypernetwork", positive(int))
    batch_size: int = opt(32, "waves (= predicted adapters) per step", positive(int))
    points: int = opt(16, "(x, y) points per wave and step", positive(int))
    width: int = opt(32, "hidden width of the base MLP 1 -> width -> width -> 1", positive(int))
    rank: int = opt(4, "rank of every predicted adapter", positive(int))
    alpha: float = opt(8.0, "adapter scale numerator: the update is scaled by alpha / rank", positive(float))
    hidden: int = opt(64, "hidden width of the hypernetwork's two layers", positive(int))
    lr: float = opt(3e-3, "Adam learning rate (both phases)", positive(float))
    eval_waves: int = opt(64, "held-out waves for the errors", positive(int))
    seed: int = opt(0, "torch seed: data and initialisation")
    threads: int = opt(1, "torch CPU threads; tiny networks run fastest on one", positive(int))
    log_every: int = opt(100, "print the training loss every this many steps", positive(int))


def train_base(config: Config, gen: torch.Generator) -> modify.Sequential:
    base = modify.Sequential(
        modify.Linear(1, config.width), modify.Tanh(),
        modify.Linear(config.width, config.width), modify.Tanh(),
        modify.Linear(config.width, 1),
    )  # fmt: skip
    opt = torch.optim.Adam(base.parameters(), lr=config.lr)
    for _ in range(config.base_steps):
        x = (torch.rand(config.batch_size * config.points, 1, generator=gen) * 2 - 1) * math.pi
        loss = F.mse_loss(base(x), torch.sin(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return base.requires_grad_(False)


def per_sample(adapted, hyper, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample ``i``'s points through the base with the adapter predicted from code ``i``: ``(B, P, 1)``."""
    adapters = hyper(z)  # {adapter name: (B, *shape)}
    return torch.func.vmap(lambda p, xi: modify.functional_call(adapted, p, xi, strict=False))(adapters, x)


def train(config: Config) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(threads)


def _train(config: Config) -> dict[str, float]:
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    base = train_base(config, gen)
    adapted = modify.lora(base, config.rank, config.alpha)
    adapter_ids = {id(p) for p in modify.lora_parameters(adapted)}
    names = [name for name, p in adapted.named_parameters() if id(p) in adapter_ids]
    hyper = modify.HyperNetwork(3, (config.hidden, config.hidden), adapted, params=names)
    z_eval, x_eval, y_eval = sample_waves(config.eval_waves, 64, gen)
    with torch.no_grad():
        base_only = F.mse_loss(base(x_eval), y_eval).item()
        before = F.mse_loss(per_sample(adapted, hyper, z_eval, x_eval), y_eval).item()
    opt = torch.optim.Adam(hyper.parameters(), lr=config.lr)
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        z, x, y = sample_waves(config.batch_size, config.points, gen)
        loss = F.mse_loss(per_sample(adapted, hyper, z, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % config.log_every == 0 or step == config.steps:
            print(f"step {step:5d}  train mse {loss.item():.4f}  ({time.perf_counter() - start:.1f}s)")
    with torch.no_grad():
        after = F.mse_loss(per_sample(adapted, hyper, z_eval, x_eval), y_eval).item()
    print(f"held-out mse: base alone {base_only:.4f}; predicted adapters {before:.4f} before training, "
          f"{after:.4f} after")
    print(modify.summary(base, adapted, hyper, names=["base (frozen)", "adapted template", "hypernetwork"]))
    print(f"each sample gets its own {sum(p.numel() for p in modify.lora_parameters(adapted))} adapter values")
    return {"base": base_only, "before": before, "after": after}


def parse(argv: list[str] | None) -> Config:
    """``--rank 8`` etc. for every ``Config`` field; a bad value exits 2 with one line."""
    return parse_config(Config, argv, prog="hypernetwork_lora.py", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict[str, float]:
    return train(parse(argv))


if __name__ == "__main__":
    main()
