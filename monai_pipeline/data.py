"""Data stage: read datasets, validate every input once, build MONAI datalists and patient-level splits.

This is the one module where inputs are checked. Everything downstream (transforms, training, inference,
export) may assume that the files in a datalist exist, lie inside their dataset folder, are readable,
complete (gzip streams are read to the end), 3D, and that each label has its image's shape and geometry.
Problems raise :class:`DataError`, whose message names the file and the fault.

A datalist is a list of dicts as MONAI's ``Dataset`` expects::

    [{"image": "/abs/imagesTr/lung_001.nii.gz", "label": "/abs/labelsTr/lung_001.nii.gz",
      "case_id": "lung_001", "patient": "lung_001"}, ...]

This module imports no other stage of the package.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "DataError",
    "ImageInfo",
    "read_dataset_json",
    "msd_datalist",
    "msd_test_datalist",
    "image_datalist",
    "lidc_datalist",
    "lidc_split",
    "split_train_val",
    "kfold_split",
    "patient_id",
    "case_id",
    "image_info",
    "itk_affine",
    "validate_datalist",
    "check_label_values",
    "declared_labels",
    "max_voxels",
    "is_slice_file",
    "is_slice_mask",
    "read_slice",
    "read_voxels",
    "pair_slices",
    "slice_folder",
    "lgg_datalist",
    "brain_datalist",
    "brain_test_images",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_GEOMETRY_TOL_MM = 1e-3


class DataError(ValueError):
    """An input file or dataset description is unusable. The message names the file and the fault."""


# ----------------------------------------------------------------------------------------------- ids
def case_id(path: str | os.PathLike) -> str:
    """Case identifier of an image path: the file name without its image extension."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def files_by_case(folder: str | os.PathLike, postfix: str = "") -> dict[str, Path]:
    """The volumes of a folder by case ID: ``<case>[_<postfix>].<ext>`` -> ``{case: path}``.

    Hidden files, non-volumes and Slicer ``.seg.nrrd`` files are left out; the postfix is removed when
    present (``lung_001_seg.nii.gz`` -> ``lung_001`` for ``postfix="seg"``).

    Raises:
        DataError: the folder does not exist, or two files give one case ID.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        name = p.name.lower()
        if p.name.startswith(".") or not p.is_file() or not name.endswith(IMAGE_SUFFIXES) or name.endswith(".seg.nrrd"):
            continue
        c = case_id(p)
        c = c[: -len(postfix) - 1] if postfix and c.endswith(f"_{postfix}") else c
        if c in out:
            raise DataError(f"{p}: a second file for case {c} (first: {out[c].name})")
        out[c] = p
    return out


_PATIENT_PATTERNS = (
    re.compile(r"(LIDC-IDRI-\d{4})"),
    re.compile(r"(BraTS\d*_[A-Za-z0-9]+_\d+)", re.IGNORECASE),
    re.compile(r"(TCGA_[A-Z0-9]{2}_[A-Z0-9]{4})"),
)


def patient_id(path: str | os.PathLike) -> str:
    """Patient identifier used to keep all of a patient's cases on one side of a split.

    Recognises LIDC-IDRI (``LIDC-IDRI-0001``), BraTS and TCGA (LGG) identifiers anywhere in the name;
    otherwise every case is its own patient (the MSD convention: one case per patient).
    """
    name = Path(path).name
    for pattern in _PATIENT_PATTERNS:
        m = pattern.search(name)
        if m:
            return m.group(1)
    return case_id(path)


# -------------------------------------------------------------------------------------- file checks
class ImageInfo(dict):
    """Header facts of one image: ``shape`` (voxels), ``spacing`` (mm), ``affine`` (4x4 RAS, mm)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self["shape"]

    @property
    def affine(self) -> np.ndarray:
        return self["affine"]


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


