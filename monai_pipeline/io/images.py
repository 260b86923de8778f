"""Volumes in and out with their geometry: one properties object, one LPS/RAS conversion, one tolerance.

In the spirit of nnU-Net's ``imageio`` readers and MONAI's ``ImageReader``/``ImageWriter``: a volume is read
as ``(array, ImageProperties)`` and written from the same pair, so geometry travels with the voxels and is
never recomputed from a transformed tensor.

Coordinate systems:

- IJK: voxel indices (i, j, k), the order nibabel and MONAI use (i fastest on disk);
- LPS: patient coordinates in mm as ITK, DICOM and NRRD store them (x to the patient's Left, y Posterior,
  z Superior). :class:`ImageProperties` holds origin and direction in LPS, as SimpleITK reads them;
- RAS: nibabel's and MONAI's world frame (x Right, y Anterior): ``RAS = diag(-1, -1, 1) @ LPS``
  (:func:`lps_to_ras`, the one place this conversion is written).

NIfTI, NRRD and MHA/MHD are read and written; NIfTI files get qform and sform with code 1 (scanner
anatomical) when written, so every reader (nibabel, ITK, 3D Slicer) sees the same geometry.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import atomic_path

__all__ = ["ImageProperties", "GEOMETRY_TOL_MM", "LPS_TO_RAS", "lps_to_ras", "read_properties", "read_image",
           "write_image", "write_mask_like", "write_nifti", "is_nifti", "to_numpy", "read_mask",
           "nifti_data_bytes", "gzip_trailer_size"]

GEOMETRY_TOL_MM = 1e-3
"""Two grids are the same when their voxel-to-world matrices agree within this (mm): the one tolerance."""

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 change of frame LPS -> RAS (its own inverse)."""


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 voxel-to-LPS matrix (or any 4x4 LPS transform on the left) as voxel-to-RAS."""
    return LPS_TO_RAS @ np.asarray(matrix, dtype=float)


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def nifti_data_bytes(img: nib.Nifti1Image) -> int:
    """Bytes a NIfTI file must hold (uncompressed) by its header: the data offset plus every voxel."""
    offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))
    return offset + int(np.prod(img.shape)) * np.dtype(img.header.get_data_dtype()).itemsize


def gzip_trailer_size(path: str | os.PathLike) -> int:
    """The uncompressed size (mod 2**32) a gzip file's last four bytes record (ISIZE, RFC 1952): a truncated
    file does not end with the size its header needs."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


