"""Input checks: every file and dataset entry is checked here (or by the readers of :mod:`monai_pipeline.io`)
before any stage uses it.

Everything downstream (transforms, training, inference, export) may assume that the files in a datalist
exist, lie inside their dataset folder, are readable, complete (gzip streams are read to the end), 3D, and
that each label has its image's shape and geometry. Problems raise :class:`DataError`, whose message names
the file and the fault.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monai_pipeline.data.masks import largest_component
from monai_pipeline.errors import DataError
from monai_pipeline.io.dicom import dicom_source, is_dicom_path, read_series, read_series_properties
from monai_pipeline.io.images import ImageProperties, gzip_trailer_size, is_nifti, nifti_data_bytes
from monai_pipeline.io.naming import IMAGE_SUFFIXES, case_id
from monai_pipeline.io.slices import slice_parts

__all__ = ["DataError", "image_info", "check_pair", "read_voxels", "check_label_values", "validate_datalist",
           "max_voxels", "segment_names", "read_label_map", "check_export_target", "MAX_LABEL", "check_folder",
           "check_same_grid", "check_probabilities", "check_same_size", "slice_mask_pairs", "read_presence_threshold",
           "check_export_inputs", "check_report_folders", "check_something_to_report", "check_unique_case_ids",
           "check_something_usable", "read_model_contract", "check_contract_weights", "check_contract_conflicts", "check_points"]

MAX_LABEL = 65535  # largest label value a Slicer export accepts
_SAFE_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def _gzip_payload_size(path: Path) -> int:
    """Read a gzip stream to its end (so truncation and CRC errors surface now, not mid-training)."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: corrupted or truncated gzip stream ({err})") from None
    return total


def max_voxels() -> int:
    """Largest image accepted, in voxels (all channels): ``$MONAI_PIPELINE_MAX_VOXELS``, default 2**31.

    A header that declares more is refused before anything is allocated (a 40-byte file claiming
    30000^3 voxels must not exhaust memory).
    """
    try:
        return int(os.environ.get("MONAI_PIPELINE_MAX_VOXELS", 2**31))
    except ValueError:
        raise DataError(f"MONAI_PIPELINE_MAX_VOXELS must be an integer, got {os.environ['MONAI_PIPELINE_MAX_VOXELS']!r}") from None


def _check_size(path: Path, shape: tuple[int, ...]) -> None:
    if any(s < 0 for s in shape):
        raise DataError(f"{path}: negative image dimensions {shape} in the header")
    n = int(np.prod([max(int(s), 1) for s in shape], dtype=object))
    if n > max_voxels():
        raise DataError(f"{path}: header declares {shape} = {n} voxels, more than the limit {max_voxels()} "
                        "(set MONAI_PIPELINE_MAX_VOXELS to allow larger images)")


def _check_finite(path: Path, arr: np.ndarray) -> None:
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(f"{path}: {bad} voxels are NaN or infinite")


