"""Train a small ResNet built from modify primitives on synthetic shapes, and query it with modify.select.

    python examples/resnet.py                      # about a minute on 2 CPU cores
    python examples/resnet.py --steps 300 --width 32
    python examples/resnet.py --help               # every field of ExampleConfig below

1. Builds ``modify.models.ResNet``: a 7x7 stem, two stages of ``BasicBlock`` (a residual
   connection with a 1x1 projection shortcut where the shape changes), global pooling and a
   linear classifier, every batch norm a ``BatchNorm2d`` followed by ``ElementwiseAffine``.
2. Queries it: the blocks, the projection shortcuts, every affine layer by trait, and the
   parameters that should get no weight decay (norm affines and biases), which become the
   optimizer's second parameter group. A sibling with a ``PrintShape`` after every stage shows
   the feature maps, and the model itself is left as it was.
3. Trains it with AdamW to tell four shapes apart (disk, square, horizontal bar, vertical bar),
   drawn at random places, sizes and colours on a noisy background: data that exists on every
   machine, the same for a given seed. Prints the loss as it falls and the held-out accuracy.

References:
    He et al. 2016, "Deep Residual Learning for Image Recognition", arXiv:1512.03385.
    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (AdamW), arXiv:1711.05101.
    Karpathy, nanoGPT, https://github.com/karpathy/nanoGPT (the single-file layout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import modify
from modify.models import BasicBlock, ResNet, ResNetConfig
from modify.traits import Linear, Param

from command_line import non_negative, opt, parse_config, positive

CLASSES = ("disk", "square", "horizontal bar", "vertical bar")


@dataclass
class ExampleConfig:
    # data: synthetic shapes, drawn on the fly
    image_size: int = opt(32, "pixels per side", positive(int))
    noise: float = opt(0.3, "standard deviation of the background noise", non_negative(float))
    # model: ResNet(embedding_size=width, hidden_sizes=(width, 2 * width), depths=(depth, depth))
    width: int = opt(16, "channels of the stem and the first stage", positive(int))
    depth: int = opt(1, "basic blocks per stage", positive(int))
    # training
    steps: int = opt(60, "AdamW steps", positive(int))
    batch_size: int = opt(32, "images per step", positive(int))
    lr: float = opt(3e-3, "learning rate", positive(float))
    weight_decay: float = opt(0.05, "on convolution and linear weights only", non_negative(float))
    log_every: int = opt(10, "print the mean training loss every this many steps", positive(int))
    eval_size: int = opt(256, "held-out images for the accuracy", positive(int))
    seed: int = opt(0, "seed for initialisation and data")


# ----------------------------------------------------------------------------- data

def shapes(n: int, cfg: ExampleConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, S, S)`` of one random shape each, and their labels ``(n,)``."""
    size = cfg.image_size
    labels = torch.randint(len(CLASSES), (n,), generator=gen)
    centre = torch.rand(n, 2, generator=gen) * size * 0.5 + size * 0.25  # (n, 2): row, column
    radius = (torch.rand(n, generator=gen) * 0.15 + 0.15) * size  # (n,)
    grid = torch.arange(size, dtype=torch.float32)
    dy = (grid.view(1, -1, 1) - centre[:, 0].view(-1, 1, 1)).abs()  # (n, S, 1)
    dx = (grid.view(1, 1, -1) - centre[:, 1].view(-1, 1, 1)).abs()  # (n, 1, S)
    r = radius.view(-1, 1, 1)
    masks = torch.stack(
        [
            dx**2 + dy**2 <= r**2,  # disk
            (dx <= r * 0.8) & (dy <= r * 0.8),  # square
            (dx <= r * 1.6) & (dy <= r * 0.3),  # horizontal bar
            (dx <= r * 0.3) & (dy <= r * 1.6),  # vertical bar
        ]
    )[labels, torch.arange(n)]  # (n, S, S)
    colour = torch.rand(n, 3, 1, 1, generator=gen) + 0.5
    images = masks.unsqueeze(1) * colour + cfg.noise * torch.randn(n, 3, size, size, generator=gen)
    return images, labels


# ----------------------------------------------------------------------------- queries

def show_queries(model: ResNet, cfg: ExampleConfig) -> list[dict]:
    """Print what modify.select finds in the model; return the optimizer's parameter groups."""
    print("blocks:              ", modify.select(model, BasicBlock).paths())
    print("projection shortcuts:", modify.select(model, modify.Conv2d, "*.shortcut.*").paths())
    affine = modify.select(model, modify.Leaf, Param, Linear)  # by trait: convolutions, norm affines, classifier
    kinds = sorted({type(m).__name__ for m in affine.modules()})
    print(f"Param+Linear leaves:  {len(affine)} ({', '.join(kinds)})")
    no_decay = modify.parameters(model, modify.ElementwiseAffine) + [model.head.fc.bias]
    no_decay_ids = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if id(p) not in no_decay_ids]
    print(f"weight decay on {sum(p.numel() for p in decay)} parameters, not on {sum(p.numel() for p in no_decay)}")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = modify.select(model, "stages.?").insert_after(modify.PrintShape("stage output"))
    probe.eval()(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    unchanged = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    print(f"the probe is a sibling: {type(probe).__name__}; the model's state is unchanged: {unchanged}")
    return [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def accuracy(model: ResNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(-1) == labels).float().mean().item()


def train(model: ResNet, groups: list[dict], cfg: ExampleConfig, gen: torch.Generator) -> list[float]:
    """AdamW on fresh batches; returns the loss of every step."""
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    losses = []
    model.train()
    for step in range(1, cfg.steps + 1):
        images, labels = shapes(cfg.batch_size, cfg, gen)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            window = losses[-cfg.log_every :]
            print(f"step {step:4d}  loss {sum(window) / len(window):.4f}")
    return losses


def parse_args(argv: list[str] | None) -> ExampleConfig:
    return parse_config(ExampleConfig, argv, prog="resnet.py", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    config = ResNetConfig(
        embedding_size=cfg.width, hidden_sizes=(cfg.width, 2 * cfg.width), depths=(cfg.depth, cfg.depth),
        layer_type="basic", num_classes=len(CLASSES),
    )  # fmt: skip
    model = ResNet(config)
    print(f"model: modify.models.ResNet, {sum(p.numel() for p in model.parameters())} parameters")
    groups = show_queries(model, cfg)
    held_out = shapes(cfg.eval_size, cfg, torch.Generator().manual_seed(cfg.seed + 1))
    print(f"held-out accuracy before training: {accuracy(model, *held_out):.3f} (chance {1 / len(CLASSES):.2f})")
    start = time.perf_counter()
    losses = train(model, groups, cfg, gen)
    print(f"trained {cfg.steps} steps in {time.perf_counter() - start:.1f}s: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"held-out accuracy after training:  {accuracy(model, *held_out):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