def _nifti_info(path: Path) -> ImageInfo:
    import nibabel as nib

    compressed = path.name.lower().endswith(".gz")
    try:
        img = nib.load(str(path))  # the header only: sizes are checked before any voxel is read
    except Exception as err:  # nibabel raises several types for bad headers
        if compressed:
            _gzip_payload_size(path)  # a broken gzip stream is the better explanation when there is one
        detail = re.sub(r"\s+", " ", str(err).replace(str(path), "")).strip(' "') or type(err).__name__
        raise DataError(f"{path}: not a readable NIfTI file ({detail})") from None
    _check_size(path, tuple(int(s) for s in img.shape))
    payload = _gzip_payload_size(path) if compressed else path.stat().st_size
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    _check_size(path, shape)
    offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))
    expected = offset + int(np.prod(shape)) * np.dtype(hdr.get_data_dtype()).itemsize
    if payload < expected:
        raise DataError(f"{path}: file holds {payload} bytes of data, its header needs {expected} (truncated?)")
    if np.dtype(hdr.get_data_dtype()).kind == "f" or hdr.get_slope_inter()[0] not in (None, 1.0):
        _check_finite(path, np.asanyarray(img.dataobj))
    # nibabel silently replaces zero pixdims by 1 on load: read the raw header to see what is on disk
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        raw = type(hdr).from_fileobj(fh, check=False)
    zooms = tuple(float(z) for z in raw["pixdim"][1 : 1 + min(len(shape), 3)])
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: singular or non-finite voxel-to-world affine")
    return ImageInfo(shape=shape, spacing=zooms, affine=affine)


def _itk_info(path: Path) -> ImageInfo:
    import SimpleITK as sitk

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
    return ImageInfo(shape=tuple(int(s) for s in reader.GetSize()), spacing=tuple(reader.GetSpacing()),
                     affine=itk_affine(reader))


def itk_affine(image) -> np.ndarray:
    """4x4 RAS voxel-to-world affine (mm) of a SimpleITK image or ``ImageFileReader`` (ITK works in LPS)."""
    size = image.GetSize()
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(len(size), len(size))
    origin = np.asarray(image.GetOrigin(), dtype=float)
    affine = np.eye(4)
    n = min(len(size), 3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])[:n, :n]
    affine[:n, :n] = lps_to_ras @ direction[:n, :n] @ np.diag(spacing[:n])
    affine[:n, 3] = lps_to_ras @ origin[:n]
    return affine


@lru_cache(maxsize=4096)
def _cached_info(path: str, mtime_ns: int, size: int) -> ImageInfo:
    p = Path(path)
    if size == 0:
        raise DataError(f"{p}: file is empty")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_info(p)
    if name.endswith(IMAGE_SUFFIXES):
        return _itk_info(p)
    raise DataError(f"{p}: unknown image type (expected one of {', '.join(IMAGE_SUFFIXES)})")


def image_info(path: str | os.PathLike, ndim: int | None = 3) -> ImageInfo:
    """Validate one image file and return its header facts.

    Args:
        path: NIfTI (``.nii``/``.nii.gz``) or an ITK-readable volume (``.nrrd``, ``.mha``, ...).
        ndim: required number of spatial dimensions (a trailing axis of length 1 is accepted);
            ``None`` accepts any.

    Raises:
        DataError: missing, empty, unreadable, truncated or corrupt file, wrong dimensionality,
            non-finite or zero spacing.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    st = p.stat()
    info = _cached_info(str(p.resolve()), st.st_mtime_ns, st.st_size)
    shape = info.shape
    if ndim is not None:
        squeezed = shape[:ndim] if len(shape) > ndim and all(s == 1 for s in shape[ndim:]) else shape
        if len(squeezed) != ndim:
            raise DataError(f"{p}: expected a {ndim}D volume, found shape {shape}")
        if min(squeezed) < 1:
            raise DataError(f"{p}: empty image, shape {shape}")
    spacing = np.asarray(info["spacing"], dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing[:3] <= 0):
        raise DataError(f"{p}: invalid voxel spacing {tuple(spacing)}")
    return info


def check_pair(image: str | os.PathLike, label: str | os.PathLike, ndim: int = 3) -> None:
    """Check that ``label`` has ``image``'s shape and geometry (within 1e-3 mm)."""
    a, b = image_info(image, ndim), image_info(label, ndim)
    if a.shape[:ndim] != b.shape[:ndim]:
        raise DataError(f"{label}: label shape {b.shape} differs from image {image} shape {a.shape}")
    if not np.allclose(a.affine, b.affine, atol=_GEOMETRY_TOL_MM):
        raise DataError(
            f"{label}: label geometry (affine) differs from image {image}:\n{np.round(b.affine, 4)}\n"
            f"vs\n{np.round(a.affine, 4)}"
        )


