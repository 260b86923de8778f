"""Export stage: write masks with their source image's exact geometry.

A mask is written on the source image's own voxel grid (the inference chain inverts every spatial
transform with ``Invertd`` first) and takes its spacing, origin and direction from the source file's
header as SimpleITK reads it, never from a recomputed affine. NIfTI outputs carry both qform and sform
(code 1); NRRD outputs carry the same space directions and origin. Values are uint8 labels. Every file is
written atomically (temporary file beside it, fsync, rename).

Slicer folders (:func:`export_slicer`): a folder per case with the mask as NIfTI, a ``.seg.nrrd``
segmentation (segment names, colours, label values, in LPS like Slicer's own files), a colour table,
surface meshes per segment (STL + VTK, LPS millimetres: Slicer's default for model files) and a
``load_in_slicer.py`` script that loads the (referenced, not copied) image with all of them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

from monai_pipeline.io import atomic_path

__all__ = ["write_mask_like", "write_slice_mask_like", "write_overlay", "mask_path", "SaveMaskd", "export_slicer",
           "export_slicer_folders", "pair_cases", "parse_segment_names", "slicer_segments", "SlicerSegment",
           "write_seg_nrrd", "write_color_table", "segment_mesh", "write_mesh", "SLICER_SMOOTHING"]

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


def write_mask_like(mask, source: str | os.PathLike, dest: str | os.PathLike, dtype=np.uint8) -> Path:
    """Write ``mask`` on the voxel grid of the image file ``source``.

    Args:
        mask: label array of the source's shape, voxel order (i, j, k) as MONAI and nibabel use it;
            a leading channel axis of length 1 is dropped. Written as ``dtype`` (uint8 by default; uint16
            for label maps with values above 255).
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
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(dtype).transpose()))
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


# ------------------------------------------------------------------------------------------ Slicer folders
# Coordinate systems used below:
#   IJK  voxel indices (i, j, k) of the source image, the order nibabel and MONAI use (x fastest on disk);
#   LPS  patient coordinates in mm as ITK/DICOM/NRRD store them (x to the patient's Left, y Posterior,
#        z Superior). 3D Slicer stores images, segmentations AND model files (STL, VTK) in LPS since
#        Slicer 4.11 (it converts to its internal RAS when loading);
#   RAS  nibabel's world frame (x Right, y Anterior): RAS = diag(-1, -1, 1) @ LPS.
# The voxel-to-LPS matrix comes from the source image's header as SimpleITK reads it
# (direction @ diag(spacing), origin), so oblique and flipped grids are carried over exactly.

SLICER_SMOOTHING = 0.3
"""Default surface smoothing factor in Slicer's own scale (0 none .. 1 strong; Slicer's default is 0.5):
windowed-sinc pass band ``10 ** (-4 * factor)``, 20 iterations, as Slicer's closed-surface conversion."""

_SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ALTERED = ["SCT", "49755003", "Morphologically Altered Structure"]
_ANATOMY = ["SCT", "123037004", "Anatomical Structure"]
# name (lower case) -> (display colour RGB 0-1, SNOMED CT category, type, type modifier)
_KNOWN_SEGMENTS: dict[str, tuple[tuple[float, float, float], list[str], list[str], list[str] | None]] = {
    "tumor": ((0.902, 0.294, 0.208), _ALTERED, ["SCT", "108369006", "Neoplasm"], None),
    "tumour": ((0.902, 0.294, 0.208), _ALTERED, ["SCT", "108369006", "Neoplasm"], None),
    "neoplasm": ((0.902, 0.294, 0.208), _ALTERED, ["SCT", "108369006", "Neoplasm"], None),
    "nodule": ((0.949, 0.612, 0.176), _ALTERED, ["SCT", "27925004", "Nodule"], None),
    "mass": ((0.902, 0.294, 0.208), _ALTERED, ["SCT", "4147007", "Mass"], None),
    "lesion": ((0.902, 0.294, 0.208), _ALTERED, ["SCT", "52988006", "Lesion"], None),
    "edema": ((0.969, 0.867, 0.322), _ALTERED, ["SCT", "79654002", "Edema"], None),
    "necrosis": ((0.522, 0.361, 0.690), _ALTERED, ["SCT", "6574001", "Necrosis"], None),
    "lung": ((0.553, 0.757, 0.894), _ANATOMY, ["SCT", "39607008", "Lung"], None),
    "right lung": ((0.416, 0.686, 0.882), _ANATOMY, ["SCT", "39607008", "Lung"], ["SCT", "24028007", "Right"]),
    "left lung": ((0.776, 0.655, 0.863), _ANATOMY, ["SCT", "39607008", "Lung"], ["SCT", "7771000", "Left"]),
}
# colours for labels with other names (ColorBrewer Set1 without the red kept for tumours)
_PALETTE = [(0.216, 0.494, 0.722), (0.302, 0.686, 0.290), (0.596, 0.306, 0.639), (1.0, 0.498, 0.0),
            (1.0, 1.0, 0.2), (0.651, 0.337, 0.157), (0.969, 0.506, 0.749), (0.6, 0.6, 0.6)]
