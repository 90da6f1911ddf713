"""Capturing ``forward`` with ``torch.export`` where ``torch.fx`` cannot trace it.

``torch.export.export`` (non-strict, input axes ``Dim.AUTO``: see :func:`dynamic_axes`) captures decorated
``forward``\\ s, ``**kwargs``, ``ModelOutput`` results and Python control flow on sizes, as an ATen
graph that keeps each node's module path (``nn_module_stack``) and the high-level ops
(``aten.linear``, ``aten.layer_norm``, ``aten.scaled_dot_product_attention``). :func:`capture`
turns that graph into the form :mod:`~modify.conversion.trace` gives, so one set of rules reads
both: the ops of one call of a layer that becomes a leaf are one ``call_module`` node, parameters
and buffers ``get_attr`` nodes, ATen ops with a torch equivalent that torch function or tensor
method (``aten.view`` is ``reshape``), sizes ``x.size(i)``. Axes that export had to fix to the
example's size are returned, so the converted model can refuse another size by name.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from unittest import mock

import torch
import torch._dynamo.config
import torch.fx.config
import torch.nn.functional as F
from torch import fx, nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from .repeats import repeat, stand_in
from .trace import drop_unused, untraceable

aten = torch.ops.aten
_PREFIX = "module"

# ATen overload -> (op, target) of the torch call computing the same thing from the same arguments.
_EQUIVALENT: dict[object, tuple[str, object]] = {
    aten.add.Tensor: ("call_function", torch.add),
    aten.sub.Tensor: ("call_function", torch.sub),
    aten.mul.Tensor: ("call_function", torch.mul),
    aten.div.Tensor: ("call_function", torch.div),
    aten.matmul.default: ("call_function", torch.matmul),
    aten.cat.default: ("call_function", torch.cat),
    aten.stack.default: ("call_function", torch.stack),
    aten.relu.default: ("call_function", torch.relu),
    aten.gelu.default: ("call_function", F.gelu),
    aten.silu.default: ("call_function", F.silu),
    aten.tanh.default: ("call_function", torch.tanh),
    aten.sigmoid.default: ("call_function", torch.sigmoid),
    aten.exp.default: ("call_function", torch.exp),
    aten.softmax.int: ("call_function", torch.softmax),
    aten.log_softmax.int: ("call_function", torch.log_softmax),
    aten.sum.dim_IntList: ("call_function", torch.sum),
    aten.mean.dim: ("call_function", torch.mean),
    aten.amax.default: ("call_function", torch.amax),
    aten.flatten.using_ints: ("call_function", torch.flatten),
    aten.dropout.default: ("call_function", F.dropout),
    aten.scaled_dot_product_attention.default: ("call_function", F.scaled_dot_product_attention),
    aten.view.default: ("call_method", "reshape"),
    aten.reshape.default: ("call_method", "reshape"),
    aten._unsafe_view.default: ("call_method", "reshape"),
    aten.transpose.int: ("call_method", "transpose"),
    aten.permute.default: ("call_method", "permute"),
    aten.split.Tensor: ("call_method", "split"),
    aten.split_with_sizes.default: ("call_method", "split"),
    aten.chunk.default: ("call_method", "chunk"),
    aten.contiguous.default: ("call_method", "contiguous"),
    aten.sym_size.int: ("call_method", "size"),
}
_DROPPED_KWARGS = {aten.clone.default: ("call_method", "contiguous")}  # a copy is the same value


class _Selected(nn.Module):
    """``module(*args, **kwargs)``, the ``output`` field(s) picked: what export captures."""

    def __init__(self, module: nn.Module, kwargs: dict, pick):
        super().__init__()
        self.module, self.kwargs, self.pick = module, kwargs, pick

    def forward(self, *args):
        return self.pick(self.module(*args, **self.kwargs))


def capture(
    module: nn.Module, args: tuple, kwargs: dict, pick, keep, repeated: tuple[str, int] | None = None
) -> tuple[fx.Graph, list[fx.Node], dict]:
    """The graph of ``pick(module(*args, **kwargs))``, its input nodes, and the fixed axes.

    ``keep(m)`` says which submodules become one leaf: their calls collapse to ``call_module``.
    The fixed axes are ``{(input index, axis): size}``. With ``repeated``, the path and length of
    a list of identical blocks (:func:`~.repeats.repeated_blocks`), a stand-in keeping two of
    them is captured and the second block's graph repeated for the others (:mod:`~.repeats`).

    Raises:
        TypeError: ``torch.export`` cannot capture ``forward`` (naming the construct); with
            ``repeated``, the two blocks' graphs differ.
    """
    dynamic = tuple(dynamic_axes(a) for a in args)
    captured = stand_in(module, repeated[0]) if repeated else module
    try:
        with lean_tracing():
            program = torch.export.export(_Selected(captured, kwargs, pick), args, dynamic_shapes=(dynamic,), strict=False)
    except Exception as error:  # noqa: BLE001 - re-raised as the documented TypeError
        raise untraceable(module, "", f"torch.export cannot capture it ({type(error).__name__}: {str(error).splitlines()[0]})") from error
    if _mutating(program.graph):  # functional: in-place writes (``index_put_``) become dataflow
        with warnings.catch_warnings(), lean_tracing():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notice inside
            program = program.run_decompositions({})
    graph = program.graph
    mutating = _mutating(graph)
    if mutating:
        raise untraceable(module, "", f"an in-place write torch.export left in place ({mutating[0].target})")
    inputs = _lift(program, graph)
    _drop_no_op_casts(graph)
    for node in graph.nodes:
        _normalise(node)
    if repeated and not repeat(graph, *repeated):
        raise untraceable(module, repeated[0], "its blocks' captured graphs differ")
    drop_unused(graph)  # export's ``_assert_tensor_metadata`` checks among them
    _collapse_layers(module, graph, keep)
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (pytree.tree_unflatten(list(output.args[0]), program.call_spec.out_spec),)
    fixed = {
        (i, axis): size
        for i, node in enumerate(inputs)
        for axis, size in enumerate(node.meta["val"].shape)
        if isinstance(size, int)
    }
    return graph, inputs, fixed


@contextlib.contextmanager
def lean_tracing() -> Iterator[None]:
    """``torch.export`` without what :func:`capture` never reads, a third of its time on a GPT-2:
    no stack trace per node (``torch.fx.config.do_not_emit_stack_traces``) and no fake-tensor
    dispatch cache (its entries cost symbolic-shape work on every op and a one-pass trace hits
    few of them); both settings restored after. The graph is the one torch's defaults give.

    Example:
        >>> import torch
        >>> from modify.conversion.export import lean_tracing
        >>> with lean_tracing():
        ...     program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(3, 2),))
        >>> [(n.target, n.meta.get("stack_trace")) for n in program.graph.nodes if n.op == "call_function"]
        [(<OpOverload(op='aten.linear', overload='default')>, None)]
        >>> torch.fx.config.do_not_emit_stack_traces, torch._dynamo.config.fake_tensor_cache_enabled
        (False, True)
    """
    no_cache = torch._dynamo.config.patch(fake_tensor_cache_enabled=False)
    with no_cache, mock.patch.object(torch.fx.config, "do_not_emit_stack_traces", True):
        yield


def _mutating(graph: fx.Graph) -> list[fx.Node]:
    """The nodes of ``graph`` calling an ATen op that writes in place (its schema says so)."""
    return [n for n in graph.nodes if isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable]


def dynamic_axes(example: torch.Tensor) -> dict[int, object]:
    """The axes export keeps symbolic: every axis of a sequence input (rank at most 3), the batch
    axis of an image (rank 4 or more: the symbolic image sizes of windowed attention, Swin's,
    take export minutes; images keep the example's size, another size is refused by name)."""
    axes = range(example.dim()) if example.dim() <= 3 else range(min(1, example.dim()))
    return {axis: Dim.AUTO for axis in axes}


def _strip(path: str) -> str:
    return path[len(_PREFIX) + 1 :] if path.startswith(f"{_PREFIX}.") else ""


def _lift(program, graph: fx.Graph) -> list[fx.Node]:
    """Parameter/buffer placeholders as ``get_attr`` nodes, constants inlined; the user inputs."""
    signature = program.graph_signature
    owned = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    constants = signature.inputs_to_lifted_tensor_constants
    for node in [n for n in graph.nodes if n.op == "placeholder"]:
        if node.name in owned:
            with graph.inserting_before(node):
                attr = graph.create_node("get_attr", _strip(owned[node.name]))
            attr.meta = dict(node.meta)
            node.replace_all_uses_with(attr)
            graph.erase_node(node)
        elif node.name in constants:
            tensor = program.constants[constants[node.name]]
            for user in list(node.users):
                user.args = fx.node.map_arg(user.args, lambda n, node=node: tensor if n is node else n)
                user.kwargs = fx.node.map_arg(user.kwargs, lambda n, node=node: tensor if n is node else n)
            graph.erase_node(node)
    names = set(signature.user_inputs)
    return [n for n in graph.nodes if n.op == "placeholder" and n.name in names]


def _drop_no_op_casts(graph: fx.Graph) -> None:
    """``aten.to`` calls as ``run_decompositions`` leaves them: none where the input keeps its
    dtype and device, else ``aten._to_copy``."""
    for node in list(graph.nodes):
        if node.op != "call_function" or getattr(node.target, "overloadpacket", None) is not aten.to:
            continue
        source, value = node.args[0], node.meta.get("val")
        before = source.meta.get("val") if isinstance(source, fx.Node) else None
        if not isinstance(value, torch.Tensor) or not isinstance(before, torch.Tensor):
            continue
        if (value.dtype, value.device) == (before.dtype, before.device):
            node.replace_all_uses_with(source)
            graph.erase_node(node)
        else:  # the copy ``run_decompositions`` makes of it
            node.target, node.args = aten._to_copy.default, (source,)
            node.kwargs = {"dtype": value.dtype, "device": value.device}


def _normalise(node: fx.Node) -> None:
    """The node's ATen target as the torch call it equals; its module stack keyed by path."""
    stack = {}
    for key, (path, kind) in node.meta.get("nn_module_stack", {}).items():
        inner = _strip(path)
        if inner:
            suffix = key[key.rindex("@") :] if "@" in key else ""
            stack[inner + suffix] = (inner, kind)
    node.meta["nn_module_stack"] = stack
    if node.op != "call_function":
        return
    if node.target in _EQUIVALENT:
        node.op, node.target = _EQUIVALENT[node.target]
    elif node.target in _DROPPED_KWARGS:
        node.op, node.target = _DROPPED_KWARGS[node.target]
        node.kwargs = {}


def _collapse_layers(root: nn.Module, graph: fx.Graph, keep) -> None:
    """Each call of a kept layer (one value in, one out) as one ``call_module`` node."""
    groups: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        for key, (path, _) in node.meta.get("nn_module_stack", {}).items():
            if keep(root.get_submodule(path)):
                groups.setdefault(key, []).append(node)
                break
    for key, members in groups.items():
        inside = set(members)
        sources = {a for n in members for a in n.all_input_nodes if a not in inside and _is_value(a)}
        leaving = [n for n in members if any(u not in inside for u in n.users) or n.op == "output"]
        if len(sources) != 1 or len(leaving) != 1:
            continue
        path = members[0].meta["nn_module_stack"][key][0]
        with graph.inserting_after(leaving[0]):
            call = graph.create_node("call_module", path, (next(iter(sources)),))
        call.meta = {**leaving[0].meta, "nn_module_stack": _outer(leaving[0], key)}
        leaving[0].replace_all_uses_with(call)
        for node in reversed(members):
            graph.erase_node(node)


def _outer(node: fx.Node, key: str) -> dict:
    """The module stack of ``node`` up to and including ``key`` (a kept call's own entry last)."""
    stack = {}
    for k, v in node.meta["nn_module_stack"].items():
        stack[k] = v
        if k == key:
            break
    return stack


def _is_value(node: fx.Node) -> bool:
    """A tensor computed or taken as input (not a parameter, buffer or size)."""
    return node.op != "get_attr" and isinstance(node.meta.get("val"), torch.Tensor)
