"""Pictures: models drawn as interactive treescope trees (:func:`show`)."""

from .show import show

__all__ = ["show"]