_MAX_LABEL = 65535
_MANIFEST = "export_manifest.json"
_SAFE_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


@dataclass(frozen=True)
class SlicerSegment:
    """One segment of a Slicer export: its label value, name, display colour (RGB, 0-1) and voxel count."""

    label: int
    name: str
    color: tuple[float, float, float]
    voxels: int = 0
    terminology: dict | None = None

    @property
    def segment_id(self) -> str:
        return f"Segment_{self.label}"

    def file_stem(self, case: str) -> str:
        """``<case>_<label>_<name>`` with the name reduced to letters, digits, ``-`` and ``_``."""
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", self.name).strip("_")[:60] or "segment"
        return f"{case}_{self.label}_{safe}"


def parse_segment_names(items: Sequence[str] | None) -> dict[int, str]:
    """``["1=tumor", "2=lung"]`` -> ``{1: "tumor", 2: "lung"}``; a single bare name means label 1.

    Raises:
        DataError: malformed item, label outside 1..65535, empty or multi-line name, label named twice.
    """
    from monai_pipeline.data import DataError

    out: dict[int, str] = {}
    items = list(items or [])
    for item in items:
        label_text, sep, name = item.partition("=")
        if not sep:
            if len(items) != 1:
                raise DataError(f"--names: {item!r} is not LABEL=NAME (e.g. 1=tumor 2=lung)")
            label_text, name = "1", item
        try:
            label = int(label_text.strip())
        except ValueError:
            raise DataError(f"--names: {item!r}: label {label_text!r} is not a whole number") from None
        name = name.strip()
        if not 1 <= label <= _MAX_LABEL:
            raise DataError(f"--names: {item!r}: label must be between 1 and {_MAX_LABEL} (0 is background)")
        if not name or any(c in name for c in "\r\n\0"):
            raise DataError(f"--names: {item!r}: the name must be one non-empty line")
        if label in out:
            raise DataError(f"--names: label {label} is named twice ({out[label]!r}, {name!r})")
        out[label] = name
    return out


def _read_label_map(image: Path, mask: Path) -> np.ndarray:
    """Validate ``mask`` against ``image`` and return its labels as an ``(I, J, K)`` integer array.

    Files are checked by :mod:`monai_pipeline.data` (existence, integrity, 3D, shape and geometry within
    1e-3 mm); values must be whole numbers in 0..65535.

    Raises:
        DataError: naming the file and the fault.
    """
    import SimpleITK as sitk

    from monai_pipeline.data import DataError, check_pair, image_info

    info_img, info_mask = image_info(image), image_info(mask)
    try:
        check_pair(image, mask)
    except DataError:
        raise DataError(f"{mask}: mask geometry differs from image {image}: "
                        f"{_geometry_difference(info_img, info_mask)}") from None
    itk_mask = sitk.ReadImage(str(mask))
    if itk_mask.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{mask}: mask has {itk_mask.GetNumberOfComponentsPerPixel()} values per voxel (a layered "
                        "segmentation with overlapping segments, or a vector image); export needs one label map")
    arr = sitk.GetArrayFromImage(itk_mask).T.reshape(tuple(info_img.shape[:3]))
    values = np.unique(arr)
    fractional = [float(v) for v in values if not float(v).is_integer()]
    if fractional:
        raise DataError(f"{mask}: mask holds fractional values {fractional[:5]}; labels must be whole numbers "
                        "(threshold a probability map first)")
    negative = [int(v) for v in values if v < 0]
    if negative:
        raise DataError(f"{mask}: mask holds negative label values {negative[:5]}; labels must be 0 (background) "
                        f"or 1..{_MAX_LABEL}")
    if values.size and values.max() > _MAX_LABEL:
        raise DataError(f"{mask}: label value {int(values.max())} is above {_MAX_LABEL}")
    return arr.astype(np.uint16 if values.size and values.max() > 255 else np.uint8)


