"""Atomic writes: a file or folder on disk is the old one or the new one, never half of each.

Every file the package writes goes through here. A writer writes a temporary sibling
(``.<name>.tmp-<pid>-<token>``, in the same folder, so on the same file system), which is
flushed and fsynced and then renamed over the target with :func:`os.replace`; the folder is
fsynced last, so the rename itself survives a power cut. On any error, or a
:class:`KeyboardInterrupt`, the temporary is removed and the target is left as it was.

- :func:`atomic_path` yields the temporary's path, for writers that take a path
  (``AnnData.write_h5ad``, ``Figure.savefig``, ``torch.save``); :func:`atomic_file`
  yields an open file; :func:`write_text` writes a string.
- :func:`atomic_files` writes several files, each atomically, and renames them into place
  one after another only once all of them are written (a reader of a pair checks that the
  two belong together, see ``pp/_persistence.py``).
- :func:`atomic_dir` writes a whole folder as a temporary sibling and swaps it in. On Linux
  the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so a reader sees the old or the new
  folder and never neither. Elsewhere (or on a file system without it) the old folder is
  renamed away (``.<name>.old-<pid>-<token>``) and the new one renamed in: between the two
  renames, a few microseconds, the target does not exist; a process killed there leaves
  the old folder under its ``.old-`` name, and the next :func:`atomic_dir` on the target
  (or :func:`recover_dir`, which the loaders call) renames it back.

A process killed mid-write leaves its temporary behind, never a half-written target; the
next write of the same target removes the temporaries of processes that no longer run.
``overwrite=False`` refuses an existing target with :class:`FileExistsError` before
anything is written. A full disk (``ENOSPC``, or a write that fails with the disk full)
raises :class:`OSError` with ``errno.ENOSPC``, naming the target and the free bytes; the
partial temporary is removed first. ``_disk.check_free_space`` refuses a large write before
it starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL = 1 << 20
"""Free bytes below which a failed write is taken for a full disk (torch's writer reports
a full disk as a bare ``RuntimeError``)."""


def _sibling(target: Path, kind: str) -> Path:
    """A fresh hidden sibling of ``target``: ``.<name>.<kind>-<pid>-<token><suffix>``.

    The suffix is kept: writers such as ``savefig`` and ``write_h5ad`` read the format
    from it.
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return target.parent / f".{target.name}.{kind}-{token}{target.suffix}"


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"))


