"""Low-level file helpers shared by every stage: atomic writes.

A file is first written next to its destination under a hidden temporary name that keeps the
destination's extension (so format-by-extension writers still work), flushed to disk, then renamed over
the destination. A crash leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = ["atomic_path", "atomic_write", "atomic_write_text", "write_nifti"]


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
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
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


def write_nifti(array: np.ndarray, affine: np.ndarray, dest: str | Path) -> Path:
    """Write ``array`` (voxel order i, j, k) with a 4x4 RAS ``affine`` (mm) as NIfTI-1, atomically.

    Both the qform and the sform are set to ``affine`` with code 1 (scanner anatomical), so every reader
    (nibabel, ITK/SimpleITK, 3D Slicer) sees the same geometry.
    """
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_write(dest, lambda tmp: nib.save(img, str(tmp)))