def _geometry_difference(a, b) -> str:
    """One line naming what differs between two :class:`~monai_pipeline.data.ImageInfo` (image ``a``, mask ``b``)."""
    if tuple(a.shape[:3]) != tuple(b.shape[:3]):
        return f"shape {tuple(b.shape)} vs image {tuple(a.shape)}"
    parts = []
    sa, sb = np.linalg.norm(a.affine[:3, :3], axis=0), np.linalg.norm(b.affine[:3, :3], axis=0)
    if not np.allclose(sa, sb, atol=1e-3):
        parts.append(f"spacing {np.round(sb, 4).tolist()} vs image {np.round(sa, 4).tolist()} mm")
    if not np.allclose(a.affine[:3, 3], b.affine[:3, 3], atol=1e-3):
        parts.append(f"origin (RAS) {np.round(b.affine[:3, 3], 3).tolist()} vs image "
                     f"{np.round(a.affine[:3, 3], 3).tolist()} mm")
    da, db = a.affine[:3, :3] / sa, b.affine[:3, :3] / sb
    if not np.allclose(da, db, atol=1e-4):
        parts.append(f"direction (RAS) {np.round(db, 4).tolist()} vs image {np.round(da, 4).tolist()}")
    return "; ".join(parts) or "voxel-to-world affine differs by more than 1e-3 mm"


def _ijk_to_lps(source: Path) -> np.ndarray:
    """4x4 voxel (i, j, k) -> LPS (mm) matrix of an image file, from its header as SimpleITK reads it."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    reader.ReadImageInformation()
    n = 3
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(reader.GetDimension(), -1)[:n, :n]
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag(np.asarray(reader.GetSpacing(), dtype=float)[:n])
    m[:3, 3] = np.asarray(reader.GetOrigin(), dtype=float)[:n]
    return m


def slicer_segments(labels: np.ndarray, names: Mapping[int, str] | None = None) -> list[SlicerSegment]:
    """The segments of a label map: one per label value present or named, ordered by label.

    A mask with no label other than 1 (binary, or empty) gives label 1 named ``tumor`` unless ``names``
    are given; other unnamed labels are named ``Segment_<label>`` as Slicer names them. Named labels
    absent from the mask are kept as empty segments (so every case of a batch has the same segments).
    """
    names = dict(names or {})
    counts = np.bincount(labels.ravel())
    present = [int(v) for v in np.nonzero(counts)[0] if v > 0]
    binary = set(present) <= {1}
    wanted = sorted(set(present) | set(names) | ({1} if binary and not names else set()))
    segments, spare = [], iter(_PALETTE * (1 + len(wanted) // len(_PALETTE)))
    for label in wanted:
        name = names.get(label) or ("tumor" if label == 1 and binary else f"Segment_{label}")
        known = _KNOWN_SEGMENTS.get(name.lower())
        if known:
            colour, category, kind, modifier = known
            term = {"contextName": _SLICER_CONTEXT, "category": category, "type": kind,
                    "anatomicContextName": _ANATOMIC_CONTEXT}
            if modifier:
                term["typeModifier"] = modifier
        else:
            colour, term = next(spare), None
        segments.append(SlicerSegment(label, name, colour, int(counts[label]) if label < len(counts) else 0, term))
    return segments


def _layer_extent(labels: np.ndarray) -> list[int]:
    """Inclusive IJK extent ``[i0, i1, j0, j1, k0, k1]`` of all non-zero voxels; ``[0, -1] * 3`` when empty.

    Slicer writes the extent of a layer's shared labelmap for every segment of that layer, and reads a
    layer with the extent of its FIRST segment: a tighter per-segment extent would crop the others.
    """
    extent: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(np.any(labels, axis=other))[0]
        if nz.size == 0:
            return [0, -1, 0, -1, 0, -1]
        extent += [int(nz[0]), int(nz[-1])]
    return extent


def _conversion_parameters(ijk_to_lps: np.ndarray, shape: Sequence[int], smoothing: float) -> list[dict]:
    """Slicer's ``Segmentation_ConversionParameters``: the reference geometry (IJK -> RAS, extent) and the
    closed-surface settings used for the meshes, so Slicer's own 3D view matches the exported models."""
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    geometry = ";".join(f"{v:.17g}" for v in ijk_to_ras.ravel()) + ";" + ";".join(
        f"0;{int(n) - 1}" for n in shape[:3]) + ";"
    params = [("Reference image geometry", geometry, "Geometry of the labelmap: IJK to RAS matrix and extent."),
              ("Smoothing factor", f"{smoothing:g}", "Closed surface smoothing: 0 (none) to 1 (strong)."),
              ("Decimation factor", "0.0", "Closed surface decimation: 0 (none) to 1."),
              ("Compute surface normals", "1", "Closed surface normals: 1 = computed."),
              ("Conversion method", "0", "0 = vtkDiscreteFlyingEdges3D."),
              ("Joint smoothing", "0", "Smooth segments jointly: 0 = no."),
              ("Collapse labelmaps", "1", "Share labelmaps between segments where they do not overlap."),
              ("Crop to reference image geometry", "0", "Crop models to the reference geometry: 0 = no."),
              ("Oversampling factor", "1", "Oversampling of the reference geometry: 1 = none.")]
    return [{"name": n, "value": v, "description": d} for n, v, d in params]