def _nifti_info(path: Path, thorough: bool = True) -> ImageProperties:
    compressed = path.name.lower().endswith(".gz")
    try:
        img = nib.load(str(path))  # the header only: sizes are checked before any voxel is read
    except Exception as err:  # nibabel raises several types for bad headers
        if compressed:
            _gzip_payload_size(path)  # a broken gzip stream is the better explanation when there is one
        detail = re.sub(r"\s+", " ", str(err).replace(str(path), "")).strip(' "') or type(err).__name__
        raise DataError(f"{path}: not a readable NIfTI file ({detail})") from None
    _check_size(path, tuple(int(s) for s in img.shape))
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    expected = nifti_data_bytes(img)
    if not compressed:
        payload = path.stat().st_size
    elif not thorough and path.stat().st_size >= 18 and gzip_trailer_size(path) == expected % 2**32:
        payload = expected  # the trailer records the size the header needs: the loader's read checks the CRC
    else:
        payload = _gzip_payload_size(path)
    if payload < expected:
        raise DataError(f"{path}: file holds {payload} bytes of data, its header needs {expected} (truncated?)")
    if np.dtype(hdr.get_data_dtype()).kind == "f" or hdr.get_slope_inter()[0] not in (None, 1.0):
        _check_finite(path, np.asanyarray(img.dataobj))
    # nibabel silently replaces zero pixdims by 1 on load: read the raw header to see what is on disk
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        raw = type(hdr).from_fileobj(fh, check=False)
    zooms = np.asarray(raw["pixdim"][1 : 1 + min(len(shape), 3)], dtype=float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise DataError(f"{path}: invalid voxel spacing {tuple(zooms.tolist())}")
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: singular or non-finite voxel-to-world affine")
    return ImageProperties.from_affine(affine, shape, str(np.dtype(hdr.get_data_dtype())))


def _itk_info(path: Path) -> ImageProperties:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_size(path, tuple(int(s) for s in reader.GetSize()))
        image = reader.Execute()  # reads the voxels: catches truncated or corrupt payloads
    except RuntimeError as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise DataError(f"{path}: not a readable image ({msg})") from None
    if "float" in image.GetPixelIDTypeAsString():
        _check_finite(path, sitk.GetArrayViewFromImage(image))
    props = ImageProperties.of(image)
    spacing = np.asarray(props.spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing[:3] <= 0):
        raise DataError(f"{path}: invalid voxel spacing {props.spacing}")
    return props


@lru_cache(maxsize=4096)
def _cached_info(path: str, mtime_ns: int, size: int, thorough: bool = True) -> ImageProperties:
    p = Path(path)
    if size == 0:
        raise DataError(f"{p}: file is empty")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_info(p, thorough)
    if name.endswith(IMAGE_SUFFIXES):
        return _itk_info(p)
    raise DataError(f"{p}: unknown image type (expected one of {', '.join(IMAGE_SUFFIXES)})")


def _dicom_info(folder: Path, series: str | None, thorough: bool) -> ImageProperties:
    """A DICOM series checked as one regular volume (:func:`~monai_pipeline.io.dicom.series_geometry`); with
    ``thorough`` its voxels are read too (a slice whose pixel data is broken is named)."""
    props = read_series_properties(folder, series)
    _check_size(folder, props.shape)
    if thorough:
        read_series(folder, series)
    return props


def image_info(path: str | os.PathLike, ndim: int | None = 3, thorough: bool = True) -> ImageProperties:
    """Validate one image file and return its properties (shape, spacing, origin, direction, dtype).

    Results are cached per file (path, modification time, size), so a second call reads nothing.

    Args:
        path: NIfTI (``.nii``/``.nii.gz``), an ITK-readable volume (``.nrrd``, ``.mha``, ...) or a DICOM series
            (a folder, ``FOLDER#SERIES_UID`` or one of its files: :mod:`monai_pipeline.io.dicom`).
        ndim: required number of spatial dimensions (a trailing axis of length 1 is accepted);
            ``None`` accepts any.
        thorough: read a ``.nii.gz`` stream to its end (truncation and CRC errors surface now, before
            training). False (inference, where the loader reads every voxel next and a failure is recorded
            per case): a ``.nii.gz`` whose gzip trailer records the size its header needs is not decompressed
            here, so the source is read once for its voxels. Float images are read for the NaN check either way;
            NRRD/MHA files are read whole either way.

    Raises:
        DataError: missing, empty, unreadable, truncated or corrupt file, wrong dimensionality,
            non-finite or zero spacing.
    """
    p = Path(path)
    if (series := dicom_source(p)) is not None:
        info = _dicom_info(*series, thorough=thorough)
    elif not p.is_file():
        raise DataError(f"{p}: file not found")
    else:
        st = p.stat()
        info = _cached_info(str(p.resolve()), st.st_mtime_ns, st.st_size, thorough)
    shape = info.shape
    if ndim is not None:
        squeezed = shape[:ndim] if len(shape) > ndim and all(s == 1 for s in shape[ndim:]) else shape
        if len(squeezed) != ndim:
            raise DataError(f"{p}: expected a {ndim}D volume, found shape {shape}")
        if min(squeezed) < 1:
            raise DataError(f"{p}: empty image, shape {shape}")
    return info


def check_pair(image: str | os.PathLike, label: str | os.PathLike, ndim: int = 3, what: str = "label",
               thorough: bool = True) -> None:
    """Check that ``label`` (a label map, a mask, another modality: ``what``) lies on ``image``'s voxel grid
    (:meth:`~monai_pipeline.io.images.ImageProperties.same_grid`)."""
    a, b = image_info(image, ndim, thorough), image_info(label, ndim, thorough)
    if a.shape[:ndim] != b.shape[:ndim]:
        raise DataError(f"{label}: {what} shape {b.shape} differs from image {image} shape {a.shape}")
    if not b.same_grid(a, ndim):
        raise DataError(f"{label}: {what} geometry differs from image {image}: {b.difference(a, 'image')}")


def read_voxels(path: str | os.PathLike) -> np.ndarray:
    """A volume's voxels as stored (NIfTI scaling applied as nibabel does; ITK formats in z, y, x order; a DICOM
    series in HU, i, j, k order).

    For value checks (label values, NaN, hashes), not for geometry; read the file with
    :func:`image_info` first when it may be broken.
    """
    if (series := dicom_source(path)) is not None:
        return read_series(*series)[0]
    if is_nifti(path):
        return np.asanyarray(nib.load(str(path)).dataobj)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@lru_cache(maxsize=4096)
def _label_values(path: str, mtime_ns: int, size: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.unique(read_voxels(path)))


def check_label_values(label: str | os.PathLike, labels: Iterable[int]) -> None:
    """Check that a label map holds only the declared label values (whole numbers; float storage is fine)."""
    p = Path(label)
    st = p.stat()
    values = _label_values(str(p.resolve()), st.st_mtime_ns, st.st_size)
    fractional = [v for v in values if v != round(v)]
    if fractional:
        raise DataError(f"{p}: label map holds fractional values {fractional[:5]}; labels must be whole numbers")
    allowed = {int(v) for v in labels}
    extra = sorted({int(v) for v in values} - allowed)
    if extra:
        hint = " (a 0/255 mask? store it as 0/1)" if extra == [255] else ""
        raise DataError(f"{p}: label values {extra} are not among the declared labels {sorted(allowed)}{hint}")


def validate_datalist(datalist: Sequence[dict], ndim: int = 3, labels: Iterable[int] | None = None,
                      thorough: bool = True) -> list[dict]:
    """Validate every image (and label, when present) of a datalist; return it unchanged.

    ``image`` may be one path or a list of paths (one file per modality, all on the label's grid).
    ``labels``: the declared label values; every label map's voxels must be among them.
    """
    labels = None if labels is None else list(labels)
    for item in datalist:
        if labels is not None and "label" in item:
            image_info(item["label"], ndim, thorough)
            check_label_values(item["label"], labels)
        images = [item["image"]] if isinstance(item["image"], (str, os.PathLike)) else list(item["image"])
        for k, image in enumerate(images):
            if "label" in item:
                check_pair(image, item["label"], ndim, thorough=thorough)
            else:
                image_info(image, ndim, thorough)
            if k and "label" not in item:
                check_pair(images[0], image, ndim, thorough=thorough)
    return list(datalist)


# ---------------------------------------------------------------------------------- exports (Slicer)
def segment_names(items: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    """``["1=tumor", "2=lung"]`` (or ``{1: "tumor"}``) -> ``{1: "tumor", 2: "lung"}``; a single bare name means
    label 1.

    Raises:
        DataError: malformed item, label outside 1..65535, empty or multi-line name, label named twice.
    """
    if isinstance(items, Mapping):
        items = [f"{label}={name}" for label, name in items.items()]
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
        if not 1 <= label <= MAX_LABEL:
            raise DataError(f"--names: {item!r}: label must be between 1 and {MAX_LABEL} (0 is background)")
        if not name or any(c in name for c in "\r\n\0"):
            raise DataError(f"--names: {item!r}: the name must be one non-empty line")
        if label in out:
            raise DataError(f"--names: label {label} is named twice ({out[label]!r}, {name!r})")
        out[label] = name
    return out


def read_label_map(image: str | os.PathLike, mask: str | os.PathLike) -> np.ndarray:
    """Validate ``mask`` against ``image`` and return its labels as an ``(I, J, K)`` integer array.

    Files are checked by :mod:`monai_pipeline.data` (existence, integrity, 3D, shape and geometry within
    1e-3 mm); values must be whole numbers in 0..65535.

    Raises:
        DataError: naming the file and the fault.
    """
    info_img = image_info(image)
    check_pair(image, mask, what="mask")
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
                        f"or 1..{MAX_LABEL}")
    if values.size and values.max() > MAX_LABEL:
        raise DataError(f"{mask}: label value {int(values.max())} is above {MAX_LABEL}")
    return arr.astype(np.uint16 if values.size and values.max() > 255 else np.uint8)


def check_export_target(case: str, out_dir: Path, inputs: Sequence[Path], manifest: str,
                        tool: str = "export-slicer") -> Path:
    """The case folder ``out_dir/case``, refused when it would be unsafe to (re)place it.

    Raises:
        DataError: odd case ID, ``out_dir`` a file, the case folder holding an input, or an existing
            case folder that is not a previous export (no manifest).
    """
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
    if final.is_dir() and any(final.iterdir()) and not (final / manifest).is_file():
        raise DataError(f"{final}: exists and was not written by {tool} (no {manifest}); it is not "
                        "replaced: remove it or choose another --out")
    return final


# ------------------------------------------------------------------------------ evaluation and report inputs
def check_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is an existing folder."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: {what} not found")
    return p


