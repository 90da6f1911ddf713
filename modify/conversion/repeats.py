"""Capturing a stack of identical blocks once: most of ``torch.export``'s time is the blocks.

A model whose ``nn.ModuleList`` holds blocks that are provably identical (same classes, same
parameter and buffer shapes, no hooks, equal settings; only a ``layer_idx`` numbering the block
may differ, and no setting shared by the blocks may hold a per-layer list that differs along the
stack) is captured through a *stand-in*: a shallow copy of the model whose list holds only its
first two blocks (the model itself is not touched). The second block's part of the graph is then
repeated for every further block, its parameter and buffer paths and module stacks renamed, fed
by the previous block as the second is fed by the first. The result is the graph the whole
model's capture gives; :func:`modify.convert` checks it on the example and captures the whole
model wherever this does not hold.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import fx, nn

KEPT = 2  # blocks the stand-in keeps: the second shows how one block feeds the next
_NUMBERING = frozenset({"layer_idx"})  # attributes that number a block (its cache slot), not configure it
_STATE = frozenset({"_parameters", "_buffers", "_modules"})
_SIMPLE = (int, float, str, bool, type(None), torch.dtype, torch.device)


def repeated_blocks(root: nn.Module) -> tuple[str, int] | None:
    """The path and length of ``root``'s longest ``nn.ModuleList`` of identical blocks (3 or more)."""
    found = None
    for path, module in root.named_modules():
        if path and type(module) is nn.ModuleList and len(module) > KEPT and (found is None or len(module) > found[1]):
            if _identical(list(module)):
                found = (path, len(module))
    return found


def stand_in(root: nn.Module, path: str) -> nn.Module:
    """A shallow copy of ``root`` whose list at ``path`` holds only its first :data:`KEPT` blocks.

    Every module on the way is a ``copy.copy`` with its own ``_modules``, ``_parameters`` and
    ``_buffers`` dicts; the blocks and all other submodules are ``root``'s own objects.
    """
    twin = copy.copy(root)
    twin._parameters, twin._buffers, twin._modules = dict(root._parameters), dict(root._buffers), dict(root._modules)
    if not path:
        twin._modules = dict(itertools.islice(root._modules.items(), KEPT))
        return twin
    head, _, rest = path.partition(".")
    twin._modules[head] = stand_in(root._modules[head], rest)
    return twin


def _identical(blocks: list[nn.Module]) -> bool:
    first = list(blocks[0].named_modules(remove_duplicate=False))
    shared: list[object] = []
    for block in blocks[1:]:
        other = list(block.named_modules(remove_duplicate=False))
        if len(other) != len(first):
            return False
        for (name, a), (name_b, b) in zip(first, other):
            if name != name_b or type(a) is not type(b) or not _same_module(a, b, shared):
                return False
    return all(_uniform(obj, len(blocks)) for obj in shared)


def _same_module(a: nn.Module, b: nn.Module, shared: list[object]) -> bool:
    """Same parameter/buffer layout, no call hooks, equal settings (shared objects collected)."""
    if _layout(a._parameters) != _layout(b._parameters) or _layout(a._buffers) != _layout(b._buffers):
        return False
    if vars(a).keys() != vars(b).keys():
        return False
    for key, value in vars(a).items():
        if key in _STATE or (key in _NUMBERING and isinstance(value, int)):
            continue
        if key.startswith(("_forward", "_backward")) and (value or vars(b)[key]):
            return False  # a hook runs code of its own on each call
        if not _same_value(value, vars(b)[key], shared):
            return False
    return True


def _layout(tensors: dict) -> list[tuple]:
    return [
        (k, None) if t is None else (k, type(t), tuple(t.shape), t.dtype, t.device, t.requires_grad)
        for k, t in tensors.items()
    ]


def _same_value(a: object, b: object, shared: list[object], depth: int = 0) -> bool:
    """The same object, equal simple values, or containers/plain objects of such (two levels)."""
    if a is b:
        if not isinstance(a, _SIMPLE) and hasattr(a, "__dict__") and not isinstance(a, (nn.Module, torch.Tensor)):
            shared.append(a)  # a setting object both blocks read (a config)
        return True
    if isinstance(a, nn.Module) and isinstance(b, nn.Module):
        return _same_stateless(a, b, shared, depth)
    if type(a) is not type(b) or isinstance(a, torch.Tensor):
        return False
    if isinstance(a, _SIMPLE):
        return a == b
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y, shared, depth) for x, y in zip(a, b))
    if isinstance(a, (set, frozenset)):
        return a == b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k], shared, depth) for k in a)
    if depth < 2 and hasattr(a, "__dict__"):
        return _same_value(vars(a), vars(b), shared, depth + 1)
    return False


def _same_stateless(a: nn.Module, b: nn.Module, shared: list[object], depth: int) -> bool:
    """Two unregistered modules holding no tensors, of one class or of classes made by one
    factory (same ``forward`` code: ``transformers``' kernel wrappers), settings alike."""
    same_code = type(a).__qualname__ == type(b).__qualname__ and type(a).forward.__code__ is type(b).forward.__code__
    empty = not any(m._parameters or m._buffers or m._modules for m in (a, b))
    return same_code and empty and depth < 2 and _same_value(vars(a), vars(b), shared, depth + 1)