def write_seg_nrrd(labels: np.ndarray, ijk_to_lps: np.ndarray, segments: Sequence[SlicerSegment],
                   dest: str | os.PathLike, smoothing: float = SLICER_SMOOTHING) -> Path:
    """Write a Slicer segmentation (``.seg.nrrd``, one layer) with slicerio, atomically.

    Args:
        labels: ``(I, J, K)`` uint8/uint16 label map on the source image's grid.
        ijk_to_lps: 4x4 voxel -> LPS (mm) matrix; written as ``space directions`` / ``space origin`` with
            ``space: left-posterior-superior``, as Slicer writes it.
        segments: from :func:`slicer_segments`; each becomes ``Segment<n>_ID/_Name/_Color/_LabelValue/
            _Layer/_Extent/_Tags/_NameAutoGenerated/_ColorAutoGenerated``.
        smoothing: recorded in the conversion parameters (Slicer's closed surface then matches the meshes).
    """
    import slicerio

    extent = _layer_extent(labels)
    seg = {
        "voxels": np.ascontiguousarray(labels),
        "ijkToLPS": np.asarray(ijk_to_lps, dtype=float),
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap", "Closed surface"],
        "conversionParameters": _conversion_parameters(ijk_to_lps, labels.shape, smoothing),
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [],
    }
    for s in segments:
        entry = {"id": s.segment_id, "name": s.name, "nameAutoGenerated": False, "color": [round(c, 6) for c in s.color],
                 "colorAutoGenerated": False, "labelValue": s.label, "layer": 0, "extent": extent,
                 "status": "inprogress"}
        if s.terminology:
            entry["terminology"] = s.terminology
        seg["segments"].append(entry)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        slicerio.write_segmentation(str(tmp), seg, compression_level=6)
    return dest


def write_color_table(segments: Sequence[SlicerSegment], dest: str | os.PathLike) -> Path:
    """Write a Slicer colour table (``.ctbl``/``.txt``): ``label name R G B A`` lines (0-255), background 0.

    Slicer's colour table names hold no spaces: they are written with ``_``.
    """
    from monai_pipeline.io import atomic_write_text

    dest = Path(dest)
    lines = ["0 background 0 0 0 0"]
    for s in segments:
        r, g, b = (int(round(c * 255)) for c in s.color)
        name = re.sub(r"\s+", "_", s.name)
        lines.append(f"{s.label} {name} {r} {g} {b} 255")
    header = [f"# Color table file {dest.name} (monai-pipeline export-slicer)", f"# {len(lines)} values"]
    return atomic_write_text(dest, "\n".join(header + lines) + "\n")


