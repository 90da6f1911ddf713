"""Saves under a file-size limit, for the fault tests of :mod:`test_atomic_saves`.

``python fault_worker.py JOBS.json`` imports torch and modify once, then runs each job (kind,
folder, limit in bytes, mode) in a forked child whose ``RLIMIT_FSIZE`` is the limit: mode
``"kill"`` restores ``SIGXFSZ``'s default action, so the kernel kills the child at the first
byte written past the limit; mode ``"efbig"`` leaves it ignored (as Python starts), so that
write fails with ``EFBIG`` as on a full disk, and the child reports the error it got. One line
of JSON per job on stdout: the child's exit signal, or the error's type, errno, message and
cause.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

import torch

import modify
from modify.models import GPT, GPTConfig

SHARD_BYTES = 40_000  # several shards of the tiny GPTs' ~110 kB


def make_gpt(seed: int) -> GPT:
    """A tiny GPT of ``2 + seed`` blocks (so checkpoints of two seeds cannot mix) drawn from ``seed``."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2 + seed, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.copy_(torch.randn(p.shape))
    return gpt


def make_adapted(seed: int) -> torch.nn.Module:
    """A LoRA sibling of ``make_gpt(0)`` with adapters of rank ``2 + 2 * seed`` drawn from ``seed``."""
    adapted = modify.lora(make_gpt(0), rank=2 + 2 * seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in modify.lora_parameters(adapted):
            p.copy_(torch.randn(p.shape))
    return adapted


def save(kind: str, seed: int, folder: str) -> None:
    """Save checkpoint ``seed`` of ``kind`` (``single``, ``sharded`` or ``adapters``) to ``folder``."""
    if kind == "adapters":
        modify.save_adapters(make_adapted(seed), folder)
    else:
        make_gpt(seed).save_pretrained(folder, max_shard_size=SHARD_BYTES if kind == "sharded" else "5GB")


def run_child(job: dict, write) -> None:
    """In the forked child: limit file sizes, save, report; never returns."""
    code = 0
    try:
        if job["mode"] == "kill":
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["limit"], resource.RLIM_INFINITY))
        save(job["kind"], job["seed"], job["folder"])
        report = {"saved": True}
    except BaseException as error:  # noqa: BLE001 - reported to the test, which asserts on it
        cause = error.__cause__
        report = {"saved": False, "type": type(error).__name__, "is_oserror": isinstance(error, OSError),
                  "errno": getattr(error, "errno", None), "message": str(error),
                  "cause": type(cause).__name__ if cause is not None else None}
        code = 1
    os.write(write, json.dumps(report).encode())
    os._exit(code)


def run_job(job: dict) -> dict:
    """Fork a child for ``job``; its report, or how it was killed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        run_child(job, write)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    report = json.loads(text) if text else {"saved": False}
    report["signal"] = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
    return {**job, **report}


if __name__ == "__main__":
    torch.set_num_threads(1)
    with open(sys.argv[1]) as file:
        jobs = json.load(file)
    for job in jobs:
        print(json.dumps(run_job(job)), flush=True)