def check_same_grid(path: str | os.PathLike, props: ImageProperties, ref_path: str | os.PathLike,
                    ref_props: ImageProperties, what: str, hint: str = "") -> None:
    """Check that the volume ``path`` (a prediction, probability map, image: ``what``) lies on the grid of its
    reference label ``ref_path``; the message names both files and the difference."""
    if not props.same_grid(ref_props):
        raise DataError(f"{path}: {what} geometry differs from its label {ref_path}: "
                        f"{props.difference(ref_props, 'label')}{hint}")


def check_probabilities(path: str | os.PathLike, prob: np.ndarray) -> None:
    """Check that a probability map holds finite values in [0, 1]."""
    finite = bool(np.isfinite(prob).all())
    lo, hi = float(np.nanmin(prob)), float(np.nanmax(prob))
    if not (finite and lo >= 0.0 and hi <= 1.0):
        raise DataError(f"{path}: probabilities must lie in [0, 1] (found {lo:g} to {hi:g}"
                        f"{', and NaN/inf' if not finite else ''})")


def check_same_size(pred_file: str | os.PathLike, pred: np.ndarray, label_file: str | os.PathLike,
                    label: np.ndarray) -> None:
    """Check that a predicted 2D slice mask has its label's size."""
    if pred.shape != label.shape:
        raise DataError(f"{pred_file}: size {pred.shape} differs from its label {label_file} {label.shape}")


