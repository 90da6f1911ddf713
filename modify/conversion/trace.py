"""Tracing ``module.forward`` with ``torch.fx``, and what each node of the graph is.

The tracer keeps whole the modules that become one leaf (the ``torch.nn`` layers modify has,
modify's own modules, the classes in ``leaf_modules`` and, as ``torch.fx`` does, every other
``torch.nn`` class) and inlines the rest, recording for every node the stack of module calls it
ran in (``node.meta["nn_module_stack"]``). Nodes are then sorted into *values* (tensors or tuples
of tensors, which flow between leaves) and *meta* nodes (sizes, shapes, devices and the integer
arithmetic on them), which are folded into the leaf that uses them and recomputed there.
"""

from __future__ import annotations

import inspect
import operator
import re

import torch
from torch import fx, nn

from .._core.module import ModifyModule

_SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel"})
_SHAPE_ATTRS = frozenset({"shape", "device", "dtype", "ndim", "is_cuda"})
_IN_PLACE = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
})
_INT_OPS = frozenset({
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
    operator.neg, operator.pow, operator.getitem, len,
})


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer that keeps ``keep(module)`` modules whole and remembers where it was."""

    def __init__(self, keep):
        super().__init__()
        self.keep, self.paths = keep, []
        self.proxy_buffer_attributes = True  # ``self.bias[:, :, :T, :T]`` slices a traced buffer

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, ModifyModule) or self.keep(m) or super().is_leaf_module(m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        self.paths.append(self.path_of_module(m))
        result = super().call_module(m, forward, args, kwargs)
        self.paths.pop()
        return result


def trace(root: nn.Module, keep, kwargs: dict | None = None) -> tuple[fx.Graph, list[fx.Node]]:
    """Trace ``root.forward``; return the graph and its input placeholders, in order.

    Required positional parameters are the inputs (the first parameter if all have defaults, as
    Hugging Face's ``input_ids=None``); ``kwargs`` and parameters with defaults are fixed to
    those values.

    Raises:
        TypeError: ``*args``/``**kwargs`` or a required keyword-only parameter in ``forward``, or
            code ``torch.fx`` cannot trace (naming the module path and the construct).
    """
    inputs, concrete = _signature(root, kwargs or {})
    tracer = _Tracer(keep)
    try:
        graph = tracer.trace(root, concrete_args=concrete or None)
    except Exception as error:  # noqa: BLE001 - re-raised as the documented TypeError
        where = tracer.paths[-1] if tracer.paths else ""
        raise untraceable(root, where, _construct(error)) from error
    drop_unused(graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.target in inputs]
    return graph, placeholders


def drop_unused(graph: fx.Graph) -> None:
    """Erase unused function and method calls (``_`` of ``y, _ = attention(x)``), not in-place ones."""
    for node in reversed(list(graph.nodes)):
        in_place = str(node.target).endswith("_") or node.target in _IN_PLACE
        if node.op in ("call_function", "call_method") and not node.users and not in_place:
            graph.erase_node(node)


def untraceable(root: nn.Module, path: str, construct: str) -> TypeError:
    """The error for code that cannot be converted, naming the module path and the construct."""
    module = root.get_submodule(path) if path else root
    where = f"'{path}' ({type(module).__name__})" if path else f"the root module ({type(root).__name__})"
    return TypeError(
        f"modify.convert cannot convert {where}: {construct}. Pass its class in "
        f"leaf_modules=({type(module).__name__},) to keep it whole as an opaque leaf."
    )


def _construct(error: Exception) -> str:
    message = str(error).split("\n")[0]
    if "control flow" in message or "iterate" in message or "len(" in message:
        return f"data-dependent Python control flow on a traced tensor ({type(error).__name__}: {message})"
    return f"{type(error).__name__}: {message}"


def _signature(root: nn.Module, kwargs: dict) -> tuple[list[str], dict[str, object]]:
    name = type(root).__name__
    params = [p for p in inspect.signature(root.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    variadic = [p.name for p in params if p.kind == p.VAR_POSITIONAL]
    if variadic:
        raise TypeError(f"modify.convert: {name}.forward takes *{variadic[0]}; it must take named tensor arguments")
    required_kw = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw:
        raise TypeError(f"modify.convert: {name}.forward needs the keyword-only argument '{required_kw[0]}'")
    if not params:
        raise TypeError(f"modify.convert: {name}.forward takes no input; it must take one tensor or several")
    unknown = [k for k in kwargs if k not in {p.name for p in params}]
    if unknown:
        raise TypeError(f"modify.convert: {name}.forward takes no argument '{unknown[0]}' (from kwargs)")
    inputs = [p.name for p in params if p.default is p.empty and p.name not in kwargs]
    inputs = inputs or [next(p.name for p in params if p.name not in kwargs)]
    return inputs, {p.name: kwargs.get(p.name, p.default) for p in params if p.name not in inputs}


def is_meta(node: fx.Node) -> bool:
    """Whether ``node`` computes a size, shape, device or dtype (or integer arithmetic on them)."""
    if node.op == "call_function" and isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int)):
        return True  # symbolic size arithmetic of a torch.export graph
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] in _SHAPE_ATTRS
    if node.target in _INT_OPS or getattr(node.target, "__module__", None) == "math":  # ``math.sqrt(k.size(-1))``
        sources = [a for a in node.all_input_nodes]
        return bool(sources) and all(is_meta(a) for a in sources)
    return False


def is_value(node: fx.Node, inputs: set[fx.Node]) -> bool:
    """Whether ``node`` is a value flowing between leaves (an input or a computed tensor/tuple)."""
    if node.op == "placeholder":
        return node in inputs
    return node.op in ("call_module", "call_function", "call_method") and not is_meta(node)


def values(graph: fx.Graph, inputs: list[fx.Node]) -> set[fx.Node]:
    """The value nodes of ``graph`` that flow between leaves.

    A value computed from no input (from parameters, buffers, constants and sizes alone: a
    causal-mask slice, ``gamma.view(...)``, ``arange(T)``) flows only where a value computed
    from an input uses it (or it is returned); the steps before are replayed inside that leaf.
    """
    found = {n for n in graph.nodes if is_value(n, set(inputs))}
    constant: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "get_attr" or (node in found and node.op in ("call_function", "call_method") and all(
            a in constant or is_meta(a) for a in node.all_input_nodes
        )):
            constant.add(node)
    inner = {n for n in constant if n.users and all(u in constant for u in n.users)}
    return found - inner


def scope_chain(node: fx.Node) -> tuple[str, ...]:
    """The module calls ``node`` ran inside, outermost first (a kept module's own call excluded).

    Each is the module's path, with ``torch.fx``'s ``@<n>`` suffix for its ``n``-th later call.
    """
    chain = tuple(node.meta.get("nn_module_stack", {}))
    own = node.op == "call_module" and chain and module_path(chain[-1]) == node.target
    return chain[:-1] if own else chain


def module_path(key: str) -> str:
    """The module path of an ``nn_module_stack`` key (``"block@1"`` -> ``"block"``)."""
    return re.sub(r"@\d+$", "", key)


def attribute(root: nn.Module, target: str) -> object:
    """The object at dotted ``target`` on ``root`` (a ``get_attr`` node's target)."""
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)


def is_parameter_or_buffer(root: nn.Module, target: str) -> tuple[bool, bool]:
    """``(is_parameter, is_persistent_buffer)`` for a ``get_attr`` target."""
    owner, _, name = target.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    return name in module._parameters, name not in module._non_persistent_buffers_set