def read_voxels(path: str | os.PathLike) -> np.ndarray:
    """A volume's voxels as stored (NIfTI scaling applied as nibabel does; ITK formats in z, y, x order).

    For value checks (label values, NaN, hashes), not for geometry; read the file with
    :func:`image_info` first when it may be broken.
    """
    if str(path).lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    import SimpleITK as sitk

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


def validate_datalist(datalist: Sequence[dict], ndim: int = 3, labels: Iterable[int] | None = None) -> list[dict]:
    """Validate every image (and label, when present) of a datalist; return it unchanged.

    ``image`` may be one path or a list of paths (one file per modality, all on the label's grid).
    ``labels``: the declared label values; every label map's voxels must be among them.
    """
    labels = None if labels is None else list(labels)
    for item in datalist:
        if labels is not None and "label" in item:
            image_info(item["label"], ndim)
            check_label_values(item["label"], labels)
        images = [item["image"]] if isinstance(item["image"], (str, os.PathLike)) else list(item["image"])
        for k, image in enumerate(images):
            if "label" in item:
                check_pair(image, item["label"], ndim)
            else:
                image_info(image, ndim)
            if k and "label" not in item:
                check_pair(images[0], image, ndim)
    return list(datalist)


# ----------------------------------------------------------------------------------------- MSD json
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: dataset description not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 BOM is accepted
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def _inside(root: Path, entry: Any, json_path: Path, where: str) -> str:
    """Resolve a dataset.json entry to an absolute path that must stay inside ``root``."""
    if not isinstance(entry, str) or not entry.strip():
        raise DataError(f"{json_path}: {where} must be a non-empty path string, found {entry!r}")
    if os.path.isabs(entry):
        raise DataError(f"{json_path}: {where} is an absolute path ({entry}); use a path relative to {root}")
    full = (root / entry).resolve()
    if not full.is_relative_to(root.resolve()):
        raise DataError(f"{json_path}: {where} ({entry}) points outside the dataset folder {root}")
    if not full.is_file():
        raise DataError(f"{json_path}: {where} points to a missing file: {full}")
    return str(full)


def _first(image: str | list[str]) -> str:
    return image if isinstance(image, str) else image[0]


def _inside_any(root: Path, entry: Any, json_path: Path, where: str) -> str | list[str]:
    """An image entry: one path, or a non-empty list of paths (one file per modality / channel)."""
    if isinstance(entry, list):
        if not entry:
            raise DataError(f"{json_path}: {where} is an empty list of modality files")
        return [_inside(root, e, json_path, f"{where}[{k}]") for k, e in enumerate(entry)]
    return _inside(root, entry, json_path, where)


