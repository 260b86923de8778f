"""2D slice images and masks (TIFF, PNG, JPEG): reading, naming, pairing and writing.

Slice folders (the LGG layout) hold ``<patient>_<n>.<ext>`` images with ``<patient>_<n>_mask.<ext>`` masks
(0/255). Arrays are read in the file's own (row, column[, channel]) order; masks written here take MONAI's
(column, row) order, as the slice stacks hold them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import atomic_path
from monai_pipeline.io.images import to_numpy
from monai_pipeline.io.naming import SLICE_SUFFIXES, is_slice_file

__all__ = ["slice_parts", "is_slice_mask", "read_slice", "pair_slices", "write_slice_mask_like", "write_overlay"]

_SLICE_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?$")


def slice_parts(path: str | os.PathLike) -> tuple[str, int, bool] | None:
    """``(stem, n, is_mask)`` of ``<stem>_<n>[_mask].<ext>``, or None when the name does not follow it."""
    name = Path(path).name
    for suffix in SLICE_SUFFIXES:
        if name.lower().endswith(suffix):
            m = _SLICE_RE.match(name[: -len(suffix)])
            return (m["stem"], int(m["n"]), bool(m["mask"])) if m else None
    return None


def is_slice_mask(path: str | os.PathLike) -> bool:
    """True for a slice mask file (``<patient>_<n>_mask.<ext>``)."""
    parts = slice_parts(path)
    return bool(parts and parts[2])


def read_slice(path: str | os.PathLike, mask: bool = False) -> np.ndarray:
    """Read one 2D slice completely; the one reader for slice images and masks.

    Args:
        path: TIFF, PNG or JPEG file.
        mask: read a tumour mask: single channel (or identical RGB channels), values 0/255 or 0/1, returned
            as a 0/1 uint8 array ``(H, W)``. JPEG masks, being lossy, are thresholded at half their range.

    Returns:
        ``(H, W, C)`` for images (a grey image gets ``C = 1``), in the file's own row/column order.

    Raises:
        DataError: missing, empty, unreadable or truncated file; a mask with other values or channels.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    if not is_slice_file(p):
        raise DataError(f"{p}: unknown slice image type (expected one of {', '.join(SLICE_SUFFIXES)})")
    try:
        with Image.open(p) as im:
            im.load()  # decodes every byte: truncated files fail here
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{p}: not a readable image ({err})") from None
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise DataError(f"{p}: expected a 2D image, found array shape {arr.shape}")
    if not mask:
        return arr[..., None] if arr.ndim == 2 else arr
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[-1])):
            raise DataError(f"{p}: a mask must have one channel (or identical colour channels)")
        arr = arr[..., 0]
    if p.suffix.lower() in (".jpg", ".jpeg"):
        return (arr > (127 if arr.max() > 1 else 0)).astype(np.uint8)
    values = set(np.unique(arr).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        bad = sorted(values - {0, 1, 255})[:5]
        raise DataError(f"{p}: mask values must be 0/255 or 0/1, found {bad}")
    return (arr > 0).astype(np.uint8)


def pair_slices(folder: str | os.PathLike) -> tuple[dict[tuple[str, int], dict[str, Path]], list[tuple[Path, str]]]:
    """Group the slice files of one folder: ``({(stem, n): {"image": path, "mask": path}}, problems)``.

    ``problems`` lists ``(file, fault)`` for badly named files and slices stored twice; a pair may lack its
    image or its mask (the callers decide what that means). The one place slice names are parsed.
    """
    pairs: dict[tuple[str, int], dict[str, Path]] = {}
    problems: list[tuple[Path, str]] = []
    for f in sorted(Path(folder).iterdir()):
        if f.name.startswith(".") or not f.is_file() or not is_slice_file(f):
            continue
        parts = slice_parts(f)
        if parts is None:
            problems.append((f, "slice name must be <patient>_<n>.<ext> or <patient>_<n>_mask.<ext>"))
            continue
        kind = "mask" if parts[2] else "image"
        slot = pairs.setdefault(parts[:2], {})
        if kind in slot:
            problems.append((f, f"slice {parts[1]} is also stored as {slot[kind].name}"))
            continue
        slot[kind] = f
    return pairs, problems


def _write_png(arr: np.ndarray, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return dest


def write_slice_mask_like(mask, source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write a 2D mask as a 0/255 PNG of the size of the slice image ``source``.

    Args:
        mask: ``(W, H)`` array in MONAI's (column, row) order, as the slice stacks hold it
            (:class:`~monai_pipeline.transforms.LoadBrainImaged`); any value > 0 is tumour.
        source: the slice image the mask belongs to; its width and height must match.
        dest: output ``.png`` file (written atomically).
    """
    arr = to_numpy(mask)
    arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
    h, w = read_slice(source).shape[:2]
    if arr.shape != (w, h):
        raise ValueError(f"{dest}: mask size {arr.shape} (W, H) is not the size {(w, h)} of its source slice {source}")
    return _write_png((arr.T > 0).astype(np.uint8) * 255, Path(dest))


def write_overlay(mask, source: str | os.PathLike, dest: str | os.PathLike, channel: int | None = None,
                  colour: Sequence[int] = (255, 40, 40), alpha: float = 0.45) -> Path:
    """Write a PNG of the slice image ``source`` with ``mask`` ((W, H), > 0 = tumour) shaded and outlined.

    ``channel`` picks one channel to show in grey (e.g. 1 = FLAIR of the LGG slices); None shows the
    image as stored (RGB or grey), each channel scaled to 0-255.
    """
    img = read_slice(source).astype(np.float32)
    if channel is not None:
        img = img[..., channel : channel + 1]
    lo, hi = img.min(axis=(0, 1), keepdims=True), img.max(axis=(0, 1), keepdims=True)
    img = (img - lo) / np.maximum(hi - lo, 1e-6) * 255.0
    rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
    m = to_numpy(mask)
    m = (m[0] if m.ndim == 3 else m).T > 0
    edge = m & ~ndimage.binary_erosion(m)
    col = np.asarray(colour, dtype=np.float32)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * col
    rgb[edge] = col
    return _write_png(rgb.round().clip(0, 255).astype(np.uint8), Path(dest))