def segment_mesh(labels: np.ndarray, label: int, ijk_to_lps: np.ndarray, smoothing: float = SLICER_SMOOTHING):
    """Closed surface of ``labels == label`` in LPS mm, or None when the label has no voxel.

    Discrete flying edges (as Slicer) on the label's bounding box padded by one voxel (so the surface is
    closed at the volume's border) in voxel indices, mapped to LPS by ``ijk_to_lps`` (oblique and flipped
    axes included), then windowed-sinc smoothing (pass band ``10 ** (-4 * smoothing)``, 20 iterations)
    and outward normals.

    Returns:
        ``vtkPolyData`` of triangles, points in LPS mm.
    """
    from scipy import ndimage
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D

    box = ndimage.find_objects((labels == label).astype(np.uint8))
    if not box or box[0] is None:
        return None
    lo = np.array([s.start for s in box[0]])
    crop = np.pad((labels[box[0]] == label).astype(np.uint8), 1)
    image = vtkImageData()
    image.SetDimensions(*crop.shape)
    image.SetOrigin(*(lo - 1).astype(float))
    image.GetPointData().SetScalars(numpy_to_vtk(crop.ravel(order="F"), deep=True))
    surface = vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    surface.ComputeNormalsOff()
    surface.ComputeGradientsOff()
    surface.ComputeScalarsOff()
    surface.Update()
    poly = surface.GetOutput()
    ijk = vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    lps = ijk @ np.asarray(ijk_to_lps)[:3, :3].T + np.asarray(ijk_to_lps)[:3, 3]
    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(lps), deep=True))
    poly.SetPoints(points)
    if smoothing > 0:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputData(poly)
        smoother.SetNumberOfIterations(20)
        smoother.SetPassBand(10.0 ** (-4.0 * smoothing))
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        smoother.Update()
        poly = smoother.GetOutput()
    normals = vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()  # closed surface: outward normals, whatever the handedness of ijk_to_lps
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput()


def write_mesh(poly, dest: str | os.PathLike, description: str = "") -> Path:
    """Write a surface in LPS mm as binary STL or legacy VTK (by ``dest``'s extension), atomically.

    The header says ``SPACE=LPS`` as Slicer's own model files do (Slicer reads it; LPS is also its default
    for model files without it). VTK files use file version 4.2, readable by every Slicer since 4.x.
    """
    from vtkmodules.vtkIOGeometry import vtkSTLWriter
    from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

    dest = Path(dest)
    suffix = dest.suffix.lower()
    if suffix not in (".stl", ".vtk"):
        raise ValueError(f"{dest}: mesh files must end with .stl or .vtk")
    header = f"{' '.join(description.split())[:200]} SPACE=LPS".strip()
    with atomic_path(dest) as tmp:
        writer = vtkSTLWriter() if suffix == ".stl" else vtkPolyDataWriter()
        if suffix == ".stl":
            header = header[-70:]  # binary STL headers hold 80 bytes; keep the SPACE tag
        else:
            writer.SetFileVersion(42)
        writer.SetHeader(header)
        writer.SetFileTypeToBinary()
        writer.SetFileName(str(tmp))
        writer.SetInputData(poly)
        if not writer.Write() or not tmp.exists():
            raise OSError(f"{dest}: VTK could not write the mesh")
    return dest


_LOADER_TEMPLATE = '''"""Load case {case} into 3D Slicer: the image, its segmentation and the surface meshes.

Written by monai-pipeline export-slicer. Run it in Slicer's Python console (View > Python Console):

    exec(open({script!r}).read())

or start Slicer with it: Slicer --python-script {script!r}

The image is not copied: it is read from IMAGE (absolute path), or from IMAGE_RELATIVE (relative to
this folder) when the absolute path is gone. The segmentation (.seg.nrrd) is on the image's own voxel
grid. Mesh files (.vtk loaded below; .stl copies for other software) are in LPS millimetres, Slicer's
default for model files (their headers say SPACE=LPS); Slicer converts them to its internal RAS on
loading, so they lie on the image.
"""
from pathlib import Path

import slicer

FOLDER = Path({folder!r})  # where export-slicer wrote this case
IMAGE = Path({image!r})  # the source image (absolute path)
IMAGE_RELATIVE = {image_relative!r}  # the same image relative to FOLDER
SEGMENTATION = {segmentation!r}  # segments, label values and colours in the header
COLOR_TABLE = {color_table!r}  # the same names and colours as a Slicer colour table
MASK_NIFTI = {mask!r}  # the label map as NIfTI, with the image's geometry (not loaded here)
# (segment name, label value, colour RGB 0-1, VTK mesh, STL mesh); meshes are in LPS mm
MODELS = {models}
# segments without any voxel: they are in the segmentation, but no mesh was written for them
EMPTY_SEGMENTS = {empty}

if "__file__" in globals() and (Path(__file__).resolve().parent / SEGMENTATION).exists():
    FOLDER = Path(__file__).resolve().parent  # the folder was moved: use the script's own folder
image_path = IMAGE if IMAGE.exists() else (FOLDER / IMAGE_RELATIVE).resolve()
if not image_path.exists():
    raise FileNotFoundError(f"source image not found: {{IMAGE}} (nor {{FOLDER / IMAGE_RELATIVE}})")

volume = slicer.util.loadVolume(str(image_path))  # CT/MR volume, geometry from its header
segmentation = slicer.util.loadSegmentation(str(FOLDER / SEGMENTATION))
segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # edit segments on the image grid
slicer.util.loadColorTable(str(FOLDER / COLOR_TABLE))
for name, label, colour, vtk_file, stl_file in MODELS:
    model = slicer.util.loadModel(str(FOLDER / vtk_file))  # LPS file -> RAS scene
    model.SetName(f"{{name}} (label {{label}}) surface")
    model.GetDisplayNode().SetColor(*colour)
    model.GetDisplayNode().SetOpacity(0.6)
for name in EMPTY_SEGMENTS:
    print(f"segment {{name}} is empty: no mesh was written")
slicer.util.setSliceViewerLayers(background=volume, fit=True)
'''

