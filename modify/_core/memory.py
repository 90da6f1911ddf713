"""Handing freed heap memory back to the operating system: ``release_freed_memory``, ``in_cpu_memory``."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` on another C library (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the operating system (glibc's ``malloc_trim(0)``; a no-op elsewhere).

    glibc keeps memory freed by large temporaries in its heap, where the small blocks still in use
    beside it pin it (the resident size only grows); a loop that makes and frees such temporaries
    (quantizing layer after layer, a checkpointed block's forward and recomputation) calls this
    after each round. Under ``torch.compile`` it is left out of the traced graph.

    Example:
        >>> from modify._core.memory import release_freed_memory
        >>> release_freed_memory()
    """
    if torch.compiler.is_compiling():  # a traced graph holds no call to the C library
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def in_cpu_memory(value: object) -> bool:
    """Whether ``value`` (a tensor or nested tuple of them) keeps its first tensor in CPU memory.

    Callers hand the heap back (:func:`release_freed_memory`) only around work on such values: a
    GPU model's activations are not on the C library's heap, and the call would cost for nothing.

    Example:
        >>> import torch
        >>> from modify._core.memory import in_cpu_memory
        >>> in_cpu_memory((torch.ones(2), torch.ones(1))), in_cpu_memory(())
        (True, False)
    """
    while isinstance(value, tuple) and value:
        value = value[0]
    return isinstance(value, torch.Tensor) and value.device.type == "cpu"
