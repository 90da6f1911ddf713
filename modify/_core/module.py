"""The base classes: :class:`ModifyModule` and :class:`Leaf`."""

from __future__ import annotations

import torch

from .hooks import carries_hooks, note_hooks, noted
from .inference import Traited


class ModifyModule(torch.nn.Module, Traited):
    """Base of every module in the algebra: a ``torch.nn.Module`` from one value to one value.

    A *value* is a ``torch.Tensor`` or a (possibly nested) ``tuple`` of values. ``forward`` takes
    exactly one value and returns one value; ``__call__`` is ``torch.nn.Module``'s own, so
    forward hooks, ``torch.compile``, DDP and FSDP see ordinary modules. Putting a hook on one (or
    compiling it in place) is noted in one registry (:mod:`modify._core.hooks`): while no modify
    module was ever hooked, combinators run their subtree's leaves by their ``forward`` when
    compiled (one flat program, :mod:`modify.flat_program`), and eagerly run a whole tree as one
    generated function of its leaves (:mod:`modify._core.straight_line`); once one was, every hook
    fires as usual. Takes no constructor arguments; subclasses define their own.

    Only the combinators :class:`~modify.Sequential` and :class:`~modify.Parallel` hold
    submodules; every other module is a :class:`Leaf`. :func:`modify.traits_of` answers what a
    module is (inherited traits for leaves, inferred ones for combinators).

    Shape:
        ``forward``: one value -> one value, e.g. a tensor ``(B, T, C)`` or a tuple
        ``((B, H, T, D), (B, H, T, D), (B, H, T, D))``.

    Raises:
        NotImplementedError: calling a subclass that defines no ``forward`` (``torch.nn.Module``'s
            rule).

    Example:
        >>> import torch, modify
        >>> block = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
        >>> isinstance(block, modify.ModifyModule), isinstance(block[0], modify.ModifyModule)
        (True, True)
    """

    #: The name the reference implementation gives this module (transformers'
    #: ``transformer.h.0.attn.c_attn`` for GPT's ``c_attn``; the original module path for a
    #: converted model), or ``None``. Globs in :func:`modify.select` match it as well as the path,
    #: and adapter files name layers by it. Set on the instance by whoever builds the module
    #: (a model family, ``convert``); a module a rewriter puts in another's place takes that
    #: module's name.
    reference_name: str | None = None

    def _children_set(self) -> None:
        """Hook: ``self`` (a :func:`~modify._core.sibling.sibling`) was given its own children.

        What a class derives from its children is derived again here (a combinator's flat program).
        """

    #: ``True`` on a leaf whose ``forward`` returns its input object itself with no side effect
    #: (:class:`~modify.Identity`): a combinator may then hand the value on without the call,
    #: where nothing observes the call (no hooks, no tracing).
    passes_through: bool = False

    #: Names of parameters that are constants of the module (a quantized weight): never trained,
    #: never replaced. :func:`modify.mutable` shares them as they are and refuses to assign them.
    constant_parameters: tuple[str, ...] = ()

    # torch.nn.Module's ways to put a hook on a module (and to compile it in place), each noted in
    # the one hook registry first (modify._core.hooks), so that combinators test one flag instead
    # of every child's hooks.
    register_forward_hook = noted(torch.nn.Module.register_forward_hook)
    register_forward_pre_hook = noted(torch.nn.Module.register_forward_pre_hook)
    register_full_backward_hook = noted(torch.nn.Module.register_full_backward_hook)
    register_full_backward_pre_hook = noted(torch.nn.Module.register_full_backward_pre_hook)
    register_backward_hook = noted(torch.nn.Module.register_backward_hook)
    compile = noted(torch.nn.Module.compile)

    def __setstate__(self, state: dict) -> None:
        # Unpickled or deep-copied: the hooks the state carries reach the registry as well.
        if carries_hooks(state):
            note_hooks()
        super().__setstate__(state)

    def reset_buffers(self) -> None:
        """Recompute this module's non-persistent buffers from its configuration; by default nothing.

        The hook a leaf with computed buffers (``RotaryEmbedding``'s ``inv_freq``) overrides, as
        ``reset_parameters()`` re-initialises parameters: the checkpoint loader builds models on the
        meta device and calls it under ``torch.device(target)``, so the buffers are made on the
        target device (the meta device included) without the loader naming any class.

        Example:
            >>> import torch, modify
            >>> with torch.device("meta"):
            ...     rope = modify.RotaryEmbedding(8)
            >>> rope.reset_buffers()
            >>> rope.inv_freq.device.type
            'cpu'
        """


class Sealed:
    """Marker mixin: a block that restructuring rewriters (``fuse``) keep whole.

    A ``Sequential`` subclass whose parts are read by name (a LoRA block's ``base`` and
    ``adapter``) inherits it so that no rewriter folds its parts into one another.
    """


class Leaf(ModifyModule):
    """A module that holds parameters and buffers, never submodules.

    Subclasses list their traits as mixins and keep random initialisation in
    ``reset_parameters()`` (as ``torch.nn.Linear`` does), so rewriters can rebuild a leaf without
    re-randomising it. Takes no constructor arguments; subclasses define their own.

    A subclass may also define ``line_expression(writer, value) -> str``: its ``forward`` without
    the checks as one Python expression, which a tree's straight-line function runs in place of
    the call (rules in :mod:`modify._core.straight_line`).

    Shape:
        ``forward``: one value -> one value, as the subclass defines (see :class:`ModifyModule`).

    Raises:
        TypeError: on assigning a ``torch.nn.Module`` as an attribute, or ``add_module``.

    Example:
        >>> import torch, modify
        >>> from modify.traits import Elementwise, NonLinear, ParamFree, Unary
        >>> class Square(modify.Leaf, Unary, ParamFree, NonLinear, Elementwise):
        ...     def forward(self, x):
        ...         return x * x
        >>> Square()(torch.tensor([3.0])).tolist()
        [9.0]
        >>> sorted(t.__name__ for t in modify.traits_of(Square()))
        ['Elementwise', 'NonLinear', 'ParamFree', 'Unary']
    """

    def add_module(self, name: str, module: torch.nn.Module | None) -> None:
        """Refused: a leaf holds no submodules (``register_module`` lands here too).

        Args:
            name: the submodule's name.
            module: the submodule.

        Raises:
            TypeError: always, naming the leaf class and ``name``.

        Example:
            >>> import torch, modify
            >>> modify.ReLU().add_module("inner", torch.nn.Linear(2, 2))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            TypeError: ReLU is a leaf and cannot hold the submodule 'inner'; compose modules with ...
        """
        raise TypeError(
            f"{type(self).__name__} is a leaf and cannot hold the submodule '{name}'; "
            f"compose modules with Sequential/Parallel instead"
        )

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__} is a leaf and cannot hold the submodule '{name}' "
                f"({type(value).__name__}); compose modules with Sequential/Parallel instead"
            )
        super().__setattr__(name, value)
