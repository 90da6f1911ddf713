"""The demo's text: two corpora found on this machine, and three tokenizers.

Corpus A is Python code, corpus B English prose: the standard library's own source files (else
torch's), split by ``ast`` into code without comments and docstrings, and the docstrings. Nothing is
downloaded and the corpora are deterministic (sorted files, a bounded number of characters).
Tokenizers: one token per character; GPT-2's 256 single-byte tokens; a checkpoint folder's own.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import torch


def source_files() -> list[Path]:
    """Python files that exist wherever this runs: the standard library, else torch's own."""
    for root in (Path(sysconfig.get_path("stdlib")), Path(torch.__file__).parent):
        files = sorted(root.glob("*.py"))
        if files:
            return files
    return []


def split_source(text: str) -> tuple[str, list[str]]:
    """Python source -> (its code without comments and docstrings, its docstrings)."""
    tree = ast.parse(text)
    docstrings = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                docstrings.append(doc)
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree), docstrings


def embedded_corpora(max_chars: int) -> tuple[str, str]:
    """Corpus A (code) and corpus B (docstrings), each cut at ``max_chars`` characters."""
    code, prose = [], []
    for path in source_files():
        try:
            file_code, docstrings = split_source(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue  # e.g. test data with deliberate syntax errors
        code.append(file_code)
        prose.extend(docstrings)
        if sum(map(len, code)) >= max_chars and sum(map(len, prose)) >= max_chars:
            break
    return "\n\n".join(code)[:max_chars], "\n\n".join(prose)[:max_chars]


class CharTokenizer:
    """One token per character, over the characters of the given texts."""

    name = "characters"

    def __init__(self, *texts: str):
        self.chars = sorted(set().union(*texts))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class GPT2ByteTokenizer:
    """GPT-2's 256 single-byte tokens: exact GPT-2 token ids, one per UTF-8 byte, never merged.

    GPT-2 numbers its byte tokens 0..255 in the order of its ``bytes_to_unicode`` table: printable
    bytes first, then the rest (so space is 220 and newline 198).
    """

    name = "GPT-2 single-byte tokens"

    def __init__(self):
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        self.bytes = printable + [b for b in range(256) if b not in printable]
        self.index = {b: i for i, b in enumerate(self.bytes)}

    def encode(self, text: str) -> list[int]:
        return [self.index[b] for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(self.bytes[i] for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """The checkpoint folder's own tokenizer, through ``transformers`` (local files only)."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.name = f"{type(self.tokenizer).__name__} from {folder}"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))