def slice_mask_pairs(pred_dir: str | os.PathLike, label_root: str | os.PathLike,
                     pred_postfix: str = "seg") -> list[tuple[str, str, Path, Path]]:
    """Pair predicted slice masks ``<slice>_<postfix>.png`` (anywhere under ``pred_dir``) with the label masks
    ``<patient>_<n>_mask.<ext>`` under ``label_root``: ``[(slice_id, patient, prediction, label)]``.

    Raises:
        DataError: no predicted slice mask, or a prediction without its label.
    """
    labels = {}
    for f in sorted(Path(label_root).rglob("*")):
        parts = slice_parts(f)
        if parts and parts[2] and not f.name.startswith("."):
            labels[f"{parts[0]}_{parts[1]}"] = (parts[0], f)
    suffix = f"_{pred_postfix}.png"
    preds = {f.name[: -len(suffix)]: f for f in sorted(Path(pred_dir).rglob(f"*{suffix}"))}
    if not preds:
        raise DataError(f"{pred_dir}: no predicted slice masks (*{suffix})")
    out = []
    for sid, pred_file in preds.items():
        if sid not in labels:
            raise DataError(f"{pred_file}: no label mask for slice {sid} under {label_root}")
        out.append((sid, labels[sid][0], pred_file, labels[sid][1]))
    return out


def read_presence_threshold(path: str | os.PathLike) -> float:
    """The ``tuned_threshold`` of a validation run's ``presence.json``."""
    p = Path(path)
    try:
        return float(json.loads(p.read_text())["tuned_threshold"])
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{p}: not a presence.json with a tuned_threshold ({err})") from None


def check_export_inputs(image: str | os.PathLike, mask: str | os.PathLike, case_id: str | None) -> bool:
    """Whether ``export-slicer`` got two folders (True) or two files (False); one of each, or ``--case-id``
    with folders, is refused. A DICOM series' folder is one image."""
    folders = Path(image).is_dir() and not is_dicom_path(image), Path(mask).is_dir()
    if any(folders) and not all(folders):
        raise DataError(f"--image {image} and --mask {mask}: give two files or two folders")
    if all(folders) and case_id:
        raise DataError("--case-id names one case; with folders each case keeps its own ID")
    return all(folders)


def check_report_folders(run_dir: str | os.PathLike, train_dir: str | os.PathLike | None,
                         out: str | os.PathLike, marker: str) -> None:
    """Check a report's inputs and output: ``run_dir`` (and ``train_dir``) exist; ``out`` is neither the run
    folder nor above it, and is empty, missing or an earlier report (holds ``marker``)."""
    run_dir, out = check_folder(run_dir), Path(out)
    if train_dir is not None:
        check_folder(train_dir, "training folder")
    out_abs, run_abs = out.resolve(), run_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents:
        raise DataError(f"{out}: the report folder cannot be the run folder or one of its parents")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise DataError(f"{out}: exists and is not a report folder written by monai-pipeline; choose another --out")


