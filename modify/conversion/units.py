"""Each value node of a traced graph as a :class:`~modify.conversion.graph.Unit`: a leaf and its inputs.

``call_module`` nodes of known layers become the layer's leaf (one object per layer, so a layer
called twice is one leaf); other kept modules stay whole (:func:`modify._core.wrapped.wrap`) when
called with one value, and are replayed by a :class:`~modify.Function` otherwise. Calls with a
primitive become it (:mod:`modify.conversion.functions`); the rest are :class:`~modify.Function`.
"""

from __future__ import annotations

from torch import fx, nn

from .._core.module import ModifyModule
from .._core.wrapped import wrap
from ..combinators import Sequential
from ..primitives.arithmetic import Add
from ..primitives.joins import Split
from .functions import ALIAS, primitive
from .graph import Unit, gather, named_fork
from .known_layers import convert_layer
from .patterns import fold_repeats, fold_rms_norms, fold_rotations
from .replay import opaque_function
from .shapes import Shapes, split_count
from .trace import attribute, scope_chain, values


class Units:
    """The units of ``graph`` (traced from ``root``), in execution order, with their scopes.

    Attributes:
        units: one :class:`Unit` per value node, aliases (``contiguous``, dropout off) removed.
        chains: each unit's module-call scopes (outermost first).
        targets: the module path of each unit that calls one kept module.
        output: the value the graph returns (a node, or the pack unit's output).
    """

    def __init__(self, root: nn.Module, graph: fx.Graph, inputs: list[fx.Node], output: str | tuple[str, ...] | None = None):
        self.root, self.inputs, self.fields = root, inputs, output
        fold_rms_norms(graph, lambda target: attribute(root, target))
        fold_rotations(graph)
        fold_repeats(graph)
        self.values = values(graph, inputs)
        modules = {n.target: root.get_submodule(n.target) for n in graph.nodes if n.op == "call_module"}
        self.modules, self.shapes = modules, Shapes(modules)
        self.alias: dict[fx.Node, fx.Node] = {}
        self.leaves: dict[int, nn.Module] = {}
        self.units: list[Unit] = []
        self.chains: dict[Unit, tuple[str, ...]] = {}
        self.targets: dict[Unit, str] = {}
        for node in graph.nodes:
            if node in self.values and node.op != "placeholder":
                self._add(node)
        self.output = self._output(next(n for n in graph.nodes if n.op == "output"))

    def _resolve(self, node: object) -> object:
        while node in self.alias:
            node = self.alias[node]
        return node

    def _add(self, node: fx.Node) -> None:
        made = self._module(node)
        if made == ALIAS:
            self.alias[node] = next(a for a in node.all_input_nodes if a in self.values)
            return
        module, inputs = made
        if isinstance(module, Split):
            count = split_count(self.shapes, node, module.split_size_or_sections, module.dim)
            node.meta["modify_tuple_length"] = count
        name = op_name(node)
        unit = Unit(name, module, [self._resolve(v) for v in inputs], node, is_add=isinstance(module, Add))
        self.units.append(unit)
        self.chains[unit] = scope_chain(node)
        if node.op == "call_module":
            self.targets[unit] = node.target

    def _module(self, node: fx.Node) -> tuple[nn.Module, list[fx.Node]] | str:
        if node.op == "call_module":
            leaf = self._layer(node)
            if leaf is not None:
                return leaf
        else:
            mapped = primitive(node, self.values, self.shapes, self.root)
            if mapped is not None:
                return mapped
        path = ".".join(filter(None, (*scope_chain(node)[-1:], op_name(node))))
        return opaque_function(self.root, node, self.values, path, self.inputs[0])

    def _layer(self, node: fx.Node) -> tuple[nn.Module, list[fx.Node]] | None:
        """A kept module called with one value and nothing else, as its leaf (one per module)."""
        module = self.modules[node.target]
        if len(node.args) != 1 or node.kwargs or node.args[0] not in self.values:
            return None
        if type(module) is nn.Dropout and module.p == 0.0:
            return ALIAS
        if id(module) not in self.leaves:
            leaf = module if isinstance(module, ModifyModule) else convert_layer(module)
            leaf = leaf if leaf is not None else wrap(module)
            if leaf is not module:
                leaf.reference_name = node.target  # the original's module path
            self.leaves[id(module)] = leaf
        return self.leaves[id(module)], [node.args[0]]

    def _output(self, node: fx.Node) -> object:
        result = node.args[0]
        if isinstance(result, dict):
            result = pick(result, self.fields, type(self.root).__name__)
        if isinstance(result, fx.Node) and result in self.values:
            return self._resolve(result)
        flat = _flatten(result)
        if not flat or not all(isinstance(v, fx.Node) and v in self.values for v in flat):
            raise TypeError(
                f"modify.convert: {type(self.root).__name__}.forward must return a tensor or a (nested) tuple of "
                f"tensors, got {_describe(result)}"
            )
        inputs = list(dict.fromkeys(self._resolve(v) for v in flat))
        pack = Unit("output", _pack(result, inputs, self._resolve), inputs, object())
        self.units.append(pack)
        self.chains[pack] = ()
        return pack.output


def pick(result: object, fields: str | tuple[str, ...] | None, owner: str) -> object:
    """The ``fields`` of a dict or ``ModelOutput`` result (default: ``logits``, else the first tensor)."""
    present = {k: v for k, v in result.items() if v is not None}
    if fields is None:
        fields = "logits" if "logits" in present else next(iter(present), None)
    names = fields if isinstance(fields, tuple) else (fields,)
    missing = [n for n in names if n not in present]
    if missing or not names:
        raise TypeError(f"modify.convert: {owner}.forward returns the fields {list(present)}; output={fields!r} names {missing}")
    return tuple(present[n] for n in names) if isinstance(fields, tuple) else present[fields]


def op_name(node: fx.Node) -> str:
    """``"c_attn"`` for a module call (its attribute name), ``"transpose"`` for an op."""
    if node.op == "call_module":
        return node.target.rsplit(".", 1)[-1]
    if node.op == "call_method":
        return node.target
    name = getattr(node.target, "__name__", type(node.target).__name__).split(".")[0].strip("_")
    return f"{name}_" if hasattr(Sequential, name) else name  # ``pow`` of ``pow.Tensor_Scalar``; ``to_``


def _flatten(value: object) -> list[object]:
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {list(value)} (return a tuple instead, e.g. return_dict=False)"
    return f"{type(value).__name__} {value!r}"[:200]


def _pack(structure: object, inputs: list[object], resolve) -> nn.Module:
    """The module taking ``inputs`` (one value or a tuple) to the nested tuple ``structure``."""
    if not isinstance(structure, (tuple, list)):
        return gather(inputs, [resolve(structure)])
    return named_fork({str(i): _pack(item, inputs, resolve) for i, item in enumerate(structure)})
