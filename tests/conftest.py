"""Shared fixtures: a seeded generator, float64 helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A generator seeded the same way in every test."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_and_checks():
    """Each test starts from the same global seed, with runtime checks on."""
    import modify

    torch.manual_seed(0)
    with modify.set_checks(True):
        yield