@dataclass(frozen=True)
class ImageProperties:
    """Geometry and storage of one volume.

    Attributes:
        shape: voxels per axis, (i, j, k) order (more axes for vector images).
        spacing: mm per voxel step along i, j, k.
        origin: LPS position (mm) of voxel (0, 0, 0)'s centre.
        direction: ``(n, n)`` LPS direction cosines, one column per voxel axis.
        dtype: the stored voxel type, as ITK names it (``"16-bit signed integer"``).
        components: values per voxel (1 for scalar images).
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
    dtype: str = "32-bit float"
    components: int = 1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def lps_affine(self) -> np.ndarray:
        """4x4 voxel (i, j, k) -> LPS (mm) matrix (first three spatial axes)."""
        n = min(self.ndim, 3)
        m = np.eye(4)
        m[:n, :n] = np.asarray(self.direction, dtype=float)[:n, :n] @ np.diag(np.asarray(self.spacing, dtype=float)[:n])
        m[:n, 3] = np.asarray(self.origin, dtype=float)[:n]
        return m

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (i, j, k) -> RAS (mm) matrix, as nibabel and MONAI use it."""
        return lps_to_ras(self.lps_affine)

    @classmethod
    def of(cls, image: Any) -> "ImageProperties":
        """Properties of a SimpleITK ``Image`` or of an ``ImageFileReader`` that has read its header."""
        n = image.GetDimension()
        dtype = image.GetPixelIDTypeAsString() if isinstance(image, sitk.Image) else \
            sitk.GetPixelIDValueAsString(image.GetPixelID())
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(n, n)
        return cls(shape=tuple(int(s) for s in image.GetSize()), spacing=tuple(float(s) for s in image.GetSpacing()),
                   origin=tuple(float(o) for o in image.GetOrigin()),
                   direction=tuple(tuple(float(v) for v in row) for row in direction), dtype=dtype,
                   components=int(image.GetNumberOfComponents() if hasattr(image, "GetNumberOfComponents")
                                  else image.GetNumberOfComponentsPerPixel()))

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...], dtype: str = "32-bit float") -> "ImageProperties":
        """Properties of a grid given by a 4x4 voxel-to-RAS ``affine`` (nibabel's convention)."""
        lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
        n = min(len(shape), 3)
        spacing = np.linalg.norm(lps[:n, :n], axis=0)
        direction = lps[:n, :n] / spacing
        return cls(shape=tuple(int(s) for s in shape), spacing=tuple(float(s) for s in spacing),
                   origin=tuple(float(o) for o in lps[:n, 3]),
                   direction=tuple(tuple(float(v) for v in row) for row in direction), dtype=dtype)

    def orthonormal(self, tol: float = 1e-4) -> "ImageProperties":
        """These properties with the direction snapped to the nearest orthonormal matrix (SVD polar factor) when it
        is off by less than ``tol`` (storage noise: NIfTI keeps its matrix in float32), else unchanged.

        MONAI's ``Spacing`` places its output grid at the input's first corner only when the input's axes map onto
        the output's within 1e-8 (``compute_shape_offset``), and at the centre otherwise: an oblique scan read from
        a float32 NIfTI fails that test where the same scan from NRRD, MHA or DICOM passes, and its network grid
        moved by up to one output voxel. On the snapped direction every format passes it.
        """
        n = min(self.ndim, 3)
        d = np.asarray(self.direction, dtype=float)[:n, :n]
        u, _, vt = np.linalg.svd(d)
        r = u @ vt
        if np.abs(r - d).max() >= tol or np.allclose(r, d, atol=0, rtol=0):
            return self
        direction = np.array(self.direction, dtype=float)
        direction[:n, :n] = r
        return ImageProperties(shape=self.shape, spacing=self.spacing, origin=self.origin,
                               direction=tuple(tuple(float(v) for v in row) for row in direction), dtype=self.dtype,
                               components=self.components)

    def same_grid(self, other: "ImageProperties", ndim: int = 3) -> bool:
        """Same voxel grid: the same first ``ndim`` dimensions and voxel-to-world matrices equal within
        :data:`GEOMETRY_TOL_MM` (the one geometry comparison)."""
        return tuple(self.shape[:ndim]) == tuple(other.shape[:ndim]) and \
            bool(np.allclose(self.lps_affine, other.lps_affine, atol=GEOMETRY_TOL_MM))

    def difference(self, other: "ImageProperties", name: str = "the other") -> str:
        """One line naming what differs from ``other`` (called ``name``): shape, spacing, origin, direction; in
        RAS, as Slicer shows them."""
        if tuple(self.shape[:3]) != tuple(other.shape[:3]):
            return f"shape {tuple(self.shape)} vs {name} {tuple(other.shape)}"
        a, b = self.affine, other.affine
        sa, sb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
        parts = []
        if not np.allclose(sa, sb, atol=GEOMETRY_TOL_MM):
            parts.append(f"spacing {np.round(sa, 4).tolist()} vs {name} {np.round(sb, 4).tolist()} mm")
        if not np.allclose(a[:3, 3], b[:3, 3], atol=GEOMETRY_TOL_MM):
            parts.append(f"origin (RAS) {np.round(a[:3, 3], 3).tolist()} vs {name} {np.round(b[:3, 3], 3).tolist()} mm")
        if not np.allclose(a[:3, :3] / sa, b[:3, :3] / sb, atol=GEOMETRY_TOL_MM):
            parts.append(f"direction (RAS) {np.round(a[:3, :3] / sa, 4).tolist()} vs {name} "
                         f"{np.round(b[:3, :3] / sb, 4).tolist()}")
        return "; ".join(parts) or f"voxel-to-world matrices differ by more than {GEOMETRY_TOL_MM} mm"


def _reader(path: str | os.PathLike) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return reader


def _itk_message(err: Exception) -> str:
    return (str(err).strip().splitlines() or ["unknown error"])[-1]


def _dicom(path: str | os.PathLike) -> tuple[Path, str | None] | None:
    """The DICOM series ``path`` names (a folder, ``FOLDER#UID`` or a DICOM file), or None for other files."""
    from monai_pipeline.io.dicom import dicom_source  # the DICOM reader builds on this module
    return dicom_source(path)