def _owner_alive(sibling: Path, kind: str) -> bool:
    """Whether the process that made ``sibling`` still runs (on this machine)."""
    pid = sibling.name.rpartition(f".{kind}-")[2].split("-", 1)[0]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writers of ``target`` left; returns them."""
    target = Path(target)
    stale = [p for p in _siblings(target, "tmp") if not _owner_alive(p, "tmp")]
    for path in stale:
        _remove(path)
        logger.info("Removed %s, left by a write of %s that was killed.", path, target)
    return stale


def fsync_dir(path: str | os.PathLike) -> None:
    """Fsync a folder, so that the renames in it are on disk (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a folder
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Fsync a file, or every file and folder of a tree."""
    if path.is_dir():
        for root, _, names in os.walk(path):
            for name in names:
                _fsync_tree(Path(root) / name)
            fsync_dir(root)
        return
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def refuse_existing(target: str | os.PathLike, overwrite: bool) -> None:
    """Raise :class:`FileExistsError` when ``target`` exists and ``overwrite`` is false."""
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(
            f"{target} already exists; pass overwrite=True to replace it, or choose "
            "another path (it was left untouched)"
        )


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _disk_full(error: BaseException, target: Path) -> OSError | None:
    """The clear error for ``error``, raised writing ``target``, when the disk ran full."""
    free = _free_bytes(target.parent)
    full = isinstance(error, OSError) and error.errno in _FULL
    nearly = isinstance(error, OSError | RuntimeError) and free is not None and free < _NEARLY_FULL
    if not (full or nearly):
        return None
    left = "" if free is None else f" ({free:,} bytes free)"
    return OSError(
        errno.ENOSPC,
        f"The disk ran out of space while writing {target}{left}; nothing was written "
        "there and what was there before is unchanged. Free some space, or write elsewhere",
    )


@contextlib.contextmanager
def _cleaned_on_error(temporary: Path, target: Path) -> Iterator[None]:
    """Remove ``temporary`` on any error; a full disk becomes one clear :class:`OSError`."""
    try:
        yield
    except BaseException as error:
        translated = _disk_full(error, target) if isinstance(error, Exception) else None
        _remove(temporary)
        if translated is not None:
            raise translated from error
        raise


def _prepare(target: str | os.PathLike, overwrite: bool) -> Path:
    target = Path(target)
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    return target


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` atomically.

    The folder of ``target`` is created. With ``overwrite=False`` an existing ``target``
    raises :class:`FileExistsError` before anything is written.
    """
    target = Path(target)
    with _written(target, overwrite) as temporary:
        yield temporary
        _fsync_tree(temporary)
        refuse_existing(target, overwrite)  # it may have appeared meanwhile
        os.replace(temporary, target)
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(
    target: str | os.PathLike,
    mode: str = "w",
    *,
    overwrite: bool = True,
    encoding: str | None = "utf-8",
) -> Iterator[IO]:
    """Yield an open temporary file; on success it replaces ``target`` atomically."""
    with atomic_path(target, overwrite=overwrite) as temporary:
        binary = "b" in mode
        with open(temporary, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()


def write_text(target: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; returns the path."""
    with atomic_file(target, overwrite=overwrite) as handle:
        handle.write(text)
    return Path(target)


@contextlib.contextmanager
def atomic_files(
    targets: Sequence[str | os.PathLike], *, overwrite: bool = True
) -> Iterator[list[Path]]:
    """Yield temporary paths for ``targets``; once all are written, rename each into place.

    The renames come after every file is written and fsynced, in the order of ``targets``;
    a kill between two of them leaves the later temporaries complete, so a reader that
    finds the files do not belong together can take the temporary instead (a roll-forward).
    """
    paths = [Path(t) for t in targets]
    for path in paths:
        refuse_existing(path, overwrite)
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_written(path, overwrite)) for path in paths]
        yield temporaries
        for temporary in temporaries:
            _fsync_tree(temporary)
        for path, temporary in zip(paths, temporaries):
            os.replace(temporary, path)
        fsync_dir(paths[0].parent)


@contextlib.contextmanager
def _written(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary for ``target``, removed unless it was renamed into place."""
    target = _prepare(target, overwrite)
    temporary = _sibling(target, "tmp")
    with _cleaned_on_error(temporary, target):
        yield temporary


def pending(target: str | os.PathLike) -> list[Path]:
    """The complete-or-not temporaries of ``target`` whose writers no longer run, newest first."""
    target = Path(target)
    left = [p for p in _siblings(target, "tmp") if not _owner_alive(p, "tmp")]
    return sorted(left, key=lambda p: p.stat().st_mtime, reverse=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):  # not Linux, or a libc without it
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, f"Could not swap {b} for its new version: {os.strerror(code)}")


def recover_dir(target: str | os.PathLike) -> Path | None:
    """Put back the folder that a killed :func:`atomic_dir` swap left renamed away.

    Only when ``target`` does not exist: the old folder is then the newest complete one.
    Returns the recovered path, or ``None``.
    """
    target = Path(target)
    if os.path.lexists(target):
        return None
    backups = [p for p in _siblings(target, "old") if not _owner_alive(p, "old")]
    if not backups:
        return None
    newest = max(backups, key=lambda p: p.stat().st_mtime)
    os.rename(newest, target)
    fsync_dir(target.parent)
    logger.warning("Restored %s from %s, left by a save that was killed.", target, newest)
    return target


def _link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link ``source`` (a file or a tree) to ``destination``; copy where links fail."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=link)
    elif source.is_symlink():
        os.symlink(os.readlink(source), destination)
    else:
        link(str(source), str(destination))


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike,
    *,
    overwrite: bool = False,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder ``target``.

    Parameters
    ----------
    target
        The folder to write (its parent is created).
    overwrite
        Replace an existing ``target``; when false, an existing one raises
        :class:`FileExistsError` before anything is written.
    keep
        ``keep(name)`` is true for the entries of an existing ``target`` that the new folder
        keeps when the writer did not write them (hard links, or copies): e.g. the files of
        another model saved with another prefix. Default: none are kept.
    """
    target = Path(target)
    recover_dir(target)
    if Path.cwd().resolve().is_relative_to(target.resolve()):
        raise ValueError(
            f"{target} is the current folder, or holds it, and cannot be swapped for a new "
            "version; save into a folder of its own (e.g. model.save('model'))."
        )
    if os.path.lexists(target) and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another path")
    target = _prepare(target, overwrite)
    temporary = _sibling(target, "tmp")
    with _cleaned_on_error(temporary, target):
        temporary.mkdir()
        yield temporary
        old = target.is_dir()
        if old and keep is not None:
            for entry in target.iterdir():
                if keep(entry.name) and not os.path.lexists(temporary / entry.name):
                    _link_or_copy(entry, temporary / entry.name)
        _fsync_tree(temporary)
        refuse_existing(target, overwrite)
        if not old:
            os.rename(temporary, target)
        elif not _exchange(temporary, target):
            away = _sibling(target, "old")
            os.rename(target, away)
            os.rename(temporary, target)  # between the two renames: no target
            fsync_dir(target.parent)
            _remove(away)
        fsync_dir(target.parent)
    _remove(temporary)  # after an exchange: the old folder
