"""Griffe extension for the API reference: render reStructuredText roles as code.

The docstrings use Sphinx roles (``:class:`~modify.Sequential```); Markdown would show them
verbatim. This turns each into inline code of the name (the last component when ``~`` is given).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    short, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


class RstRoles(griffe.Extension):
    """Replace Sphinx roles in every docstring with inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
