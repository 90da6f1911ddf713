"""DDP and FSDP2 train a GPT and its LoRA sibling on CPU (gloo, 2 processes) as one process would.

One 2-process job (``torch.multiprocessing`` spawn, a free port, a deadline after which the
processes are killed) runs every scenario of :mod:`distributed_worker`; each test then checks one
scenario: parameters identical on both ranks, and losses and parameters equal to a single-process
run on the same global batches.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import distributed_worker as job
from helpers import assert_close

WORLD, DEADLINE_S = 2, 240

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(out_dir: str) -> None:
    """Spawn the workers; kill them and fail if they are not done by the deadline."""
    context = mp.start_processes(
        job.worker, args=(WORLD, free_port(), out_dir), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the distributed job did not finish within {DEADLINE_S} s")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("distributed")
    run_job(str(out_dir))
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("wrapper, kind", job.SCENARIOS)
def test_distributed_training_equals_one_process_on_the_global_batch(results, wrapper, kind):
    per_rank = [r[(wrapper, kind)] for r in results]
    for r, result in enumerate(per_rank):
        assert "error" not in result, f"rank {r}:\n{result['error']}"
    model = job.make_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected_losses = job.train(model, job.trainable(model, kind))
    expected = model.state_dict()
    rank0, rank1 = per_rank
    assert list(rank0["state"]) == list(expected)
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"{key} differs between ranks"
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    assert rank0["losses"] == rank1["losses"]
    assert_close(torch.tensor(rank0["losses"]), torch.tensor(expected_losses), atol=1e-6, rtol=1e-6)
    trained = {k for k in expected if not torch.equal(expected[k], before[k])}
    adapters = {id(p) for p in job.trainable(model, kind)}
    names = {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in adapters}
    assert trained == names  # for LoRA only the adapters moved: the frozen base is as it started
    assert len(names) == (len(expected) if kind == "gpt" else 18)  # (2 blocks x 4 + lm_head) x (A, B)