def check_something_to_report(run_dir: str | os.PathLike, found: bool, expected: Sequence[str],
                              problems: Sequence[str]) -> None:
    """Refuse a run folder that holds none of the ``expected`` files and no training logs."""
    if not found:
        why = f"; unreadable: {'; '.join(problems)}" if problems else ""
        raise DataError(f"{run_dir}: nothing to report: no {', '.join(expected)} and no training logs "
                        f"(events.out.tfevents.*){why}")


# ------------------------------------------------------------------------------------- inference inputs
def check_unique_case_ids(entries: Iterable[str]) -> None:
    """Refuse inputs whose case IDs collide (their outputs would overwrite each other)."""
    seen: dict[str, str] = {}
    for head in entries:
        cid = case_id(head)
        if cid in seen:
            raise DataError(f"{head}: case ID '{cid}' is also used by {seen[cid]}; outputs would collide")
        seen[cid] = head


def check_something_usable(usable: int, rejected: Sequence[str]) -> None:
    """Refuse a run with no ``usable`` input when inputs were rejected (``rejected``: their faults)."""
    if usable or not rejected:
        return
    raise DataError(f"no usable input among {len(rejected)}: " + "; ".join(rejected[:3]))


# ------------------------------------------------------------------------------------- model contracts
def read_model_contract(path: str | os.PathLike, schema: int, required: Sequence[str]) -> dict:
    """The JSON object of a model contract file (``model.contract.json``), checked: readable JSON, an object with
    every ``required`` field, a whole-number ``schema`` this version reads (at most ``schema``), and a value in
    ``settings`` for each ``binding`` key."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{p}: not a readable model contract ({err}); delete it to run the model with the bundle's "
                        "settings, or retrain to write a new one") from None
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{p}: not a model contract: no {', '.join(missing)}")
    if not isinstance(data["schema"], int) or isinstance(data["schema"], bool):
        raise DataError(f"{p}: schema must be a whole number, found {data['schema']!r}")
    if data["schema"] > schema:
        raise DataError(f"{p}: contract schema {data['schema']} is newer than this monai-pipeline reads ({schema}); "
                        "upgrade monai-pipeline")
    unset = [k for k in data["binding"] if k not in data["settings"]]
    if unset:
        raise DataError(f"{p}: binding keys without a value in settings: {', '.join(unset)}")
    return data


def check_contract_weights(path: str | os.PathLike, weights: str | os.PathLike, recorded: str, actual: str) -> None:
    """Refuse a contract whose recorded sha256 is not that of the weights file beside it."""
    if recorded != actual:
        raise DataError(f"{path}: describes other weights than {weights} (sha256 {recorded[:12]}... recorded, "
                        f"{actual[:12]}... on disk); put the contract of these weights beside them, or delete it to "
                        "run them with the bundle's settings")


def check_contract_conflicts(path: str | os.PathLike, conflicts: Sequence[str]) -> None:
    """Refuse settings of a run that contradict the binding entries of the model's contract (``conflicts``:
    one ``"<key> <this run's value> given, the model's is <value>"`` each), in one line."""
    if conflicts:
        raise DataError(f"{path}: {'; '.join(conflicts)}; drop the override to use the model's value, or set "
                        "contract_override true to run anyway (CLI: --set contract_override=true; "
                        "monai.bundle run: --contract_override true)")


# ------------------------------------------------------------------------------------- model weights
TRAIN_CONFIGS = "\"['configs/inference.json','configs/train.json']\""


def check_model_weights(ckpt_dir: str | os.PathLike, bundle_root: str | os.PathLike | None = None,
                        needed: bool | str = True) -> None:
    """Refuse to run inference or evaluation without ``<ckpt_dir>/model.pt``, in one line saying what to do: train
    first (the command), or point ``ckpt_dir`` at a folder that holds a trained model. Nothing to check when the
    weights are not ``needed`` (the bundle's ``load_pretrain`` false)."""
    if isinstance(needed, str):
        needed = needed.strip().lower() not in ("false", "0", "no", "off", "")
    weights = Path(ckpt_dir) / "model.pt"
    if not needed or weights.is_file():
        return
    name = Path(bundle_root).resolve().name if bundle_root is not None else "<bundle>"
    raise DataError(f"{weights}: no trained model here; train first (from the bundle folder: "
                    f"python -m monai.bundle run --config_file {TRAIN_CONFIGS} --dataset_dir DIR, or monai-pipeline "
                    f"train --bundle {name} --dataset-dir DIR), or point ckpt_dir at a folder holding model.pt "
                    "(monai.bundle run: --ckpt_dir DIR; monai-pipeline infer: --ckpt-dir DIR; Python: segment(images, "
                    "model_dir, ...))")


# ------------------------------------------------------------------------------------------- points on a CT
AIR_HU = -800.0  # a point needs a voxel denser than this near it: air is -1000, aerated lung about -850, and
# ground-glass nodules reach down to about -700 HU (an LIDC-IDRI test nodule's centre has no voxel above -596 HU)
BODY_HU = -500.0  # tissue of the body outline on an axial slice
TISSUE_RADIUS_MM = 3.0  # a point needs tissue (> AIR_HU) within this distance
BODY_CHECK_MIN_FOV_MM = 150.0  # images narrower than this are crops taken inside the body: no body check


def _voxel(props: ImageProperties, lps: np.ndarray) -> np.ndarray:
    """Continuous voxel index (i, j, k) of an LPS point."""
    return (np.linalg.inv(props.lps_affine) @ np.append(lps, 1.0))[:3]


def check_points(ct: np.ndarray, props: ImageProperties, points_lps: np.ndarray, labels: Sequence[str],
                 image: str) -> list[np.ndarray]:
    """The voxel of each point, once every point is checked: inside the image, on tissue, inside the body.

    Raises:
        DataError: naming the point (label and LPS position) and the fault: outside the image, in air (no
            voxel above -800 HU within 3 mm), or outside the body (on a whole CT: not inside the largest
            tissue region of its axial slice, holes filled).
    """
    shape = np.asarray(ct.shape[:3])
    spacing = np.asarray(props.spacing[:3], dtype=float)
    fov = shape * spacing
    out = []
    for lps, label in zip(np.asarray(points_lps, dtype=float).reshape(-1, 3), labels):
        name = f"point {label} at LPS ({', '.join(f'{v:.1f}' for v in lps)}) mm"
        ijk = _voxel(props, lps)
        if np.any(ijk < -0.5) or np.any(ijk > shape - 0.5):
            lo, hi = props.lps_affine @ np.r_[-0.5, -0.5, -0.5, 1], props.lps_affine @ np.r_[shape - 0.5, 1]
            raise DataError(f"{image}: {name} lies outside the image (voxel {np.round(ijk, 1).tolist()} of "
                            f"{shape.tolist()}; the image spans LPS {np.round(np.minimum(lo, hi)[:3], 1).tolist()} to "
                            f"{np.round(np.maximum(lo, hi)[:3], 1).tolist()}); check the coordinate system (LPS or RAS)")
        v = np.clip(np.rint(ijk).astype(int), 0, shape - 1)
        r = np.ceil(TISSUE_RADIUS_MM / spacing).astype(int)
        box = tuple(slice(max(0, c - n), c + n + 1) for c, n in zip(v, r))
        grid = np.meshgrid(*[(np.arange(s.start, min(s.stop, n)) - c) * sp
                             for s, c, sp, n in zip(box, v, spacing, shape)], indexing="ij")
        near = sum(g ** 2 for g in grid) <= TISSUE_RADIUS_MM ** 2
        densest = float(np.asarray(ct[box])[near].max())
        if densest <= AIR_HU:
            raise DataError(f"{image}: {name} lies in air or lung (densest voxel within {TISSUE_RADIUS_MM:g} mm: "
                            f"{densest:.0f} HU); place the point on the nodule")
        axial = int(np.argmax(np.abs(props.lps_affine[2, :3])))
        in_plane = [a for a in range(3) if a != axial]
        if min(fov[in_plane]) >= BODY_CHECK_MIN_FOV_MM:
            plane = np.take(np.asarray(ct), v[axial], axis=axial) > BODY_HU
            if plane.any():
                body = ndimage.binary_fill_holes(largest_component(plane))
                if not body[tuple(v[a] for a in in_plane)]:
                    raise DataError(f"{image}: {name} lies outside the body on its axial slice {v[axial]}; place "
                                    "the point on the nodule")
        out.append(ijk)
    return out
