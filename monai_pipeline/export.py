"""Export stage: write masks with their source image's exact geometry.

A mask is written on the source image's own voxel grid (the inference chain inverts every spatial
transform with ``Invertd`` first) and takes its spacing, origin and direction from the source file's
header as SimpleITK reads it, never from a recomputed affine. NIfTI outputs carry both qform and sform
(code 1); NRRD outputs carry the same space directions and origin. Values are uint8 labels. Every file is
written atomically (temporary file beside it, fsync, rename).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

from monai_pipeline.io import atomic_path

__all__ = ["write_mask_like", "write_slice_mask_like", "write_overlay", "mask_path", "SaveMaskd"]

logger = logging.getLogger(__name__)

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _fix_nifti_codes(path: Path) -> None:
    """Make sure qform and sform both hold the geometry with code 1 (ITK may leave the sform code 0)."""
    import nibabel as nib

    img = nib.load(str(path))
    q_aff, q_code = img.header.get_qform(coded=True)
    s_aff, s_code = img.header.get_sform(coded=True)
    if q_code == 1 and s_code == 1:
        return
    aff = q_aff if q_aff is not None else img.affine
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))


def write_mask_like(mask, source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write ``mask`` on the voxel grid of the image file ``source``.

    Args:
        mask: label array of the source's shape, voxel order (i, j, k) as MONAI and nibabel use it;
            a leading channel axis of length 1 is dropped. Written as uint8.
        source: the image the mask belongs to (NIfTI, NRRD, MHA...). Its spacing, origin and direction
            are copied as they are in its header.
        dest: output file; the extension picks the format (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).

    Raises:
        ValueError: the mask's shape is not the source's.
    """
    import SimpleITK as sitk

    arr = _to_numpy(mask)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    reader.ReadImageInformation()
    size = tuple(reader.GetSize())
    if arr.shape != size[: arr.ndim] or len(size) != arr.ndim:
        raise ValueError(f"{dest}: mask shape {arr.shape} is not the shape {size} of its source image {source}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(np.uint8).transpose()))
    out.SetSpacing(reader.GetSpacing())
    out.SetOrigin(reader.GetOrigin())
    out.SetDirection(reader.GetDirection())
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
        if dest.name.lower().endswith((".nii", ".nii.gz")):
            _fix_nifti_codes(tmp)
    return dest


def _png_bytes_writer(arr: np.ndarray, dest: Path) -> Path:
    from PIL import Image

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
    from monai_pipeline.data import read_slice

    arr = _to_numpy(mask)
    arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
    h, w = read_slice(source).shape[:2]
    if arr.shape != (w, h):
        raise ValueError(f"{dest}: mask size {arr.shape} (W, H) is not the size {(w, h)} of its source slice {source}")
    return _png_bytes_writer((arr.T > 0).astype(np.uint8) * 255, Path(dest))


def write_overlay(mask, source: str | os.PathLike, dest: str | os.PathLike, channel: int | None = None,
                  colour: Sequence[int] = (255, 40, 40), alpha: float = 0.45) -> Path:
    """Write a PNG of the slice image ``source`` with ``mask`` ((W, H), > 0 = tumour) shaded and outlined.

    ``channel`` picks one channel to show in grey (e.g. 1 = FLAIR of the LGG slices); None shows the
    image as stored (RGB or grey), each channel scaled to 0-255.
    """
    from scipy import ndimage

    from monai_pipeline.data import read_slice

    img = read_slice(source).astype(np.float32)
    if channel is not None:
        img = img[..., channel : channel + 1]
    lo, hi = img.min(axis=(0, 1), keepdims=True), img.max(axis=(0, 1), keepdims=True)
    img = (img - lo) / np.maximum(hi - lo, 1e-6) * 255.0
    rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
    m = _to_numpy(mask)
    m = (m[0] if m.ndim == 3 else m).T > 0
    edge = m & ~ndimage.binary_erosion(m)
    col = np.asarray(colour, dtype=np.float32)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * col
    rgb[edge] = col
    return _png_bytes_writer(rgb.round().clip(0, 255).astype(np.uint8), Path(dest))


def mask_path(source: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = "seg",
              ext: str = ".nii.gz") -> Path:
    """Output path ``<output_dir>/<case_id>_<postfix><ext>`` for the mask of ``source``.

    Only the source's base name is used, so the result always lies inside ``output_dir``.
    """
    from monai_pipeline.data import case_id

    name = case_id(source) + (f"_{postfix}" if postfix else "") + ext
    return Path(output_dir) / Path(name).name


class SaveMaskd:
    """Dictionary transform: write ``data[key]`` with the geometry of the file ``data[source_key]`` came from.

    Use after ``Invertd`` and ``AsDiscreted(argmax=True)`` so the mask is on the source grid.

    Args:
        keys: key(s) of the mask(s), ``(1, *spatial)`` or ``(*spatial)`` arrays or tensors.
        source_key: key of the image whose ``meta["filename_or_obj"]`` is the source file.
        output_dir: folder for the masks (created).
        output_postfix: appended to the case ID (``lung_001_seg.nii.gz``).
        output_ext: ``.nii.gz`` (default), ``.nii``, ``.nrrd`` or ``.mha``.
        one_hot: the mask is one-hot ``(C, *spatial)``; its argmax over C is written.
        overlay: for slice stacks, also write ``<slice>_overlay.png`` (image with the mask shaded).
        overlay_channel: channel shown in grey in the overlays; None shows the image as stored.

    A stack of 2D slices (``meta["slice_files"]``, one file per line, from :class:`~monai_pipeline.transforms.LoadBrainImaged`)
    is written slice by slice: ``<slice>_<postfix>.png`` (0/255, each slice's own size).
    """

    def __init__(self, keys: Hashable | Sequence[Hashable] = "pred", source_key: str = "image",
                 output_dir: str | os.PathLike = "./eval", output_postfix: str = "seg",
                 output_ext: str = ".nii.gz", one_hot: bool = False, overlay: bool = False,
                 overlay_channel: int | None = None) -> None:
        self.keys = [keys] if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) else list(keys)
        self.source_key = source_key
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        if not output_ext.startswith("."):
            output_ext = "." + output_ext
        if output_ext.lower() not in MASK_SUFFIXES:
            raise ValueError(f"output_ext must be one of {MASK_SUFFIXES}, got {output_ext!r}")
        self.output_ext = output_ext
        self.one_hot = one_hot
        self.overlay, self.overlay_channel = overlay, overlay_channel

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        src = d[self.source_key]
        meta = getattr(src, "meta", None) or d.get(f"{self.source_key}_meta_dict", {})
        source = meta.get("filename_or_obj")
        if not source:
            raise KeyError(f"SaveMaskd: {self.source_key!r} carries no source file name in its metadata")
        if meta.get("slice_files"):
            return self._save_slices(d, str(meta["slice_files"]).split("\n"))
        for i, key in enumerate(self.keys):
            postfix = self.output_postfix if len(self.keys) == 1 else f"{self.output_postfix}_{key}"
            dest = mask_path(source, self.output_dir, postfix, self.output_ext)
            mask = d[key].argmax(0) if self.one_hot else d[key]
            write_mask_like(mask, source, dest)
            logger.info("wrote %s", dest)
            d.setdefault("saved_masks", []).append(str(dest))
        return d

    def _save_slices(self, d: dict, files: Sequence[str]) -> dict:
        for key in self.keys:
            mask = _to_numpy(d[key].argmax(0) if self.one_hot else d[key])
            mask = mask[0] if mask.ndim == 4 else mask
            if mask.ndim != 3 or mask.shape[-1] != len(files):
                raise ValueError(f"SaveMaskd: mask of shape {mask.shape} does not match a stack of {len(files)} slices")
            for k, source in enumerate(files):
                postfix = self.output_postfix if len(self.keys) == 1 else f"{self.output_postfix}_{key}"
                dest = mask_path(source, self.output_dir, postfix, ".png")
                write_slice_mask_like(mask[..., k], source, dest)
                if self.overlay:
                    write_overlay(mask[..., k], source, mask_path(source, self.output_dir, "overlay", ".png"),
                                  self.overlay_channel)
                d.setdefault("saved_masks", []).append(str(dest))
            logger.info("wrote %d slice masks of %s", len(files), Path(files[0]).parent)
        return d