def _uniform(obj: object, count: int) -> bool:
    """No per-layer list in a shared setting object differs along the stack (``layer_types``)."""
    for value in vars(obj).values():
        per_layer = isinstance(value, (list, tuple)) and len(value) == count
        if per_layer and not all(_same_value(v, value[0], []) for v in value):
            return False
    return True


def repeat(graph: fx.Graph, path: str, count: int) -> bool:
    """Repeat the graph of block ``path.1`` for blocks ``2 .. count-1``; ``False`` (graph as it
    was) when the first two blocks' graphs do not show one block feeding the next alike."""
    first, second = (_segment(graph, f"{path}.{i}") for i in range(KEPT))
    if not _alike_blocks(first, second, f"{path}.0", f"{path}.1"):
        return False
    position = {n: i for i, n in enumerate(graph.nodes)}
    inside = set(second)
    exits = {n: [u for u in n.users if u not in inside] for n in second}
    if any(position[u] < position[second[-1]] for users in exits.values() for u in users):
        return False
    anchor = second[-1].next
    previous = second
    for k in range(KEPT, count):
        previous = _copy(graph, (first, second), previous, anchor, f"{path}.1", f"{path}.{k}")
    for i, node in enumerate(second):
        for user in exits[node]:
            user.replace_input_with(node, previous[i])
    return True


def _segment(graph: fx.Graph, block: str) -> list[fx.Node]:
    """The nodes computed inside ``block``'s call, and the ``get_attr``\\ s of its tensors, in order."""
    return [
        n for n in graph.nodes
        if (n.op == "get_attr" and _within(n.target, block))
        or (n.op != "get_attr" and any(path == block for path, _ in n.meta.get("nn_module_stack", {}).values()))
    ]


def _within(name: str, block: str) -> bool:
    return name == block or name.startswith(block + ".") or name.startswith(block + "@")


def _renamed(name: str, old: str, new: str) -> str:
    return new + name[len(old):] if _within(name, old) else name


def _alike_blocks(first: list[fx.Node], second: list[fx.Node], old: str, new: str) -> bool:
    """Whether ``second`` is ``first`` renamed ``old`` -> ``new``, reading ``first`` where
    ``first`` reads from before it, all else shared."""
    if not first or len(first) != len(second):
        return False
    index = {n: i for i, n in enumerate(first)}, {n: i for i, n in enumerate(second)}
    if any(u not in index[0] and u not in index[1] for n in first for u in n.users):
        return False  # the first block's values are read elsewhere than by the blocks
    for a, b in zip(first, second):
        target = _renamed(a.target, old, new) if a.op == "get_attr" else a.target
        same_call = a.op == b.op and target == b.target and _stack(a, old, new) == _stack(b, new, new)
        if not same_call or not _alike((a.args, a.kwargs), (b.args, b.kwargs), index):
            return False
    return True


def _stack(node: fx.Node, old: str, new: str) -> list[tuple[str, str, object]]:
    """``node``'s module stack as ``(key, path, class)``, block ``old`` renamed ``new``."""
    stack = node.meta.get("nn_module_stack", {})
    return [(_renamed(k, old, new), _renamed(p, old, new), kind) for k, (p, kind) in stack.items()]


def _alike(a: object, b: object, index: tuple[dict, dict]) -> bool:
    """Arguments equal up to the renaming: inner nodes at the same place, a link to the first
    block where the first reads from before it, shared nodes the same, constants equal."""
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return False
        if a in index[0] or b in index[1]:
            return a in index[0] and b in index[1] and index[0][a] == index[1][b]
        return a is b or (b in index[0] and a not in index[1])
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_alike(x, y, index) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_alike(a[k], b[k], index) for k in a)
    if isinstance(a, torch.Tensor):
        same_kind = isinstance(b, torch.Tensor) and (a.shape, a.dtype) == (b.shape, b.dtype)
        return a is b or (same_kind and torch.equal(a, b))
    return type(a) is type(b) and a == b


def _copy(
    graph: fx.Graph, blocks: tuple[list, list], previous: list[fx.Node], anchor: fx.Node, old: str, new: str
) -> list[fx.Node]:
    """One more block, before ``anchor``: the second of ``blocks`` (block ``old``) renamed
    ``new``, reading ``previous`` where the second reads the first."""
    first, second = blocks
    inner, feeds = {n: i for i, n in enumerate(second)}, dict(zip(first, previous))
    made: list[fx.Node] = []
    with graph.inserting_before(anchor):
        for node in second:
            copied = graph.node_copy(node, lambda a: made[inner[a]] if a in inner else feeds.get(a, a))
            if node.op == "get_attr":
                copied.target = _renamed(node.target, old, new)
            copied.meta = dict(node.meta)
            copied.meta["nn_module_stack"] = {k: (p, kind) for k, p, kind in _stack(node, old, new)}
            made.append(copied)
    return made
