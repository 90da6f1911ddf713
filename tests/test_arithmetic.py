"""Arithmetic leaves beyond the shared table: the shape-mismatch message of Add and its family."""

from __future__ import annotations

import pytest
import torch

import modify


def test_residual_shape_error_names_the_join_and_does_not_advise_broadcasting():
    model = modify.Sequential(block=modify.Residual(modify.Linear(4, 8)))
    with pytest.raises(ValueError) as info:
        model(torch.randn(2, 4))
    message = str(info.value)
    assert message.startswith("Add at 'block.2' got operands of different shapes")
    assert "(2, 4)" in message and "(2, 8)" in message
    assert "broadcast=True" not in message and "do not broadcast" in message


@pytest.mark.parametrize("op", [modify.Add, modify.Sub, modify.Mul, modify.Div])
def test_broadcast_is_advised_only_for_shapes_that_broadcast(op):
    with pytest.raises(ValueError, match="pass broadcast=True to broadcast"):
        op()((torch.ones(2, 3), torch.ones(3)))
    with pytest.raises(ValueError, match=r"\(they do not broadcast either\)$"):
        op()((torch.ones(2, 3), torch.ones(2)))
    assert op(broadcast=True)((torch.ones(2, 3), torch.ones(3))).shape == (2, 3)