def read_dataset_json(dataset_dir: str | os.PathLike) -> dict:
    """Read and check an MSD ``dataset.json``.

    Returns a dict with ``training`` (list of {image, label, case_id, patient}), ``validation`` (same,
    possibly empty), ``test`` (list of {image, case_id}), ``labels`` ({value: name}), ``modality``
    ({channel: name}) and ``name``. Paths are absolute.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    json_path = root / "dataset.json"
    meta = _read_json(json_path)
    if not isinstance(meta, dict):
        raise DataError(f"{json_path}: top level must be a JSON object")
    if "training" not in meta:
        raise DataError(f"{json_path}: missing key 'training'")
    out: dict[str, Any] = {
        "name": str(meta.get("name", root.name)),
        "labels": meta.get("labels", {"0": "background", "1": "foreground"}),
        "modality": meta.get("modality", {"0": "CT"}),
    }
    if not isinstance(out["labels"], dict) or not isinstance(out["modality"], dict):
        raise DataError(f"{json_path}: 'labels' and 'modality' must be objects")
    for section in ("training", "validation"):
        entries = meta.get(section, [])
        if not isinstance(entries, list):
            raise DataError(f"{json_path}: '{section}' must be a list")
        items, seen = [], set()
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]"
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DataError(f"{json_path}: {where} must be an object with 'image' and 'label'")
            image = _inside_any(root, entry["image"], json_path, f"{where}.image")
            label = _inside(root, entry["label"], json_path, f"{where}.label")
            first = image if isinstance(image, str) else image[0]
            if first in seen:
                raise DataError(f"{json_path}: {where}.image {entry['image']} is listed twice")
            seen.add(first)
            items.append({"image": image, "label": label, "case_id": case_id(first), "patient": patient_id(first)})
        out[section] = items
    overlap = {_first(d["image"]) for d in out["training"]} & {_first(d["image"]) for d in out["validation"]}
    if overlap:
        raise DataError(f"{json_path}: {sorted(overlap)[0]} is listed in both 'training' and 'validation'")
    if not out["training"]:
        raise DataError(f"{json_path}: the 'training' list is empty")
    test = meta.get("test", [])
    if not isinstance(test, list):
        raise DataError(f"{json_path}: 'test' must be a list")
    out["test"] = []
    for i, entry in enumerate(test):
        rel = entry.get("image") if isinstance(entry, dict) else entry
        image = _inside_any(root, rel, json_path, f"test[{i}]")
        out["test"].append({"image": image, "case_id": case_id(_first(image))})
    return out


# ------------------------------------------------------------------------------------------- splits
def _patient(item: dict) -> str:
    return item["patient"] if "patient" in item else patient_id(_first(item["image"]))


def _groups(datalist: Sequence[dict]) -> list[str]:
    return sorted({_patient(d) for d in datalist})


def split_train_val(datalist: Sequence[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Fixed-seed train/validation split by patient: all cases of a patient land on one side.

    At least one patient goes to each side when there are two or more patients.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = _groups(datalist)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(patients)))
    n_val = int(round(val_fraction * len(patients)))
    if val_fraction > 0 and len(patients) >= 2:
        n_val = min(max(n_val, 1), len(patients) - 1)
    val_patients = {patients[i] for i in order[:n_val]}
    train = [d for d in datalist if _patient(d) not in val_patients]
    val = [d for d in datalist if _patient(d) in val_patients]
    return train, val


def kfold_split(datalist: Sequence[dict], num_folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[list, list]:
    """Fold ``fold`` of a fixed-seed ``num_folds``-fold split by patient: (train, val)."""
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got {num_folds=} {fold=}")
    patients = _groups(datalist)
    if len(patients) < num_folds:
        raise DataError(f"{len(patients)} patients cannot fill {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for k, i in enumerate(order) if k % num_folds == fold}
    train = [d for d in datalist if _patient(d) not in val_patients]
    val = [d for d in datalist if _patient(d) in val_patients]
    return train, val


def _select(datalist: list[dict], provided_val: list[dict], split: str, split_mode: str, val_fraction: float,
            seed: int, num_folds: int, fold: int, source: str) -> list[dict]:
    if split == "all":
        return datalist
    if split_mode == "random":
        train, val = split_train_val(datalist, val_fraction, seed)
    elif split_mode == "kfold":
        train, val = kfold_split(datalist, num_folds, fold, seed)
    elif split_mode == "provided":
        if not provided_val:
            raise DataError(f"{source}: split_mode 'provided' needs a non-empty 'validation' list")
        train, val = datalist, provided_val
    else:
        raise ValueError(f"split_mode must be 'random', 'kfold' or 'provided', got {split_mode!r}")
    if split == "train":
        return train
    if split in ("val", "validation"):
        return val
    raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")


def declared_labels(meta: dict, dataset_dir: str | os.PathLike) -> list[int]:
    """The label values dataset.json declares (its ``labels`` keys)."""
    try:
        return sorted(int(k) for k in meta["labels"])
    except (TypeError, ValueError):
        raise DataError(f"{Path(dataset_dir) / 'dataset.json'}: 'labels' keys must be label values (\"0\", \"1\", ...), "
                        f"found {list(meta['labels'])}") from None


def msd_datalist(dataset_dir: str | os.PathLike, split: str = "train", split_mode: str = "random",
                 val_fraction: float = 0.2, seed: int = 0, num_folds: int = 5, fold: int = 0,
                 validate: bool = True, max_cases: int | None = None) -> list[dict]:
    """Datalist of one split of an MSD dataset (Task06_Lung layout), validated.

    Args:
        dataset_dir: folder holding ``dataset.json``.
        split: ``"train"``, ``"val"`` or ``"all"`` (the whole training list) or ``"test"`` (images only).
        split_mode: ``"random"`` — fixed-seed patient-level split of the training list, ``val_fraction``
            to validation; ``"provided"`` — every training case trains and dataset.json's ``validation``
            list validates; ``"kfold"`` — fold ``fold`` of ``num_folds`` by patient.
        val_fraction: fraction of patients for validation in ``"random"`` mode.
        seed: split seed.
        num_folds, fold: k-fold settings.
        validate: check every file (existence, integrity, 3D, label geometry) before returning.
        max_cases: keep only the first N cases (quick runs).
    """
    meta = read_dataset_json(dataset_dir)
    if split == "test":
        items = meta["test"]
    else:
        items = _select(meta["training"], meta["validation"], split, split_mode, val_fraction, seed, num_folds,
                        fold, str(Path(dataset_dir) / "dataset.json"))
    if max_cases is not None:
        items = items[: int(max_cases)]
    return validate_datalist(items, labels=declared_labels(meta, dataset_dir)) if validate else list(items)


def msd_test_datalist(dataset_dir: str | os.PathLike) -> list[str]:
    """Image paths of an MSD dataset's ``test`` list (the inference bundle's default ``datalist``)."""
    return [d["image"] for d in msd_datalist(dataset_dir, split="test")]


def _gather_paths(images: str | os.PathLike | Iterable[str | os.PathLike], suffixes: tuple[str, ...]) -> list[str]:
    """Image paths from paths, a folder (files with ``suffixes``; slice masks ``*_mask.*`` left out) or a list file."""
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if p.is_dir():
            paths = sorted(str(q) for q in p.iterdir() if q.name.lower().endswith(suffixes)
                           and not q.name.startswith(".") and not is_slice_mask(q))
            if not paths:
                raise DataError(f"{p}: folder holds no images ({', '.join(suffixes)})")
        elif p.suffix.lower() in (".txt", ".csv", ".lst"):
            if not p.is_file():
                raise DataError(f"{p}: image list not found")
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            paths = [str(p.parent / ln) if not os.path.isabs(ln) else ln for ln in lines]  # relative to the list
        else:
            paths = [str(p)]
    else:
        paths = [str(q) if isinstance(q, (str, os.PathLike)) else [str(r) for r in q] for q in images]
    if not paths:
        raise DataError("the inference datalist is empty")
    absolute = lambda q: str(Path(q).resolve()) if Path(q).exists() else q  # noqa: E731
    return [absolute(q) if isinstance(q, str) else [absolute(r) for r in q] for q in paths]


def image_datalist(images: str | os.PathLike | Iterable[str | os.PathLike], ndim: int = 3,
                   slices: bool = False, skip_bad: bool = False) -> list[dict]:
    """Validated inference datalist from image paths, a folder of images, or a text file of paths.

    Returns ``[{"image": abs_path, "case_id": ...}]``. Duplicated case IDs are refused because their
    outputs would overwrite each other. An entry may itself be a list of files: one volume per modality
    (``{"image": [flair, t1c]}``, checked to share one grid). With ``slices=True`` 2D slice images
    (TIFF/PNG/JPEG) are accepted too, each as a stack of one slice (``{"image": [path]}``); a list may not
    mix slices and volumes. With ``skip_bad=True`` (batch inference) an unusable file is logged and left
    out instead of stopping the run; the skipped files and their faults are listed in the log, and an
    error is raised only when nothing usable is left.
    """
    if skip_bad:
        items, bad = [], []
        for entry in _gather_paths(images, IMAGE_SUFFIXES + (SLICE_SUFFIXES if slices else ())):
            try:
                items.extend(image_datalist([entry], ndim, slices))
            except DataError as err:
                bad.append(str(err))
                logger.warning("skipped: %s", err)
        if bad:
            logger.warning("skipped %d unusable input(s) of %d:\n  %s", len(bad), len(bad) + len(items),
                           "\n  ".join(bad))
        if not items:
            raise DataError(f"no usable input among {len(bad)}: " + "; ".join(bad[:3]))
        return _unique_case_ids(items)
    suffixes = IMAGE_SUFFIXES + (SLICE_SUFFIXES if slices else ())
    paths = _gather_paths(images, suffixes)
    kinds = {is_slice_file(_first(q)) for q in paths}
    if len(kinds) > 1:
        raise DataError("the inference datalist mixes 2D slice images and 3D volumes; run them separately")
    items = []
    for entry in paths:
        full = _first(entry)
        if isinstance(entry, list) and len(entry) == 0:
            raise DataError("the inference datalist holds an empty list of modality files")
        if slices and is_slice_file(full):
            if isinstance(entry, list) and len(entry) > 1:
                raise DataError(f"{full}: give slice images one by one, not as a list")
            read_slice(full)
            item = {"image": [full]}
        elif isinstance(entry, list):
            validate_datalist([{"image": entry}], ndim)
            item = {"image": entry}
        else:
            image_info(full, ndim)
            item = {"image": full}
        items.append({**item, "case_id": case_id(full)})
    return _unique_case_ids(items)


def _unique_case_ids(items: list[dict]) -> list[dict]:
    seen: dict[str, str] = {}
    for item in items:
        cid, full = item["case_id"], _first(item["image"])
        if cid in seen:
            raise DataError(f"{full}: case ID '{cid}' is also used by {seen[cid]}; outputs would collide")
        seen[cid] = full
    return items


# --------------------------------------------------------------------------------------------- LIDC
def lidc_datalist(root: str | os.PathLike, validate: bool = True) -> list[dict]:
    """Datalist of the LIDC-IDRI nodule crops (``../shared/data/lidc_nodules`` layout).

    Reads ``index.csv`` (patient, nodule, image, mask, ...) and returns
    ``[{"image", "label", "case_id", "patient"}]`` where ``patient`` is ``LIDC-IDRI-PPPP``.
    """
    root = Path(root)
    index = root / "index.csv"
    if not index.is_file():
        raise DataError(f"{index}: LIDC index not found (expected the lidc_nodules layout)")
    items = []
    with open(index, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"patient", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{index}: missing columns {sorted(missing)}")
        for i, row in enumerate(reader):
            image = _inside(root, row["image"], index, f"row {i + 2} image")
            label = _inside(root, row["mask"], index, f"row {i + 2} mask")
            items.append({"image": image, "label": label, "case_id": case_id(image).removesuffix("_image"),
                          "patient": row["patient"]})
    if not items:
        raise DataError(f"{index}: no cases listed")
    return validate_datalist(items) if validate else items


def lidc_split(root: str | os.PathLike, split: str = "train", val_fraction: float = 0.1, test_fraction: float = 0.2,
               seed: int = 0, max_cases: int | None = None) -> list[dict]:
    """Three-way, fixed-seed, patient-level split of the LIDC crops.

    ``test_fraction`` of the patients are held out first (``split="test"``: reported figures only); of the
    rest, ``val_fraction`` of all patients validate (checkpoint choice, early stopping) and the others
    train. ``split="all"`` returns every case.
    """
    items = lidc_datalist(root)
    if split != "all":
        dev, test = split_train_val(items, test_fraction, seed)
        if split == "test":
            items = test
        else:
            train, val = split_train_val(dev, val_fraction / max(1e-9, 1.0 - test_fraction), seed + 1)
            if split not in ("train", "val"):
                raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
            items = train if split == "train" else val
    return items[: int(max_cases)] if max_cases is not None else items


# ------------------------------------------------------------------------------------ brain MRI slices
# Slice folders (the LGG layout): <root>/<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif (0/255).
_SLICE_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?$")


def is_slice_file(path: str | os.PathLike) -> bool:
    """True for 2D slice images (TIFF, PNG, JPEG)."""
    return str(path).lower().endswith(SLICE_SUFFIXES)


def _slice_parts(path: str | os.PathLike) -> tuple[str, int, bool] | None:
    """``(stem, n, is_mask)`` of ``<stem>_<n>[_mask].<ext>``, or None when the name does not follow it."""
    name = Path(path).name
    for suffix in SLICE_SUFFIXES:
        if name.lower().endswith(suffix):
            m = _SLICE_RE.match(name[: -len(suffix)])
            return (m["stem"], int(m["n"]), bool(m["mask"])) if m else None
    return None


def is_slice_mask(path: str | os.PathLike) -> bool:
    """True for a slice mask file (``<patient>_<n>_mask.<ext>``)."""
    parts = _slice_parts(path)
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
    from PIL import Image, UnidentifiedImageError

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
        parts = _slice_parts(f)
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


def slice_folder(folder: str | os.PathLike, validate: bool = True) -> list[dict]:
    """The slices of one patient folder, ordered by slice number: ``[{"image", "label", "n"}]``.

    Every image needs its mask and every mask its image; both are read in full (when ``validate``) and
    must have the same height and width, and all slices of the patient one size.
    """
    folder = Path(folder)
    pairs, problems = pair_slices(folder)
    for f, fault in problems:
        raise DataError(f"{f}: {fault}")
    for key in sorted(pairs):
        if "mask" not in pairs[key]:
            raise DataError(f"{pairs[key]['image']}: image without its mask ({key[0]}_{key[1]}_mask.*)")
        if "image" not in pairs[key]:
            raise DataError(f"{pairs[key]['mask']}: mask without its image ({key[0]}_{key[1]}.*)")
    if not pairs:
        raise DataError(f"{folder}: no slice images ({', '.join(SLICE_SUFFIXES)})")
    out, sizes = [], set()
    for key in sorted(pairs):
        image, label = pairs[key]["image"], pairs[key]["mask"]
        if validate:
            a, b = read_slice(image), read_slice(label, mask=True)
            if a.shape[:2] != b.shape:
                raise DataError(f"{label}: mask size {b.shape[1]}x{b.shape[0]} differs from image {image.name} "
                                f"size {a.shape[1]}x{a.shape[0]}")
            sizes.add(b.shape)
        out.append({"image": str(image.resolve()), "label": str(label.resolve()), "n": key[1]})
    if len(sizes) > 1:
        raise DataError(f"{folder}: slices of one patient differ in size {sorted(sizes)}")
    return out


def lgg_datalist(root: str | os.PathLike, validate: bool = True) -> list[dict]:
    """Per-patient datalist of a folder of patient slice folders (the LGG ``kaggle_3m`` layout).

    Returns ``[{"image": [slice paths], "label": [mask paths], "case_id": folder, "patient"}]``, slices
    ordered by number: one item is a patient's stack of slices, so every split is a patient-level split.
    Files at the top level (``data.csv``, READMEs) are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    items = []
    for folder in sorted(q for q in root.iterdir() if q.is_dir() and not q.name.startswith(".")):
        slices = slice_folder(folder, validate)
        items.append({"image": [d["image"] for d in slices], "label": [d["label"] for d in slices],
                      "case_id": folder.name, "patient": patient_id(folder.name)})
    if not items:
        raise DataError(f"{root}: no patient folders of slices (expected <root>/<patient>/<patient>_<n>.tif)")
    return items