_README_TEMPLATE = """Case {case}: 3D Slicer folder written by monai-pipeline export-slicer

source image  {image}   (not copied; referenced by load_in_slicer.py)
source mask   {mask_src}

files
  {mask}   label map, NIfTI, on the image's voxel grid (spacing, origin, direction of the image)
  {seg}   Slicer segmentation: segment names, colours, label values; same grid
  {ctbl}   Slicer colour table (label name R G B A)
{mesh_lines}
  load_in_slicer.py   in Slicer's Python console: exec(open(r"<this folder>/load_in_slicer.py").read())
  {manifest}   the same facts as JSON

segments (label, name, voxels, volume)
{segment_lines}

coordinates
  Meshes (.stl, .vtk) are in LPS millimetres (x to the patient's left, y posterior, z superior), the
  coordinate system Slicer assumes for model files (their headers also say SPACE=LPS). Other software in
  RAS must flip the signs of x and y. They are built from the mask with discrete flying edges and
  windowed-sinc smoothing (factor {smoothing:g} on Slicer's 0-1 scale), from the image's own voxel-to-LPS
  matrix (oblique directions included).
"""


def _case_files(case: str, segments: Sequence[SlicerSegment]) -> dict:
    """File names (inside the case folder) of one export."""
    return {"mask": f"{case}_seg.nii.gz", "segmentation": f"{case}.seg.nrrd", "color_table": f"{case}_colors.ctbl",
            "script": "load_in_slicer.py", "readme": "README.txt", "manifest": _MANIFEST,
            "meshes": {s.label: (f"{s.file_stem(case)}.vtk", f"{s.file_stem(case)}.stl") for s in segments if s.voxels}}


def _loader_script(case: str, folder: Path, image: Path, segments: Sequence[SlicerSegment], files: dict) -> str:
    models = "[\n" + "".join(
        f"    ({s.name!r}, {s.label}, {tuple(round(c, 4) for c in s.color)!r}, {files['meshes'][s.label][0]!r}, "
        f"{files['meshes'][s.label][1]!r}),\n" for s in segments if s.voxels) + "]"
    empty = repr([f"{s.name!r} (label {s.label})" for s in segments if not s.voxels])
    return _LOADER_TEMPLATE.format(
        case=case, script=str(folder / files["script"]), folder=str(folder), image=str(image),
        image_relative=os.path.relpath(image, folder), segmentation=files["segmentation"],
        color_table=files["color_table"], mask=files["mask"], models=models, empty=empty)


def _readme(case: str, image: Path, mask: Path, segments: Sequence[SlicerSegment], files: dict,
            voxel_ml: float, smoothing: float) -> str:
    mesh_lines = "\n".join(f"  {vtk}, {stl}   surface of segment {label}, LPS mm"
                           for label, (vtk, stl) in files["meshes"].items())
    segment_lines = "\n".join(
        f"  {s.label:5d}  {s.name:24s} {s.voxels:10d} voxels  {s.voxels * voxel_ml:10.3f} ml"
        + ("" if s.voxels else "   EMPTY: no mesh") for s in segments)
    return _README_TEMPLATE.format(case=case, image=image, mask_src=mask, mask=files["mask"],
                                   seg=files["segmentation"], ctbl=files["color_table"],
                                   mesh_lines=mesh_lines or "  (no meshes: every segment is empty)",
                                   manifest=files["manifest"], segment_lines=segment_lines, smoothing=smoothing)


