"""The documentation cannot rot: every ```python block under docs/ runs, and the site builds.

How a page runs: its ```python blocks execute in order in one namespace (a fresh one per page),
in a temporary working directory, after ``torch.manual_seed(0)``. A ```text block that follows a
python block with only blank lines between is that block's expected stdout, compared exactly
(trailing spaces ignored). A block whose info string holds ``title="Not executed: <reason>"`` is
skipped; the reason is the block's visible title on the rendered page. A page that shows a
third-party library's call next to ours says so with ``<!-- docs-test: requires peft -->`` and
is skipped, naming the package, where that package is not installed. Tracebacks point at the
page and the line inside it (``File "docs/how-to/lora.md", line 42``).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_scripts" not in p.parts)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w-]*)(?P<info>.*)$")
_SKIP = re.compile(r'title="Not executed: [^"]+"')
_REQUIRES = re.compile(r"<!-- docs-test: requires ([\w, .-]+) -->")


@dataclass
class Block:
    """One fenced block: its language, info string, first code line (1-based) and code."""

    lang: str
    info: str
    line: int
    code: str
    end: int
    expected: str | None = None


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown page, in order, dedented to its fence's indentation.

    ``line`` is the 1-based number of the block's first code line, ``end`` the 0-based index of
    its closing fence (a fence inside a tab or admonition is indented; so is its code).
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, ticks = match["indent"], match["ticks"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        if end == len(lines):
            raise ValueError(f"unclosed ``` fence opened at line {i + 1}")
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
        blocks.append(Block(match["lang"], match["info"].strip(), i + 2, "\n".join(body) + "\n", end))
        i = end + 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    """The page's python blocks, each with the ```text block right after it as expected output."""
    lines = page.read_text().splitlines()
    blocks = fenced_blocks(page.read_text())
    found = []
    for k, block in enumerate(blocks):
        if block.lang != "python":
            continue
        following = blocks[k + 1] if k + 1 < len(blocks) else None
        between = lines[block.end + 1 : following.line - 2] if following else []
        if following is not None and following.lang == "text" and not any(s.strip() for s in between):
            block.expected = following.code
        found.append(block)
    return found


def _normalise(output: str) -> str:
    return "\n".join(line.rstrip() for line in output.strip("\n").splitlines())


def run_page(page: Path) -> int:
    """Execute a page's python blocks in one namespace; return how many ran.

    Raises:
        AssertionError: naming the page, block and line, with the block's traceback, when a block
            raises or prints something other than its ```text block.
    """
    name = page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else str(page)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    torch.manual_seed(0)
    ran = 0
    blocks = python_blocks(page)
    for number, block in enumerate(blocks, start=1):
        if _SKIP.search(block.info):
            continue
        where = f"{name}, python block {number} of {len(blocks)} (line {block.line})"
        # Pad with newlines so tracebacks give the line number inside the Markdown page.
        code = compile("\n" * (block.line - 1) + block.code, name, "exec")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
        except Exception:
            raise AssertionError(f"{where} raised:\n{traceback.format_exc()}") from None
        printed, shown = _normalise(out.getvalue()), _normalise(block.expected or "")
        if block.expected is not None and printed != shown:
            lines = difflib.unified_diff(shown.splitlines(), printed.splitlines(), "page", "printed", lineterm="")
            diff = "\n".join(lines)
            raise AssertionError(f"{where} printed\n{printed}\nbut the page shows\n{shown}\n\n{diff}")
        ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for requirement in _REQUIRES.findall(page.read_text()):
        for package in requirement.replace(",", " ").split():
            if importlib.util.find_spec(package) is None:
                pytest.skip(f"{page.name} shows {package}'s API, which is not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with _restore_torch_state():
        run_page(page)


@contextlib.contextmanager
def _restore_torch_state():
    """Undo what a page may leave behind: default dtype, threads, compiled graphs, a process group."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_every_page_is_checked() -> None:
    """Pages exist, and no python block is silently skipped by a malformed fence."""
    assert PAGES, "no pages under docs/"
    for page in PAGES:
        opened = sum(1 for line in page.read_text().splitlines() if re.match(r"^\s*```python", line))
        assert opened == len(python_blocks(page)), page


def test_harness_compares_output_and_names_the_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 2\nprint(x)\n```\n\n```text\n2\n```\n\n"
        '```python title="Not executed: demo"\nraise SystemExit\n```\n\n'
        "```python\nprint(x + 1)\n```\n\n```text\n4\n```\n"
    )
    with pytest.raises(AssertionError, match=r"(?s)block 3 of 3 \(line 17\) printed\n3\n.*shows\n4"):
        run_page(page)
    page.write_text("```python\n\n1 / 0\n```\n")
    with pytest.raises(AssertionError, match=r'(?s)page.md", line 3.*ZeroDivisionError'):
        run_page(page)


# -- the API reference covers the public API ------------------------------------------------


def _documented_objects() -> list[object]:
    """The objects the reference pages render: each ``::: name`` and a module's public members."""
    objects = []
    for page in (DOCS / "reference").glob("*.md"):
        for name in re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M):
            obj = _resolve(name)
            objects.append(obj)
            if inspect.ismodule(obj):
                objects.extend(_module_members(obj))
    return objects


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _module_members(module: object) -> list[object]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__  # type: ignore[attr-defined]
        ]
    return [getattr(module, n) for n in names]


def test_api_reference_covers_every_public_name() -> None:
    import modify

    documented = {id(obj) for obj in _documented_objects()}
    public = [("modify", n) for n in modify.__all__] + [("modify.models", n) for n in modify.models.__all__]
    missing = [
        f"{mod}.{name}" for mod, name in public
        if id(getattr(importlib.import_module(mod), name)) not in documented and not inspect.ismodule(
            getattr(importlib.import_module(mod), name)
        )
    ]
    assert not missing, f"public names without an API reference entry under docs/reference/: {missing}"


# -- the site builds -------------------------------------------------------------------------


def _docs_tools_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return None


@pytest.mark.skipif(
    _docs_tools_missing() is not None,
    reason=f"{_docs_tools_missing()} is not installed (pip install -e '.[docs]')",
)
def test_site_builds_strict_without_warnings(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    index = (tmp_path / "site" / "index.html").read_text()
    remote = re.findall(r'<(?:link|script)[^>]*(?:href|src)="(https?://[^"]*)"', index)
    assert not remote, f"the site loads assets from the network: {remote}"


def test_site_fetches_nothing_from_the_network() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^\s*font: false", config, flags=re.M), "material must not load Google Fonts"
    plugins = re.findall(r"^  - ([\w-]+)", config.split("plugins:", 1)[1].split("\n\n", 1)[0], flags=re.M)
    assert not {"social", "privacy", "optimize"} & set(plugins), f"plugins that download must stay off: {plugins}"

