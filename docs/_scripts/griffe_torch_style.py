"""Griffe extension for the API reference: read modify's torch.nn-style docstrings as Google style.

- Sphinx roles (``:class:`~modify.Sequential```), which Markdown would show verbatim, become
  inline code of the name (the last component when ``~`` is given).
- a paragraph ending in ``::`` (reStructuredText's literal block marker) ends in ``:``; the
  indented block after it renders as code either way.
- ``Example:`` (torch.nn's singular heading) becomes ``Examples:``, so the ``>>>`` lines render
  as a Python console block instead of nested quotes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)
_LITERAL = re.compile(r"::\n\n")


def _as_code(match: re.Match[str]) -> str:
    short, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


class TorchStyleDocstrings(griffe.Extension):
    """Rewrite Sphinx roles and ``Example:`` headings in every docstring before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_as_code, obj.docstring.value)
            text = _LITERAL.sub(":\n\n", text)
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", text)
