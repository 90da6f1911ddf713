"""``modify.mutable``: siblings whose parameters may be replaced by any tensor, e.g. predicted ones.

Follows torch-mutable-modules (K. Nishi): a hypernetwork ``net_1`` predicts ``net_2``'s weight and
bias, they are assigned as non-leaf tensors, in-place ops may follow, and ``loss.backward()``
reaches ``net_1``. Unlike it, the original module is never modified (its parameters are not
cloned or replaced), the sibling's ``state_dict()`` reports the tensors in use, ``.to()`` moves
them, tied weights stay tied, ``copy.deepcopy`` works and applying it twice is a no-op.

Each parameter of the model gets one *slot*; every (module, name) that held that parameter reads
the slot, so assigning one name of a tied pair assigns both. A slot holding an ``nn.Parameter`` is
listed by ``parameters()``; one holding any other tensor is not (it is not a leaf to optimise),
but ``state_dict()`` and attribute access report it under its name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .._core.arguments import typechecked
from .._core.checks import is_compiling
from .._core.identity import once_per_object
from .._core.sibling import Derived, derived_class, sibling
from .._core.module import ModifyModule
from ..combinators import Combinator
from .walk import rebuild


class _Slot:
    """The tensor in use under one or more (module, name) positions; ``shape`` is fixed."""

    __slots__ = ("tensor", "shape", "owners", "original")

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.shape, self.owners, self.original = tensor, tensor.shape, [], tensor

    def assign(self, value: torch.Tensor) -> None:
        self.tensor = value
        for owner, _ in self.owners:
            owner._sync_parameters()

    def __deepcopy__(self, memo: dict) -> _Slot:
        new = object.__new__(_Slot)
        memo[id(self)] = new
        new.tensor = copy.deepcopy(self.tensor, memo) if self.tensor.is_leaf else _detached_copy(self.tensor, memo)
        new.shape, new.owners = self.shape, copy.deepcopy(self.owners, memo)
        new.original = None  # a deep copy shares nothing with the original model
        return new


def _detached_copy(tensor: torch.Tensor, memo: dict) -> torch.Tensor:
    """A deep copy cannot copy an autograd graph: the copy is a leaf with the same values."""
    if id(tensor) not in memo:
        memo[id(tensor)] = tensor.detach().clone().requires_grad_(tensor.requires_grad)
    return memo[id(tensor)]


class _Shared(torch.Tensor):
    """A still-shared parameter as a mutable sibling's attribute reads it: in-place ops on it raise.

    ``m.weight += 1`` in grad mode raises PyTorch's leaf error, but under ``torch.no_grad()``, for a
    frozen parameter or inside ``torch.nn.init`` (which runs under ``no_grad``) PyTorch would write
    into the original model's parameter. Reading the parameter gives this alias (same storage,
    gradients flow to the parameter, ``.grad`` is the parameter's), whose in-place ops raise
    instead (DESIGN §4); so do views of it (``torch.nn.init.orthogonal_`` writes through one).
    Every other op returns a plain tensor.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func == _GRAD:
                return args[0]._base.grad  # the shared parameter's own gradient
            name = getattr(func, "__name__", "")
            target = kwargs.get("out", kwargs.get("tensor", args[0] if args else None))
            in_place = name in _IN_PLACE or (name.endswith("_") and not name.endswith("__")) or "out" in kwargs
            if in_place and isinstance(target, _Shared):
                problem = (f"mutable: in-place {name} on a parameter still shared with the original model; "
                           "assign a new tensor first (m.weight = m.weight + 1)")
                if torch.is_grad_enabled() and target.requires_grad and getattr(func, "__module__", "") != "torch.nn.init":
                    problem = f"a leaf Variable that requires grad is being used in an in-place operation ({problem})"
                raise RuntimeError(problem)
            result = func(*args, **kwargs)
        if isinstance(result, torch.Tensor) and result._is_view() and args and isinstance(args[0], _Shared):
            return result.as_subclass(_Shared)  # a view of a shared parameter is guarded too
        return result


_GRAD = torch.Tensor.grad.__get__
_IN_PLACE = {f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
                                      "xor", "lshift", "rshift")} | {"__setitem__"}


