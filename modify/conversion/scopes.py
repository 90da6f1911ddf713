"""Units grouped by the module call they ran in, so the tree keeps the original's names.

The units of one call of a submodule (``transformer.h.0``, say) run one after another; if they
hand exactly one value to the rest of the graph, they become one unit named after the
submodule's attribute (``"0"``), whose module is built from them in turn (``"attn"``, ...). A call
that hands out several values is dissolved into its parts. A submodule called twice gives the
same module object both times when both calls convert alike (a tied block stays one object).
"""

from __future__ import annotations

from itertools import groupby

from torch import nn

from .graph import Unit, build
from .trace import module_path


class Scopes:
    """Builds the tree of one graph's units, grouped by their module-call ``chains``.

    Args:
        units: the units in execution order.
        chains: each unit's module-call scopes (``nn_module_stack`` keys, outermost first).
        targets: the module path of each unit that is one kept module's call.
        output: the value the graph returns.
    """

    def __init__(self, units: list[Unit], chains: dict[Unit, tuple[str, ...]], targets: dict[Unit, str], output: object):
        self.chains, self.targets, self.output = chains, targets, output
        self.consumers: dict[object, set[Unit]] = {}
        for unit in units:
            for value in unit.inputs:
                self.consumers.setdefault(value, set()).add(unit)
        self.built: dict[str, list[nn.Module]] = {}

    def region(self, units: list[Unit], inputs: list[object], output: object, depth: int = 0, prefix: str = "") -> nn.Module:
        """The module from ``inputs`` to ``output`` over ``units``, grouped below ``depth``/``prefix``."""
        return build(self._group(units, depth, prefix), inputs, output)

    def _group(self, units: list[Unit], depth: int, prefix: str) -> list[Unit]:
        """Runs of units in one submodule call (or under one attribute path) as one unit each."""
        grouped: list[Unit] = []
        for key, run in groupby(units, key=lambda u: self._key(u, depth, prefix)):
            run = list(run)
            if key is None:
                grouped.extend(run)
                continue
            kind, path = key
            inner = (depth + 1, module_path(path)) if kind == "call" else (depth, f"{prefix}.{path}".lstrip("."))
            outputs = self._outputs(run)
            if len(outputs) != 1:
                grouped.extend(self._group(run, *inner))
                continue
            made = {u.output for u in run}
            inputs = list(dict.fromkeys(v for u in run for v in u.inputs if v not in made))
            module = self._shared(inner[1], self.region(run, inputs, outputs[0], *inner))
            if kind == "call" and module.reference_name is None:
                module.reference_name = inner[1]  # the original's module path
            grouped.append(Unit(inner[1].rsplit(".", 1)[-1], module, inputs, outputs[0]))
        return grouped

    def _outputs(self, run: list[Unit]) -> list[object]:
        inside = set(run)
        return list({u.output: None for u in run if u.output is self.output or self.consumers.get(u.output, set()) - inside})

    def _key(self, unit: Unit, depth: int, prefix: str) -> tuple[str, str] | None:
        """``("call", key)`` for a unit inside a submodule call below ``prefix``, ``("path", name)`` for
        one under an attribute path (``transformer`` of ``transformer.h.0``), else ``None``."""
        chain = self.chains.get(unit, ())
        key = chain[depth] if len(chain) > depth else self.targets.get(unit)
        if key is None:
            return None
        relative = module_path(key)[len(prefix) + 1 if prefix else 0 :].split(".")
        if len(relative) > 1:
            return "path", relative[0]
        return ("call", key) if len(chain) > depth else None

    def _shared(self, key: str, module: nn.Module) -> nn.Module:
        """An earlier module built for the same submodule if ``module`` is the same tree, else ``module``."""
        for earlier in self.built.setdefault(key, []):
            if same_tree(earlier, module):
                return earlier
        self.built[key].append(module)
        return module


def same_tree(a: nn.Module, b: nn.Module) -> bool:
    """Same classes, settings and child names throughout, and the very same tensors."""
    if a is b:
        return True
    if type(a) is not type(b) or a.extra_repr() != b.extra_repr() or list(a._modules) != list(b._modules):
        return False
    own = all(a._parameters[k] is b._parameters.get(k) for k in a._parameters) and all(
        a._buffers[k] is b._buffers.get(k) for k in a._buffers
    )
    return own and all(same_tree(a._modules[k], b._modules[k]) for k in a._modules)