def _manifest(case: str, image: Path, mask: Path, segments: Sequence[SlicerSegment], files: dict,
              voxel_ml: float, smoothing: float) -> str:
    import json

    return json.dumps({
        "tool": "monai-pipeline export-slicer", "case_id": case, "image": str(image), "mask": str(mask),
        "files": {k: v for k, v in files.items() if k != "meshes"}, "mesh_coordinate_system": "LPS",
        "mesh_smoothing_factor": smoothing,
        "segments": [{"label": s.label, "name": s.name, "color": list(s.color), "voxels": s.voxels,
                      "volume_ml": round(s.voxels * voxel_ml, 6),
                      "meshes": list(files["meshes"].get(s.label, ()))} for s in segments],
    }, indent=2) + "\n"


def _check_case_target(case: str, out_dir: Path, inputs: Sequence[Path]) -> Path:
    """The case folder ``out_dir/case``, refused when it would be unsafe to (re)place it.

    Raises:
        DataError: odd case ID, ``out_dir`` a file, the case folder holding an input, or an existing
            case folder that is not a previous export (no manifest).
    """
    from monai_pipeline.data import DataError

    if not _SAFE_CASE.match(case) or case in (".", ".."):
        raise DataError(f"case ID {case!r}: use letters, digits, '.', '_', '+' or '-' (starting with a letter or "
                        "digit, at most 200 characters); give one with --case-id")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: --out exists and is not a folder")
    final = (out_dir / case).resolve()
    for path in inputs:
        if path.resolve().is_relative_to(final):
            raise DataError(f"{path}: input lies inside the case folder {final} that the export replaces; "
                            "choose another --out")
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise DataError(f"{final}: exists and is not a folder; remove it or choose another --out")
    if final.is_dir() and any(final.iterdir()) and not (final / _MANIFEST).is_file():
        raise DataError(f"{final}: exists and was not written by export-slicer (no {_MANIFEST}); it is not "
                        "replaced: remove it or choose another --out")
    return final


def _names(names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    """Segment names from a mapping or ``LABEL=NAME`` strings, checked by :func:`parse_segment_names`."""
    if isinstance(names, Mapping):
        names = [f"{label}={name}" for label, name in names.items()]
    return parse_segment_names(names)


def _remove_leftovers(final: Path) -> None:
    """Remove hidden ``.tmp-*``/``.old-*`` folders of this case left by a killed run (the caller holds the
    output folder's lock, so no other export is using them)."""
    pattern = re.compile(rf"^\.(tmp|old)-[0-9a-f]{{8}}-{re.escape(final.name)}$")
    for p in final.parent.iterdir():
        if pattern.match(p.name) and p.is_dir() and not p.is_symlink():
            logger.info("removing %s, left by an interrupted export", p)
            shutil.rmtree(p, ignore_errors=True)


def _write_case(tmp: Path, final: Path, case: str, image: Path, mask: Path, labels: np.ndarray,
                segments: Sequence[SlicerSegment], ijk_to_lps: np.ndarray, smoothing: float) -> None:
    """Write every file of one case into the (temporary) folder ``tmp``; paths in the script name ``final``."""
    from monai_pipeline.io import atomic_write_text

    files = _case_files(case, segments)
    voxel_ml = abs(float(np.linalg.det(ijk_to_lps[:3, :3]))) / 1000.0
    write_mask_like(labels, image, tmp / files["mask"], dtype=labels.dtype)
    write_seg_nrrd(labels, ijk_to_lps, segments, tmp / files["segmentation"], smoothing)
    write_color_table(segments, tmp / files["color_table"])
    for s in segments:
        if not s.voxels:
            logger.warning("%s: segment %r (label %d) is empty: no mesh written", case, s.name, s.label)
            continue
        poly = segment_mesh(labels, s.label, ijk_to_lps, smoothing)
        for name in files["meshes"][s.label]:
            write_mesh(poly, tmp / name, f"monai-pipeline {case} {s.name}")
    atomic_write_text(tmp / files["script"], _loader_script(case, final, image, segments, files))
    atomic_write_text(tmp / files["readme"], _readme(case, image, mask, segments, files, voxel_ml, smoothing))
    atomic_write_text(tmp / files["manifest"], _manifest(case, image, mask, segments, files, voxel_ml, smoothing))


def export_slicer(image: str | os.PathLike, mask: str | os.PathLike, out_dir: str | os.PathLike,
                  names: Mapping[int, str] | Sequence[str] | None = None, case_id: str | None = None,
                  smoothing: float = SLICER_SMOOTHING) -> Path:
    """Write a 3D Slicer folder ``out_dir/<case_id>/`` for a mask of an image; return its path.

    The folder holds ``<case>_seg.nii.gz`` (the label map on the image's grid, the image's header
    geometry), ``<case>.seg.nrrd`` (Slicer segmentation, one segment per label, the header fields Slicer
    writes, space left-posterior-superior), ``<case>_colors.ctbl`` (Slicer colour table), one ``.vtk`` and
    one ``.stl`` surface per non-empty segment (LPS mm, Slicer's convention for model files),
    ``load_in_slicer.py`` (loads image, segmentation and meshes in Slicer's Python console; the image is
    referenced, not copied), ``README.txt`` and ``export_manifest.json``.

    The folder is built under a hidden temporary name beside it and renamed when complete; an existing
    export of the same case is replaced only then, so a failure leaves the old folder or none.

    Args:
        image: source image (NIfTI, NRRD, MHA...): its header geometry is the reference.
        mask: label map on the image's grid (0 = background, whole numbers 1..65535).
        out_dir: parent folder of the case folders.
        names: ``{label: name}`` or ``["1=tumor", "2=lung"]``; a binary mask defaults to label 1 "tumor".
        case_id: folder and file name stem; default the image's case ID (file name without extension).
        smoothing: mesh smoothing factor on Slicer's 0-1 scale (0 = none).

    Raises:
        DataError: missing, unreadable or non-3D file; mask shape or geometry different from the image's
            (the message names both files and the difference); fractional or negative labels; unsafe
            output location. Nothing is written then.
    """
    from monai_pipeline.data import case_id as default_case_id
    from monai_pipeline.io import held_locks, lock_folder, release_locks, replace_folder

    image, mask, out = Path(image), Path(mask), Path(out_dir)
    labels_map = _names(names)
    labels = _read_label_map(image, mask)
    case = case_id or default_case_id(image)
    final = _check_case_target(case, out, [image, mask])
    segments = slicer_segments(labels, labels_map)
    image_abs = image.resolve()
    before = held_locks()
    lock_folder(out, "export-slicer")
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}-{case}"
    created, done = not final.parent.exists(), False
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final)
        tmp.mkdir()
        _write_case(tmp, final, case, image_abs, mask.resolve(), labels, segments, _ijk_to_lps(image), smoothing)
        replace_folder(tmp, final)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if created and not done and not any(final.parent.iterdir()):
            final.parent.rmdir()  # a failed first export leaves no empty --out folder behind
        release_locks(keep=before)
    logger.info("%s: wrote %s (%s)", case, final, ", ".join(f"{s.name}: {s.voxels} voxels" for s in segments))
    return final


