"""``modify.show``: models as interactive treescope trees, side by side, in one offline HTML page."""

from __future__ import annotations

import html
import os
import sys
from dataclasses import replace
from pathlib import Path

import treescope
from torch import nn
from treescope import lowering
from treescope import rendering_parts as parts

from .._core.arguments import typechecked
from .tree import NEW_COLOR, SHARED_COLOR, Marks, module_node, shape_of

_STYLE = """
body { font-family: sans-serif; margin: 1em; }
.modify-show { display: flex; gap: 2em; align-items: flex-start; }
.modify-show > section { flex: 1 1 0; min-width: 0; overflow-x: auto; }
.modify-show h3 { font-size: 1em; margin: 0 0 0.5em 0; }
.legend span { border-radius: 3px; padding: 0 4px; margin-right: 1em; }
"""


def _ids(model: nn.Module) -> frozenset[int]:
    modules = model.modules()
    return frozenset(id(obj) for m in modules for obj in (m, *m.parameters(recurse=False), *m.buffers(recurse=False)))


def _shared_parameters(models: tuple[nn.Module, ...]) -> frozenset[int]:
    """Ids of the parameters that at least two of ``models`` hold."""
    holders: dict[int, int] = {}
    for model in models:
        for param in {id(p) for p in model.parameters()}:
            holders[param] = holders.get(param, 0) + 1
    return frozenset(param for param, count in holders.items() if count > 1)


def _open_paths(models: tuple[nn.Module, ...], marks: Marks) -> frozenset[str]:
    """The root, its children, and every node on the way to a part the first model lacks."""
    paths = {""}
    for model in models:
        paths.update(name for name, _ in model.named_children())
        for path, module in model.named_modules(remove_duplicate=False):
            if path and marks.is_replaced(module, path):
                steps = path.split(".")
                paths.update(".".join(steps[:i]) for i in range(len(steps)))
    return frozenset(paths)


def _section(index: int, model: nn.Module, marks: Marks) -> str:
    node = parts.build_full_line_with_annotations(module_node(model, "", "", marks))
    with treescope.abbreviation_threshold.set_scoped(1):  # a folded node reads "[3 entries...]"
        fragment = lowering.render_to_html_as_root(node, compressed=False)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    title = f"{index}: {type(model).__name__}, {total:,} parameters" + (" (first)" if marks.base is None else "")
    return f"<section><h3>{html.escape(title)}</h3>\n{fragment}\n</section>"


def _legend() -> str:
    return (
        f'<p class="legend"><span style="background:{NEW_COLOR}">new: not in model 0 (adapted or replaced)</span>'
        f'<span style="background:{SHARED_COLOR}">shared: the same parameter object in another model</span></p>'
    )


def _in_notebook() -> bool:
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


@typechecked
def show(*models: nn.Module, path: str | os.PathLike | None = None) -> str:
    """Draw models as interactive, collapsible trees (treescope), side by side.

    Each node shows its class and ``extra_repr``, its path (and reference name, where the model
    family gives one) and its traits; each parameter and buffer its dtype, shape and whether it
    trains. Given several models (a base and its siblings), the first is the reference: a
    module or parameter the first model does not hold (by identity) is marked **new** and
    highlighted, the nodes on the way to it start expanded, and parameters that two models hold
    (the same object, zero bytes copied) are marked **shared**. The page needs no network: its
    scripts and styles are inline (treescope's renderer, as penzai and equinox users know it).

    Args:
        *models: one or more ``torch.nn.Module`` (modify's or plain), left untouched.
        path: where to write the page as one self-contained HTML file (parent folders are
            created); ``None`` writes nothing.

    Returns:
        The page's HTML as ``str``. In a Jupyter notebook the page is also displayed inline.

    Raises:
        TypeError: a model that is not a ``torch.nn.Module``, or a ``path`` that is not a path.
        ValueError: no model given.

    Example:
        >>> import modify
        >>> base = modify.Sequential(proj=modify.Linear(4, 4), act=modify.ReLU())
        >>> page = modify.show(base, modify.lora(base, rank=2))
        >>> page.startswith("<!DOCTYPE html>"), "proj.lora" in page or "proj" in page, "http://" in page
        (True, True, False)
    """
    if not models:
        raise ValueError("modify.show needs at least one model")
    shapes = {path: shape_of(m) for path, m in models[0].named_modules(remove_duplicate=False)}
    marks = Marks(_shared_parameters(models), _ids(models[0]), shapes, frozenset())
    marks = replace(marks, open_paths=_open_paths(models, marks))
    sections = [_section(i, m, marks if i else replace(marks, base=None)) for i, m in enumerate(models)]
    names = ", ".join(type(m).__name__ for m in models)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>modify.show: {html.escape(names)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{_legend() if len(models) > 1 else ''}\n"
        f'<div class="modify-show">\n' + "\n".join(sections) + "\n</div>\n</body></html>\n"
    )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(page, encoding="utf-8")
    if _in_notebook():
        from IPython.display import HTML, display

        display(HTML(page))
    return page
