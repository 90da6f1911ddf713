"""Assertions shared by the tests."""

from __future__ import annotations

import torch


def assert_close(actual, expected, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Values (tensors or nested tuples) equal within tolerance, with the same structure."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, atol, rtol)
        return
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every state_dict entry, for checking that a module was left untouched."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_equal(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """``module``'s state_dict has the snapshot's keys and bit-identical values."""
    state = module.state_dict()
    assert list(state) == list(snapshot)
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), key