def pair_cases(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, postfix: str = "seg") -> list[tuple[Path, Path]]:
    """Pair the masks of a folder with their images by case ID: ``<case>_<postfix>.<ext>`` (or
    ``<case>.<ext>``) with ``<case>.<ext>``, as ``infer`` writes them and ``evaluate`` reads them.

    Images without a mask are skipped (logged); a mask without its image is an error.

    Raises:
        DataError: a folder is missing, holds no masks, or a mask has no image.
    """
    from monai_pipeline.data import IMAGE_SUFFIXES, DataError, files_by_case

    images = files_by_case(image_dir)
    masks = files_by_case(mask_dir, postfix)
    if not masks:
        raise DataError(f"{mask_dir}: no mask volumes ({', '.join(IMAGE_SUFFIXES)}) found")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{masks[orphans[0]]}: no image for case {orphans[0]} in {image_dir} "
                        f"({len(orphans)} mask(s) without an image)")
    skipped = sorted(set(images) - set(masks))
    if skipped:
        logger.info("%d image(s) without a mask skipped: %s", len(skipped), ", ".join(skipped[:10]))
    return [(images[c], masks[c]) for c in sorted(masks)]


def export_slicer_folders(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, out_dir: str | os.PathLike,
                          names: Mapping[int, str] | Sequence[str] | None = None,
                          postfix: str = "seg", smoothing: float = SLICER_SMOOTHING) -> list[Path]:
    """:func:`export_slicer` for every mask of ``mask_dir`` paired with its image in ``image_dir``.

    Every pair is validated before the first case is written, so bad input writes nothing.
    """
    from monai_pipeline.data import case_id

    labels_map = _names(names)

    pairs = pair_cases(image_dir, mask_dir, postfix)
    for image, mask in pairs:
        _read_label_map(image, mask)
        _check_case_target(case_id(image), Path(out_dir), [image, mask])
    return [export_slicer(image, mask, out_dir, labels_map, smoothing=smoothing) for image, mask in pairs]
