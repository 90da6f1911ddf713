"""A hypernetwork that writes a different small network for every sample, run with vmap.

    python examples/hypernetwork.py                  # tiny defaults: a few seconds on a CPU
    python examples/hypernetwork.py --steps 2000 --hidden 128
    python examples/hypernetwork.py --help           # every option of Config below

Every sample is a sine wave ``y = a * sin(x + phase)`` described by its code ``z = (a, sin(phase),
cos(phase))``. A ``modify.HyperNetwork`` maps each code to all the weights of a small target MLP
(built from modify primitives), so a batch of ``B`` codes gives ``B`` different networks, and
``torch.func.vmap`` runs sample ``i``'s points through network ``i`` with
``modify.functional_call``. Only the hypernetwork is trained; the target is a template whose
parameter names and shapes the hypernetwork predicts. The script prints the held-out error of
the predicted networks before and after training.

References:
    Ha, Dai & Le 2016, "HyperNetworks", arXiv:1609.09106.
    torch.func (vmap, functional_call): https://pytorch.org/docs/stable/func.html
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import modify

from command_line import opt, parse_config, positive
from sine_waves import sample_waves


@dataclass
class Config:
    steps: int = opt(300, "optimizer steps", positive(int))
    batch_size: int = opt(32, "codes (= sine waves, = predicted networks) per step", positive(int))
    points: int = opt(16, "(x, y) points per wave and step", positive(int))
    width: int = opt(16, "hidden width of the target MLP 1 -> width -> width -> 1", positive(int))
    hidden: int = opt(64, "hidden width of the hypernetwork's two layers", positive(int))
    lr: float = opt(3e-3, "Adam learning rate", positive(float))
    eval_waves: int = opt(64, "held-out waves for the before/after error", positive(int))
    seed: int = opt(0, "torch seed: data and initialisation")
    threads: int = opt(1, "torch CPU threads; tiny networks run fastest on one", positive(int))
    log_every: int = opt(100, "print the training loss every this many steps", positive(int))


def build(config: Config) -> tuple[modify.Sequential, modify.HyperNetwork]:
    target = modify.Sequential(
        modify.Linear(1, config.width), modify.Tanh(),
        modify.Linear(config.width, config.width), modify.Tanh(),
        modify.Linear(config.width, 1),
    )
    hyper = modify.HyperNetwork(input_dim=3, hidden_sizes=(config.hidden, config.hidden), target=target)
    return target, hyper


def predicted_outputs(target, hyper, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run sample ``i``'s points through the network predicted from code ``i``: ``(B, P, 1)``."""
    params = hyper(z)  # {name: (B, *shape)}
    return torch.func.vmap(lambda p, xi: modify.functional_call(target, p, xi))(params, x)


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
    target, hyper = build(config)
    z_eval, x_eval, y_eval = sample_waves(config.eval_waves, 64, gen)
    with torch.no_grad():
        before = F.mse_loss(predicted_outputs(target, hyper, z_eval, x_eval), y_eval).item()
    opt = torch.optim.Adam(hyper.parameters(), lr=config.lr)
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        z, x, y = sample_waves(config.batch_size, config.points, gen)
        loss = F.mse_loss(predicted_outputs(target, hyper, z, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % config.log_every == 0 or step == config.steps:
            print(f"step {step:5d}  train mse {loss.item():.4f}  ({time.perf_counter() - start:.1f}s)")
    with torch.no_grad():
        after = F.mse_loss(predicted_outputs(target, hyper, z_eval, x_eval), y_eval).item()
    print(f"held-out mse of the predicted networks: {before:.4f} before training, {after:.4f} after")
    print(f"hypernetwork: {sum(p.numel() for p in hyper.parameters())} parameters predicting "
          f"{sum(p.numel() for p in target.parameters())} per sample")
    return {"before": before, "after": after}


def parse(argv: list[str] | None) -> Config:
    """``--batch-size 64`` etc. for every ``Config`` field; a bad value exits 2 with one line."""
    return parse_config(Config, argv, prog="hypernetwork.py", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict[str, float]:
    return train(parse(argv))


if __name__ == "__main__":
    main()
