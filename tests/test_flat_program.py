"""The flat program a combinator runs under ``torch.compile`` (``modify.flat_program``).

Each test compiles with dynamo's ``eager`` backend (tracing and guards, no inductor) and compares
with the uncompiled model, or counts the graphs dynamo made through a backend that keeps them.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import modify
from modify import Identity, Linear, Parallel, ReLU, Residual, Scale, Sequential
from modify._core import hooks
from modify.flat_program import FLAT
from modify.models import GPT, GPTConfig

from helpers import assert_close


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    """No cache entries carried over; and no hook seen yet (the registry's flag is sticky for the
    process: a hook put on a module by an earlier test sends combinators to their loop)."""
    monkeypatch.setattr(hooks, "_hooked", False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def counting_backend() -> tuple[list[torch.fx.GraphModule], object]:
    graphs = []

    def keep(graph, inputs):
        graphs.append(graph)
        return graph.forward

    return graphs, keep


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def test_compiled_gpt_reads_its_leaves_not_the_combinators_between_them():
    model, ids = tiny_gpt(), torch.randint(0, 64, (2, 8))
    guards = torch._dynamo.explain(model)(ids).out_guards
    names = [guard.name for guard in guards]
    assert names and not any("_modules" in name for name in names)
    assert any(FLAT in name for name in names)
    assert_close(torch.compile(model, backend="eager", fullgraph=True)(ids), model(ids))


def test_trees_of_one_structure_share_one_graph():
    graphs, keep = counting_backend()
    model, ids = tiny_gpt(), torch.randint(0, 64, (2, 8))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)  # tied to the token embedding: both change
    for m in (model, twin, model):
        assert_close(torch.compile(m, backend=keep)(ids), m(ids))
    assert len(graphs) == 1


def test_a_child_set_after_building_is_run():
    model = Sequential(Linear(4, 4), ReLU())
    x = torch.randn(3, 4)
    model.add_module("2", Scale(3.0))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert_close(compiled(x), 3.0 * torch.relu(model[0](x)))
    setattr(model, "1", Scale(-1.0))
    assert_close(compiled(x), -3.0 * model[0](x))


def test_a_change_below_makes_the_programs_above_stale_and_the_compiled_model_follows_it():
    inner = Sequential(Scale(2.0), ReLU())
    model = Sequential(Linear(4, 4), inner)
    x = torch.randn(3, 4)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert_close(compiled(x), torch.relu(2.0 * model[0](x)))
    setattr(inner, "0", Scale(-5.0))
    assert_close(compiled(x), torch.relu(-5.0 * model[0](x)))


def test_rebuilt_sibling_runs_its_own_children_and_the_original_is_unchanged():
    block = Residual(Linear(4, 4))
    program = block.__dict__[FLAT]
    new = block.rebuilt({"0": block[0], "1": Parallel(Identity(), Scale(0.0)), "2": block[2]})
    x = torch.randn(2, 4)
    assert_close(torch.compile(new, backend="eager", fullgraph=True)(x), x)
    assert block.__dict__[FLAT] is program
    assert_close(torch.compile(block, backend="eager", fullgraph=True)(x), x + block.block(x))


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_run_their_own_leaves(copier):
    model = Sequential(Linear(4, 4), Residual(Linear(4, 4)))
    twin = copier(model)
    with torch.no_grad():
        twin[0].weight.zero_()
    units = twin.__dict__[FLAT][1]
    assert all(any(unit is leaf for leaf in twin.modules()) for unit in units)
    x = torch.randn(2, 4)
    assert_close(torch.compile(twin, backend="eager", fullgraph=True)(x), twin(x))
    assert not torch.equal(twin(x), model(x))


def test_parallel_given_the_wrong_number_of_values_raises_under_compile():
    model = Sequential(modify.Copy(3), Parallel(Scale(1.0), Scale(2.0)))
    with pytest.raises(ValueError, match="Parallel"):
        torch.compile(model, backend="eager")(torch.ones(2))


def test_hooks_fire_under_compile():
    model = Sequential(Linear(4, 4), Sequential(ReLU(), Scale(2.0)))
    seen = []
    model[1][1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    torch.compile(model, backend="eager")(torch.randn(3, 4))
    assert seen == [torch.Size([3, 4])]


def test_compiled_norm_affine_pairs_run_as_one_layer_norm_call_as_in_eager_mode():
    graphs, keep = counting_backend()
    model, ids = tiny_gpt(), torch.randint(0, 64, (2, 8))
    assert_close(torch.compile(model, backend=keep, fullgraph=True)(ids), model(ids))
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    norms = [t for t in targets if t is torch.nn.functional.layer_norm]
    assert len(norms) == 2 * 2 + 1 and torch.addcmul not in targets


@pytest.mark.parametrize("hooked", [False, True], ids=["flat program", "loop"])
def test_a_deeply_nested_tree_compiles_by_either_path(hooked, monkeypatch):
    """Dynamo inlines each level of the tree with a dozen of its own frames: a path that kept
    three frames of ours per level ran out of Python's recursion limit about 30 levels down."""
    monkeypatch.setattr(hooks, "_hooked", hooked)
    model = Linear(4, 4)
    for _ in range(40):
        model = Sequential(model, Scale(1.0))
    x = torch.randn(2, 4)
    assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), model(x))