def brain_test_images(dataset_dir: str | os.PathLike) -> list:
    """Default inference inputs of a brain dataset: dataset.json's ``test`` images (a path or a list of
    modality paths each), or every slice image (not the masks) of a slice-folder dataset."""
    root = Path(dataset_dir)
    if (root / "dataset.json").is_file():
        return [d["image"] for d in read_dataset_json(root)["test"]]
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    files = [f for folder in sorted(q for q in root.iterdir() if q.is_dir() and not q.name.startswith("."))
             for f in sorted(folder.iterdir(), key=lambda f: _slice_parts(f) or (f.name, 0, False))
             if is_slice_file(f) and not is_slice_mask(f) and not f.name.startswith(".")]
    if not files:
        raise DataError(f"{root}: no slice images found in its patient folders")
    return [str(f) for f in files]


def brain_datalist(dataset_dir: str | os.PathLike, split: str = "train", split_mode: str = "random",
                   val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0, num_folds: int = 5,
                   fold: int = 0, max_cases: int | None = None, validate: bool = True) -> list[dict]:
    """Per-patient datalist of a brain MRI dataset: slice folders or 3D volumes, validated.

    ``dataset_dir`` is either a folder of patient slice folders (LGG layout, see :func:`lgg_datalist`) or
    a folder with an MSD ``dataset.json`` whose ``image`` entries are a volume or a list of volumes (one per
    modality, e.g. ``["imagesTr/x_flair.nii.gz", "imagesTr/x_t1c.nii.gz"]``) and whose labels are
    tumour label maps (whole tumour = label > 0). Every item is one patient (a stack of slices or a
    volume), so all splits are by patient.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        split_mode, val_fraction, num_folds, fold, seed: as in :func:`msd_datalist`.
        test_fraction: hold out this fraction of patients first (``split="test"``), never used for training
            or for choosing a checkpoint; ``val_fraction`` is then a fraction of all patients. With
            ``test_fraction=0`` and a dataset.json, ``"test"`` is its ``test`` list.
        max_cases: keep only the first N patients (quick runs).
    """
    root = Path(dataset_dir)
    json_path = root / "dataset.json"
    provided: list[dict] = []
    if json_path.is_file():
        meta = read_dataset_json(root)
        items, provided = meta["training"], meta["validation"]
        if split == "test" and test_fraction <= 0:
            items = meta["test"]
            items = items[: int(max_cases)] if max_cases is not None else items
            return validate_datalist(items) if validate else items
        if validate:
            validate_datalist(items + provided, labels=declared_labels(meta, root))
    else:
        items = lgg_datalist(root, validate)
    if test_fraction > 0 and split != "all":
        items, test = split_train_val(items, test_fraction, seed)
        if split == "test":
            return test[: int(max_cases)] if max_cases is not None else test
        val_fraction = val_fraction / max(1e-9, 1.0 - test_fraction)
        seed += 1
    items = _select(items, provided, split, split_mode, val_fraction, seed, num_folds, fold, str(root))
    return items[: int(max_cases)] if max_cases is not None else items
