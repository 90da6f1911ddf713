"""Griffe extension for the API reference: read modify's torch.nn-style docstrings as Google style.

- Sphinx roles (``:class:`~modify.Sequential```), which Markdown would show verbatim, become
  inline code of the name (the last component when ``~`` is given).
- a paragraph ending in ``::`` (reStructuredText's literal block marker) ends in ``:``; the
  indented block after it renders as code either way.
- ``Example:`` (torch.nn's singular heading) becomes ``Examples:``, so the ``>>>`` lines render
  as a Python console block instead of nested quotes.
- a family's shared story is written once, on its private base (``_ConvNd``, ``_BatchNorm``), which
  the reference does not list: each public class's page shows its own summary, then the base's
  text (Args, Attributes, Raises, ...), then its own sections (Shape, Example).
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

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for cls in _classes(pkg):
            for base in _private_bases(cls):
                _merge_family_text(cls, base)


def _classes(module: griffe.Module) -> list[griffe.Class]:
    found: list[griffe.Class] = []
    for member in module.members.values():
        if member.is_alias:
            continue
        if member.is_module:
            found.extend(_classes(member))
        elif member.is_class:
            found.append(member)
    return found


def _private_bases(cls: griffe.Class) -> list[griffe.Class]:
    """The documented private bases of a public class (the family's shared text)."""
    if cls.name.startswith("_") or cls.docstring is None:
        return []
    try:
        bases = cls.resolved_bases
    except Exception:  # noqa: BLE001 - a base outside the package (torch) cannot be resolved
        return []
    return [b for b in bases if b.name.startswith("_") and b.docstring is not None and "\n\n" in b.docstring.value]


def _merge_family_text(cls: griffe.Class, base: griffe.Class) -> None:
    """``cls``'s summary, the family's paragraphs, its own, then each section once (family entries first)."""
    own_text, own_sections = _split(cls.docstring.value)
    family_text, family_sections = _split(base.docstring.value)
    summary, _, own_rest = own_text.partition("\n\n")
    _, _, family_rest = family_text.partition("\n\n")
    sections: dict[str, list[str]] = {}
    for header, body in (*family_sections, *own_sections):
        sections.setdefault(header, []).append(body)
    parts = [summary, family_rest.strip(), own_rest.strip()]
    parts += [f"{header}:\n" + "\n".join(bodies) for header, bodies in sections.items()]
    cls.docstring.value = "\n\n".join(part for part in parts if part)


_HEADER = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The paragraphs before the first section, and ``(header, indented body)`` per section."""
    lines = text.strip().split("\n")
    starts = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if not starts:
        return text.strip(), []
    ends = [*starts[1:], len(lines)]
    sections = [(_HEADER.match(lines[a]).group(1), "\n".join(lines[a + 1 : b]).rstrip()) for a, b in zip(starts, ends)]
    return "\n".join(lines[: starts[0]]).strip(), sections
