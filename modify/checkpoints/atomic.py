"""Saving a checkpoint folder atomically: it holds the previous checkpoint or the new one, never a mix.

:func:`atomic_folder` is the one saving routine under ``save_pretrained``, ``save_adapters`` and
the examples' training state. The new checkpoint is written completely into a fresh staging
folder beside the old one (same parent, so the same filesystem), flushed to disk (``fsync`` of
every file and folder), then swapped with the old folder in one step: ``renameat2(2)`` with
``RENAME_EXCHANGE`` (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs, ...), as atomic as ``rename(2)``
of a file. Where the filesystem cannot exchange (other systems, NFS), the old folder is renamed
aside and the new one renamed in: between those two renames the path briefly does not exist,
and a process killed exactly there leaves the folder under its aside name, which the next save
puts back before anything else. Staging and aside folders, named ``.<folder>.saving-<pid>-<id>``
and ``.<folder>.replaced-<pid>-<id>``, are removed by the save that made them or, if it was
killed, by the next save once that process has ended.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import glob
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

STAGING, REPLACED = "saving", "replaced"
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
_LIBC = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
# Errors of renameat2 that mean "this system or filesystem cannot exchange": fall back to two renames.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@contextmanager
def atomic_folder(
    folder: str | os.PathLike, *, replaces: Iterable[str] = ("*",), owner: str = "save"
) -> Iterator[Path]:
    """Write a checkpoint folder so that, at every instant, it holds the old checkpoint or the new one.

    A context manager giving an empty staging folder to write the new checkpoint into (with any
    library: safetensors, ``huggingface_hub``, ``torch.save``, ``json``). When the block ends
    without an error, the files of the old folder that ``replaces`` does not match are carried
    over (hard links; copies where a link is refused), everything is flushed to disk, and the
    staging folder takes the old one's place in one atomic swap (see the module's docstring for
    the filesystems where a brief window remains); then the old folder is deleted. When the
    block raises, or the process dies, the old folder is untouched; what the failed save left is
    removed at once or, after a kill, by the next save to the same folder. A symbolic link to a
    folder is followed: the folder it names is replaced and the link kept.

    Args:
        folder: the checkpoint folder to create or replace (its missing parents are created).
        replaces: ``fnmatch`` patterns of the old folder's entries that the new checkpoint
            replaces (deleted even if it writes no file of that name); others are kept.
            ``("*",)``, the default: the folder holds the new files only.
        owner: who saves, e.g. ``"GPT.save_pretrained"``, to begin error messages with.

    Yields:
        The staging folder (a ``Path``), empty.

    Raises:
        OSError: the save failed; the folder is as it was. The message names the owner, the
            folder and the cause (``os.strerror``'s words: "No space left on device", "File too
            large", "Permission denied", a file where the folder should be); ``errno`` is the
            cause's (``NotADirectoryError``, ``PermissionError``, ... as ``OSError`` picks), and
            the error is chained to the writing library's own (safetensors' ``SafetensorError``,
            which is not an ``OSError``, included). Other errors of the block pass unchanged.

    Example:
        >>> import os, tempfile
        >>> from pathlib import Path
        >>> from modify.checkpoints import atomic_folder
        >>> with tempfile.TemporaryDirectory() as parent:
        ...     folder = Path(parent) / "checkpoint"
        ...     for step in (1, 2):
        ...         with atomic_folder(folder) as staging:
        ...             _ = (staging / "step.txt").write_text(str(step))
        ...     (folder / "step.txt").read_text(), os.listdir(parent)
        ('2', ['checkpoint'])
    """
    target = _target(folder, owner)
    try:
        _recover(target)
        _remove_leftovers(target)
        staging = _new_sibling(target, STAGING)
    except OSError as error:
        raise _save_error(owner, folder, error) from error
    try:
        yield staging
        _carry_over(target, staging, tuple(replaces))
        _sync_tree(staging)
        old = _swap_in(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, (OSError, SafetensorError)):
            raise _save_error(owner, folder, error) from error
        raise
    _sync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # if this fails, the next save removes it


def _target(folder: str | os.PathLike, owner: str) -> Path:
    """The real path of ``folder`` (symbolic links followed), checked for a file in the way.

    Raises:
        NotADirectoryError: ``folder`` or a folder above it is a file.
        OSError: a folder above cannot be searched (permission), naming ``folder``.
    """
    given = Path(folder)
    try:
        in_the_way = next((above for above in (given, *given.parents) if above.exists() and not above.is_dir()), None)
        target = given.resolve()
    except OSError as error:
        raise _save_error(owner, folder, error) from error
    if in_the_way is not None:
        message = f"{owner}: cannot save to '{given}': '{in_the_way}' is a file, not a folder"
        raise NotADirectoryError(errno.ENOTDIR, message)
    return target


def _save_error(owner: str, folder: str | os.PathLike, error: BaseException) -> OSError:
    """An ``OSError`` naming ``owner``, ``folder`` and the cause, with the cause's ``errno`` when known."""
    code = getattr(error, "errno", None)
    found = re.search(r"os error (\d+)", str(error))  # safetensors' (Rust's) "... (os error 28)"
    code = code if code is not None else (int(found.group(1)) if found else None)
    cause = os.strerror(code) if code is not None else str(error)
    message = f"{owner}: saving to '{folder}' failed ({cause}); the folder is as it was before this save"
    return OSError(code, message) if code is not None else OSError(message)