def read_properties(path: str | os.PathLike) -> ImageProperties:
    """The header of an image file, or of a DICOM series (a folder, ``FOLDER#SERIES_UID`` or one of its
    files; see :mod:`monai_pipeline.io.dicom`), no voxels read.

    Raises:
        DataError: missing or unreadable file.
    """
    if (series := _dicom(path)) is not None:
        from monai_pipeline.io.dicom import read_series_properties
        return read_series_properties(*series)
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    reader = _reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise DataError(f"{path}: not a readable image ({_itk_message(err)})") from None
    return ImageProperties.of(reader)


def read_image(path: str | os.PathLike, what: str = "image") -> tuple[np.ndarray, ImageProperties]:
    """Read a volume once: ``(array in voxel order (i, j, k), properties)``; a DICOM series too (as for
    :func:`read_properties`).

    Raises:
        DataError: naming the file, when it is missing or cannot be read (``what`` names its role).
    """
    if (series := _dicom(path)) is not None:
        from monai_pipeline.io.dicom import read_series
        return read_series(*series)
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise DataError(f"{path}: not a readable {what} ({_itk_message(err)})") from None
    arr = sitk.GetArrayFromImage(img)
    spatial = img.GetDimension()
    arr = arr.transpose(*reversed(range(spatial)), *range(spatial, arr.ndim))  # (z, y, x[, c]) -> (x, y, z[, c])
    return arr, ImageProperties.of(img)


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_image(array: Any, properties: ImageProperties, dest: str | os.PathLike, dtype: Any = None,
                what: str = "array") -> Path:
    """Write ``array`` (voxel order (i, j, k)) on the grid ``properties`` describe, atomically.

    The extension of ``dest`` picks the format (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``). NIfTI is written
    with nibabel, qform and sform both set with code 1; the others with SimpleITK (compressed).

    Raises:
        ValueError: the array's shape is not ``properties.shape``.
    """
    arr = to_numpy(array)
    if arr.ndim == len(properties.shape) + 1 and arr.shape[0] == 1:
        arr = arr[0]  # a leading channel axis of length 1
    if dtype is not None:
        arr = arr.astype(dtype)
    if tuple(arr.shape) != tuple(properties.shape):
        raise ValueError(f"{dest}: {what} shape {tuple(arr.shape)} is not the shape {tuple(properties.shape)} of its "
                         "source image")
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if is_nifti(dest):
            _save_nifti(np.ascontiguousarray(arr), properties.affine, tmp)
        else:
            out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose()))
            out.SetSpacing(properties.spacing)
            out.SetOrigin(properties.origin)
            out.SetDirection(tuple(v for row in properties.direction for v in row))
            sitk.WriteImage(out, str(tmp), useCompression=True)
    return dest


def write_mask_like(mask: Any, source: str | os.PathLike | ImageProperties, dest: str | os.PathLike,
                    dtype: Any = np.uint8) -> Path:
    """Write ``mask`` on the voxel grid of ``source`` (an image file or its :class:`ImageProperties`).

    Args:
        mask: label array of the source's shape, voxel order (i, j, k) as MONAI and nibabel use it;
            a leading channel axis of length 1 is dropped. Written as ``dtype`` (uint8 by default; uint16
            for label maps with values above 255).
        source: the image the mask belongs to: its spacing, origin and direction are copied as they are in
            its header.
        dest: output file; the extension picks the format (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).

    Raises:
        ValueError: the mask's shape is not the source's.
    """
    props = source if isinstance(source, ImageProperties) else read_properties(source)
    return write_image(mask, props, dest, dtype, what="mask")


def write_nifti(array: np.ndarray, affine: np.ndarray, dest: str | os.PathLike) -> Path:
    """Write ``array`` (voxel order i, j, k) with a 4x4 RAS ``affine`` (mm) as NIfTI-1, atomically.

    Both the qform and the sform are set to ``affine`` with code 1 (scanner anatomical).
    """
    with atomic_path(dest) as tmp:
        _save_nifti(np.asarray(array), np.asarray(affine, dtype=float), tmp)
    return Path(dest)


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A mask (or any volume) read once as ``(array in voxel order (i, j, k), 4x4 RAS affine in mm)``, the pair
    nibabel-style code works with. Raises :class:`~monai_pipeline.errors.DataError` naming the file."""
    arr, props = read_image(path, "mask")
    return arr, props.affine