def _guarded(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a :class:`_Shared` alias whose in-place ops raise (``tensor`` itself under ``torch.compile``)."""
    return tensor if is_compiling() else tensor.as_subclass(_Shared)


class _Mutable(Derived, nn.Module):
    """Mixin of mutable siblings: parameter names read and write slots."""

    _slots: dict[str, _Slot]

    def __getattr__(self, name: str):
        # ``_parameters`` first: ``torch.func.functional_call`` swaps tensors in there
        slots = self.__dict__.get("_slots")
        if slots is not None and name in slots:
            slot = slots[name]
            value = self.__dict__["_parameters"].get(name)
            if value is None:
                return slot.tensor
            if value is slot.original and name not in self._constants:
                return _guarded(value)
            return value
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: object) -> None:
        slots = self.__dict__.get("_slots")
        if slots is None or name not in slots:
            super().__setattr__(name, value)
            return
        slot = slots[name]
        if isinstance(value, _Shared) and slot.original is not None and value.data_ptr() == slot.original.data_ptr():
            return  # the guarded alias of the shared parameter written back: nothing changes
        where = f"{type(self).__name__}.{name} at '{self.__dict__.get('_path') or '<root>'}'"
        if name in self._constants:
            raise TypeError(f"{where} is a constant of the module (a frozen quantized weight); it cannot be assigned")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where} takes a tensor, got {type(value).__name__}")
        if value.shape != slot.shape:
            raise ValueError(f"{where} has shape {tuple(slot.shape)}, cannot assign one of shape {tuple(value.shape)}")
        if _kind(value) != _kind(slot.tensor):
            raise TypeError(f"{where} holds {slot.tensor.dtype}, cannot assign a tensor of dtype {value.dtype}")
        slot.assign(value)

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get("_slots", {}):
            raise TypeError(f"cannot delete {type(self).__name__}.{name}; assign another tensor instead")
        super().__delattr__(name)

    def _sync_parameters(self) -> None:
        """``_parameters`` lists the slots that hold ``nn.Parameter``s, in the original order."""
        kept = {name: value for name, value in self._parameters.items() if value is None}
        self._parameters.clear()
        for name in self._order:
            if name in kept:
                self._parameters[name] = None
            elif isinstance(self._slots[name].tensor, nn.Parameter):
                self._parameters[name] = self._slots[name].tensor

    def _apply(self, fn, recurse: bool = True):
        if recurse:
            for child in self.children():
                child._apply(fn)
        for slot in self._slots.values():
            slot.assign(_converted(slot.tensor, fn))
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = fn(buffer)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        for name in self._order:
            value = self._slots[name].tensor if name in self._slots else None
            if value is not None:
                destination[prefix + name] = value if keep_vars else value.detach()
        saved = self._parameters
        self.__dict__["_parameters"] = {}
        try:
            super()._save_to_state_dict(destination, prefix, keep_vars)
        finally:
            self.__dict__["_parameters"] = saved

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        for name, slot in self._slots.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing.append(key)
            elif state_dict[key].shape != slot.shape:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(state_dict[key].shape)} from "
                    f"checkpoint, the shape in current model is {tuple(slot.shape)}."
                )
            else:
                current = slot.tensor
                value = state_dict[key].detach().to(current.device, current.dtype).clone()
                slot.assign(nn.Parameter(value, requires_grad=current.requires_grad))
        rest = {k: v for k, v in state_dict.items() if not (k.startswith(prefix) and k[len(prefix) :] in self._slots)}
        saved = self._parameters
        self.__dict__["_parameters"] = {}
        try:
            super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing, unexpected, errors)
        finally:
            self.__dict__["_parameters"] = saved


def _converted(tensor: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` (``.to()``, ``.double()``, ...) applied without touching the original parameter."""
    if not isinstance(tensor, nn.Parameter):
        return fn(tensor)  # differentiable: a predicted weight keeps its graph
    with torch.no_grad():
        moved = fn(tensor)
    if moved is tensor:
        return tensor
    new = nn.Parameter(moved, requires_grad=tensor.requires_grad)
    if tensor.grad is not None:
        with torch.no_grad():
            new.grad = fn(tensor.grad)
    return new


def _kind(tensor: torch.Tensor) -> tuple[bool, bool]:
    """(floating, complex): a parameter takes tensors of its own kind of dtype, any width."""
    return tensor.is_floating_point(), tensor.is_complex()


def _sibling_maker() -> Callable[[nn.Module, str], nn.Module]:
    """``(module, path) ->`` its mutable sibling (children included), one per module and one slot per parameter."""
    slot_of = once_per_object(_Slot)

    def mutable_sibling(module: nn.Module, path: str) -> nn.Module:
        children = {n: None if c is None else once(c, f"{path}.{n}" if path else n) for n, c in module._modules.items()}
        clone = sibling(module, cls=derived_class(_Mutable, type(module)), children=children)
        clone.__dict__["_path"] = path  # named in assignment errors (the first path of a shared module)
        clone.__dict__["_order"] = tuple(module._parameters)
        clone.__dict__["_slots"] = {}
        clone.__dict__["_constants"] = module.constant_parameters if isinstance(module, ModifyModule) else ()
        for name, parameter in module._parameters.items():
            if parameter is not None:
                slot = slot_of(parameter)
                slot.owners.append((clone, name))
                clone._slots[name] = slot
        clone._sync_parameters()
        return clone

    once = once_per_object(mutable_sibling)
    return once


@typechecked
def mutable(model: nn.Module) -> nn.Module:
    """A sibling of ``model`` whose parameters may be assigned any tensor, keeping gradients.

    The sibling starts with ``model``'s parameters (shared: zero bytes copied). ``m.weight =
    tensor`` replaces the tensor in use, only in the sibling; the tensor may be a non-leaf (e.g.
    predicted by a hypernetwork, so ``loss.backward()`` reaches the predictor) and in-place ops on
    it (``m.weight += 1``) are then recorded by autograd. An in-place op on a parameter still
    shared with ``model`` raises (PyTorch's leaf error in grad mode; a clear error under
    ``no_grad``, for a frozen parameter and for ``torch.nn.init``, which writes under ``no_grad``),
    so ``model`` is never touched: reading a still-shared parameter as an attribute gives an alias
    of it (same storage, gradients reach the parameter, its ``.grad`` is the parameter's) whose
    in-place ops raise; ``parameters()`` and ``state_dict(keep_vars=True)`` give the parameter
    objects themselves.

    - ``state_dict()`` reports the tensors in use under the original names, ``load_state_dict``
      assigns new parameters (copies of the loaded values) instead of writing into shared ones.
    - ``.to()`` / ``.double()`` / ``.cuda()`` move the tensors in use: assigned tensors
      differentiably, shared parameters into new parameters (``model`` keeps its own).
    - Tied weights stay tied: every name of a tied parameter reads one slot, so assigning one
      name assigns all of them.
    - ``parameters()`` lists the slots that hold ``nn.Parameter``s; an assigned plain or non-leaf
      tensor is not a parameter (but is in ``state_dict()``).
    - ``copy.deepcopy`` works; assigned non-leaf tensors are copied as leaves with the same values.
    - ``isinstance`` and traits are preserved; ``mutable(mutable(m)) is mutable(m)``.
    - A module's constant parameters (``constant_parameters``: the frozen weight of a
      ``QuantizedLinear``, so ``mutable(quantize(model))`` works) are shared and read as they
      are; assigning one is a ``TypeError``. Its other tensors (a bias) are mutable as any.

    Every leaf of the tree (plain ``torch.nn`` modules with their children included) becomes a
    mutable sibling; combinators are rebuilt around them.

    Args:
        model: any module; left unchanged.

    Returns:
        The mutable sibling (``model`` itself if it is already mutable).

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``; on assignment, a constant parameter, a value that is not a
            tensor, or a tensor of another kind of dtype (an integer tensor for a floating
            parameter), naming the module's path; ``del m.weight`` (assign another tensor instead).
        ValueError: on assignment, a tensor whose shape differs from the parameter's (naming the
            module's path).

    Example:
        >>> import torch, modify
        >>> net_1 = torch.nn.Linear(2, 3)                    # predicts net_2's weight and bias
        >>> net_2 = modify.mutable(modify.Linear(2, 1))
        >>> predicted = net_1(torch.ones(2))
        >>> net_2.weight, net_2.bias = predicted[:2].view(1, 2), predicted[2:]
        >>> net_2.weight += 1                                # in place, recorded by autograd
        >>> net_2(torch.ones(4, 2)).sum().backward()
        >>> net_1.weight.grad is not None
        True
    """
    mutable_sibling = _sibling_maker()

    def pre(path: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, Combinator) or (isinstance(module, _Mutable) and _all_mutable(module)):
            return None if isinstance(module, Combinator) else module
        return mutable_sibling(module, path)

    return rebuild(model, pre)


def _all_mutable(module: nn.Module) -> bool:
    return all(isinstance(m, _Mutable) for m in module.modules())
