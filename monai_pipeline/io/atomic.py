"""Atomic writes, folder swaps and folder locks: the one place these patterns live.

A file is first written next to its destination under a hidden temporary name that keeps the
destination's extension (so format-by-extension writers still work), flushed to disk, then renamed over
the destination. A crash leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

if sys.platform != "win32":
    import fcntl

__all__ = ["atomic_path", "atomic_write", "atomic_write_text", "replace_folder", "staged_folder", "lock_folder",
           "release_locks", "held_locks", "FolderLockedError"]


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it to ``dest``.

    The temporary name ends with ``dest``'s own name, so ``.nii.gz`` / ``.nrrd`` writers keep working.
    On any exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{uuid.uuid4().hex[:8]}-{dest.name}"
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except OSError as err:
            if err.filename is None and err.errno is not None:  # name the file the user asked for
                raise OSError(err.errno, os.strerror(err.errno), str(dest)) from err
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(dest: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def atomic_write(dest: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        writer(tmp)
    return Path(dest)


def replace_folder(tmp: str | Path, final: str | Path) -> Path:
    """Move the complete folder ``tmp`` to ``final`` (same parent), replacing an old ``final`` only now.

    The old folder is renamed aside first and removed after the swap (restored if the swap fails), so a
    crash leaves the old folder, the new one, or a hidden ``.old-*`` copy beside it, never a mix.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.parent / f".old-{uuid.uuid4().hex[:8]}-{final.name}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    try:  # make the renames durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return final


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike, lock: str | os.PathLike | None = None, purpose: str = "run") -> Iterator[Path]:
    """Build a folder under a hidden temporary name beside ``final`` and swap it in whole when complete.

    Yields the (created, empty) temporary folder. When the block ends without an exception the folder
    replaces ``final`` (:func:`replace_folder`: an older ``final`` is removed only then); on any exception it
    is removed and ``final`` is left as it was. With ``lock`` (a folder) the lock is held for the duration
    (:func:`lock_folder`); a first failed build leaves no empty parent folder behind. Hidden leftovers of a
    killed earlier build of the same ``final`` (``.tmp-*``/``.old-*``) are removed first, under the lock.
    """
    final = Path(final)
    before = held_locks()
    if lock is not None:
        lock_folder(lock, purpose)
    created = not final.parent.exists()
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}-{final.name}"
    done = False
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        leftover = re.compile(rf"^\.(tmp|old)-[0-9a-f]{{8}}-{re.escape(final.name)}$")
        for p in final.parent.iterdir():
            if p != tmp and leftover.match(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)  # left by an interrupted build
        tmp.mkdir()
        yield tmp
        replace_folder(tmp, final)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if created and not done and final.parent.is_dir() and not any(final.parent.iterdir()):
            final.parent.rmdir()
        release_locks(keep=before)


class FolderLockedError(RuntimeError):
    """Another process holds the lock of an output folder."""


_HELD_LOCKS: dict[str, int] = {}


def lock_folder(folder: str | Path, purpose: str = "run") -> Path:
    """Take an exclusive lock on ``folder`` until :func:`release_locks` or the process ends.

    A second process that asks for the same folder gets :class:`FolderLockedError` naming the holder, so
    two runs never interleave their checkpoints or outputs. The lock is an ``flock`` on the hidden file
    ``.<folder name>.monai-pipeline.lock`` beside the folder (nothing is written inside it): the operating system releases it when the holder exits in any way,
    SIGKILL included, so a killed run never leaves a stale lock. Under ``torchrun`` only rank 0 locks
    (the ranks of one run share the folder). Taking a lock this process already holds is a no-op.

    Returns:
        the lock file's path.
    """
    folder = Path(folder).resolve()
    lock = folder.parent / f".{folder.name}.monai-pipeline.lock"
    key = str(folder)
    if key in _HELD_LOCKS or int(os.environ.get("RANK", "0")) != 0:
        return lock
    folder.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":  # pragma: no cover - no flock; the run goes on unlocked
        return lock
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderLockedError(f"{folder}: in use by {holder}; wait for it to finish or choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{purpose} pid {os.getpid()}".encode(), 0)
    _HELD_LOCKS[key] = fd
    return lock


def held_locks() -> set[str]:
    """Folders this process holds locks on."""
    return set(_HELD_LOCKS)


def release_locks(keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Release this process's folder locks, except those in ``keep`` (as :func:`held_locks` names them)."""
    for key in [k for k in _HELD_LOCKS if k not in keep]:
        os.close(_HELD_LOCKS.pop(key))
