"""Shared fixtures: a seeded generator, float64 helpers."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run, so CI cannot turn red by chance; set
# HYPOTHESIS_PROFILE=explore to draw new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
