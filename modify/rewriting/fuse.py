"""``modify.fuse``: a sibling for eager speed, adjacent pairs of leaves computed in one call.

Pairs are found inside each plain ``Sequential`` by the classes of two neighbouring children, on
the one tree walk (:func:`modify.rewriting.walk.rebuild`, whose ``post`` step sees a
``Sequential`` after its children are done). The fused leaf takes the name of the child that
holds the parameters and holds the very same parameter objects, so ``state_dict()`` keys and
parameter identities are unchanged.
"""

from __future__ import annotations

from torch import nn

from .._core.arguments import typechecked
from .._core.identity import once_per_object
from .._core.module import Sealed
from ..combinators import Parallel, Sequential
from ..primitives.activations import Dropout
from ..primitives.fusion import rule_for
from ..primitives.structure import Identity
from .walk import rebuild


def _is_identity(module: nn.Module) -> bool:
    """Leaves that return their input as is, in every mode, and plain ``Parallel``s of them only."""
    if type(module) is Parallel:
        return all(type(branch) is Identity for branch in module)
    return type(module) is Identity or (type(module) is Dropout and module.p == 0.0)


def _identity_branches(parallel: Parallel) -> Parallel:
    """``parallel`` with each ``Dropout(p=0)`` branch an ``Identity`` (the same object if there is none)."""
    old = parallel._modules
    branches = {name: Identity() if type(m) is Dropout and _is_identity(m) else m for name, m in old.items()}
    return parallel if all(branches[name] is m for name, m in old.items()) else Parallel(**branches)


def _fuse_pair(first: tuple[str, nn.Module], second: tuple[str, nn.Module]) -> tuple[str, nn.Module] | None:
    rule = rule_for(first[1], second[1])
    if rule is None:
        return None
    return ((first, second)[rule.named_as][0], rule.build(first[1], second[1]))


def _fused_children(children: dict[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    """The children with identities dropped and fusable neighbours merged, left to right."""
    out: list[tuple[str, nn.Module]] = []
    for item in children.items():
        if _is_identity(item[1]):
            continue
        fused = _fuse_pair(out[-1], item) if out else None
        if fused is None:
            out.append(item)
        else:
            out[-1] = fused
    return out


def _fused_sequence(sequence: Sequential) -> Sequential:
    """``sequence`` with its fusable adjacent pairs fused (the same object if there are none)."""
    children = _fused_children(sequence._modules)
    return sequence if children == list(sequence._modules.items()) else Sequential(**dict(children))


@typechecked
def fuse(model: nn.Module) -> nn.Module:
    """A sibling of ``model`` for eager speed: adjacent leaves computed in one call; outputs equal.

    Inside every plain ``Sequential`` (not a subclass such as ``Residual``, ``LoRA`` or a model
    class, whose shape other code relies on; a block marked :class:`~modify._core.module.Sealed`,
    such as a :class:`~modify.LoRA` block, is left whole, so ``merge_lora`` still reads it),
    neighbouring children are merged by the rules of one table (``modify.primitives.fusion``,
    which ``Sequential``'s call-time path reads too):

    | pair | fused leaf | named as |
    |---|---|---|
    | ``LayerNorm(s)``, ``ElementwiseAffine(s)`` | ``AffineLayerNorm`` (``F.layer_norm``) | the affine |
    | ``RMSNorm(s)``, ``ElementwiseAffine(s)`` | ``AffineRMSNorm`` (``F.rms_norm``) | the affine |
    | ``GroupNorm(G, C)``, ``ElementwiseAffine(C, dim=1)`` | ``AffineGroupNorm`` (``F.group_norm``) | the affine |
    | ``Linear``, ``Scale(c)`` | ``ScaledLinear`` (output scaled in place) | the Linear |
    | ``Scale(a)``, ``Scale(b)`` | ``Scale(a * b)`` | the first |

    (the affine must cover exactly the normalised axes; each fused class's ``fits`` says when a
    pair qualifies; the fused leaf reports the pair's traits), and ``Identity`` / ``Dropout(p=0)`` children are dropped (the sibling does
    not see a later change of ``p`` on the original's ``Dropout``), as is a plain ``Parallel`` whose branches are all
    ``Identity``; a ``Dropout(p=0)`` branch of a plain ``Parallel`` becomes an ``Identity``, which the ``Parallel``
    hands its value through without a call. Chains fuse left to right. A ``BatchNorm`` keeps its separate affine:
    its buffers and the affine's parameters live at two paths, which one leaf cannot keep.

    **State dict.** The fused leaf takes the name of the child that held the parameters and holds
    the same parameter objects under the same names; only parameter-free children disappear. So
    ``fuse(m).state_dict()`` has exactly ``m.state_dict()``'s keys and tensors, each loads into
    the other, and training the fused sibling trains ``m``'s parameters.

    Like ``torch.fx.experimental.optimization.fuse`` (which folds batch norms into convolutions
    for inference), but the fused leaves keep the parameters as they are, so they also train.

    Args:
        model: the model to fuse; left unchanged (its structure, parameters and outputs).

    Returns:
        The fused sibling (``model`` itself when nothing fuses). Outputs equal ``model``'s up to
        floating-point rounding (one kernel rounds differently from two).

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``.

    Example:
        >>> import torch, modify
        >>> mlp = modify.Sequential(
        ...     modify.LayerNorm(8), modify.ElementwiseAffine(8), modify.Linear(8, 8), modify.Scale(0.5))
        >>> fused = modify.fuse(mlp)
        >>> fused
        Sequential(
          (1): AffineLayerNorm((8,), eps=1e-05, bias=True)
          (2): ScaledLinear(in_features=8, out_features=8, c=0.5, bias=True)
        )
        >>> list(fused.state_dict()) == list(mlp.state_dict()), fused[0].weight is mlp[1].weight
        (True, True)
        >>> x = torch.randn(3, 8)
        >>> torch.allclose(fused(x), mlp(x), atol=1e-6)
        True
    """
    fuse_once = once_per_object(_fused_sequence)  # a Sequential placed twice is fused once, and stays shared

    def keep_sealed(path: str, module: nn.Module) -> nn.Module | None:
        return module if isinstance(module, Sealed) else None

    def fuse_sequence(path: str, original: nn.Module, new: nn.Module) -> nn.Module:
        if type(new) is Parallel:
            return _identity_branches(new)
        if type(new) is not Sequential:
            return new
        return fuse_once(new)

    return rebuild(model, keep_sealed, fuse_sequence)
