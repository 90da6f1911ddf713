"""modify: PyTorch models as an algebra of leaves, ``Sequential`` and ``Parallel``.

Every op is a :class:`ModifyModule` tagged with traits; networks compose only through
:class:`Sequential` and :class:`Parallel`; rewriters build new models that share every untouched
parameter with the old one.
"""

from . import traits
from ._core.checks import checks_enabled, set_checks
from ._core.errors import ModifyError, ModifyTypeError, ModifyValueError
from ._core.module import Leaf, ModifyModule
from .combinators import Combinator, Fork, Parallel, Residual, Sequential
from .functional import *  # noqa: F403
from .functional import __all__ as _functional
from .primitives import *  # noqa: F403
from .primitives import __all__ as _primitives
from .rewriting import *  # noqa: F403
from .rewriting import __all__ as _rewriting
from . import models
from ._core.inference import traits_of
from .adapters import *  # noqa: F403
from .adapters import __all__ as _adapters
from .conversion import convert
from .pictures import show

__version__ = "0.1.0"

__all__ = [
    "Combinator", "Fork", "Leaf", "ModifyError", "ModifyModule", "ModifyTypeError", "ModifyValueError",
    "Parallel", "Residual", "Sequential", "checks_enabled", "set_checks", "traits", "traits_of",
    "models", "convert", "show",
    *_primitives,
    *_functional,
    *_rewriting,
    *_adapters,
]