def _new_sibling(target: Path, kind: str) -> Path:
    """A fresh folder ``.<name>.<kind>-<pid>-<id>`` beside ``target`` (its parent created if needed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _leftovers(target: Path, kind: str) -> list[Path]:
    """Staging or aside folders of ``target`` whose saving process has ended, newest first."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{kind}-(\d+)-[0-9a-f]+")
    found = [p for p in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*") if pattern.fullmatch(p.name)]
    ended = [p for p in found if not _alive(int(pattern.fullmatch(p.name).group(1)))]
    return sorted(ended, key=lambda p: p.lstat().st_mtime_ns, reverse=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _recover(target: Path) -> None:
    """Put back an old folder left aside by a save killed between its two renames (no exchange)."""
    aside = _leftovers(target, REPLACED) if target.parent.is_dir() else []
    if aside and not os.path.lexists(target):
        os.rename(aside[0], target)
        _sync_folder(target.parent)


def _remove_leftovers(target: Path) -> None:
    if target.parent.is_dir():
        for path in _leftovers(target, STAGING) + _leftovers(target, REPLACED):
            shutil.rmtree(path)


def _carry_over(target: Path, staging: Path, replaces: tuple[str, ...]) -> None:
    """Hard-link the old folder's entries that ``replaces`` does not match (and the new one lacks) into ``staging``."""
    if not target.is_dir():
        return
    os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
    for entry in os.scandir(target):
        destination = staging / entry.name
        if any(fnmatch.fnmatchcase(entry.name, p) for p in replaces) or os.path.lexists(destination):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), destination)
        elif entry.is_dir():
            shutil.copytree(entry.path, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, destination)


def _link_or_copy(source: str, destination: str | Path) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a filesystem without hard links, or a file on another device
        shutil.copy2(source, destination)


def _sync_tree(folder: Path) -> None:
    """``fsync`` every file and folder under ``folder`` (deepest first), so a crash finds them complete."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
        _sync_folder(Path(root))


def _sync_folder(folder: Path) -> None:
    if os.name != "posix":  # a folder cannot be opened to flush it there
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); ``False`` where the system cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None)  # glibc 2.28+; None elsewhere
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(second))


def _swap_in(staging: Path, target: Path) -> Path | None:
    """Put ``staging`` at ``target``'s path; return where the old folder now is (``None``: there was none)."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return None
    if _exchange(staging, target):
        return staging  # the exchange left the old folder at the staging path
    aside = target.parent / f".{target.name}.{REPLACED}-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, aside)
    try:
        os.rename(staging, target)  # between these two renames the path does not exist
    except OSError:
        os.rename(aside, target)
        raise
    return aside
