"""Datasets as MONAI datalists: MSD ``dataset.json`` folders, image lists, LIDC-IDRI nodule crops, LGG slice
folders and brain MRI volumes; validated on the way in (:mod:`monai_pipeline.data.validate`).

A datalist is a list of dicts as MONAI's ``Dataset`` expects::

    [{"image": "/abs/imagesTr/lung_001.nii.gz", "label": "/abs/labelsTr/lung_001.nii.gz",
      "case_id": "lung_001", "patient": "lung_001"}, ...]
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from monai_pipeline.data.splits import kfold_split, select, split_train_val
from monai_pipeline.data.validate import check_unique_case_ids, image_info, validate_datalist
from monai_pipeline.errors import DataError
from monai_pipeline.io.dicom import is_dicom_path
from monai_pipeline.io.naming import IMAGE_SUFFIXES, SLICE_SUFFIXES, case_id, first, is_slice_file, patient_id
from monai_pipeline.io.slices import is_slice_mask, pair_slices, read_slice, slice_parts

__all__ = ["read_dataset_json", "declared_labels", "msd_datalist", "msd_test_datalist", "gather_paths", "stack_slices",
           "image_datalist", "lidc_datalist", "lidc_images", "lidc_split", "slice_folder", "lgg_datalist", "brain_test_images",
           "brain_datalist", "kfold_split", "split_train_val"]

logger = logging.getLogger(__name__)


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
            head = first(image)
            if head in seen:
                raise DataError(f"{json_path}: {where}.image {entry['image']} is listed twice")
            seen.add(head)
            items.append({"image": image, "label": label, "case_id": case_id(head), "patient": patient_id(head)})
        out[section] = items
    overlap = {first(d["image"]) for d in out["training"]} & {first(d["image"]) for d in out["validation"]}
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
        out["test"].append({"image": image, "case_id": case_id(first(image))})
    return out


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
        items = select(meta["training"], meta["validation"], split, split_mode, val_fraction, seed, num_folds,
                        fold, str(Path(dataset_dir) / "dataset.json"))
    if max_cases is not None:
        items = items[: int(max_cases)]
    return validate_datalist(items, labels=declared_labels(meta, dataset_dir)) if validate else list(items)


def msd_test_datalist(dataset_dir: str | os.PathLike) -> list[str]:
    """Image paths of an MSD dataset's ``test`` list (the inference bundle's default ``datalist``)."""
    return [d["image"] for d in msd_datalist(dataset_dir, split="test")]


def gather_paths(images: str | os.PathLike | Iterable[str | os.PathLike], suffixes: tuple[str, ...]) -> list[str]:
    """Image paths from paths, a folder (files with ``suffixes``; slice masks ``*_mask.*`` left out; a folder of
    DICOM files is one DICOM series path) or a list file."""
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if p.is_dir():
            paths = sorted(str(q) for q in p.iterdir() if q.name.lower().endswith(suffixes)
                           and not q.name.startswith(".") and not is_slice_mask(q))
            if not paths and is_dicom_path(p):
                paths = [str(p)]  # a DICOM folder is one volume (its series is chosen when it is read)
            if not paths:
                raise DataError(f"{p}: folder holds no images ({', '.join(suffixes)}) and no DICOM files")
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


def stack_slices(entries: Iterable) -> list:
    """Group the single 2D slice files of ``entries`` into one stack per patient, for models that look at a
    slice's neighbours (the brain bundle's ``context_slices``).

    Slices of one patient share a folder and the ``<patient>`` of ``<patient>_<n>.<ext>``; a stack lists them in
    slice order ``n`` and takes the place of the patient's first slice among ``entries``. Other entries (volumes,
    lists of modality files, slice files whose names carry no slice number) stay as they are.
    """
    out: list = []
    stacks: dict[tuple[str, str], list] = {}
    for entry in entries:
        parts = slice_parts(entry) if not isinstance(entry, list) and is_slice_file(entry) else None
        if parts is None or parts[2]:
            out.append(entry)
            continue
        key = (str(Path(entry).parent), parts[0])
        if key not in stacks:
            stacks[key] = []
            out.append(key)
        stacks[key].append(entry)
    return [sorted(stacks[e], key=lambda f: slice_parts(f)[1]) if isinstance(e, tuple) else e for e in out]


def image_datalist(images: str | os.PathLike | Iterable[str | os.PathLike], ndim: int = 3,
                   slices: bool = False, skip_bad: bool = False, thorough: bool = True,
                   stacks: bool = False) -> list[dict]:
    """Validated inference datalist from image paths, a folder of images, or a text file of paths.

    Returns ``[{"image": abs_path, "case_id": ...}]``. Duplicated case IDs are refused because their
    outputs would overwrite each other. An entry may itself be a list of files: one volume per modality
    (``{"image": [flair, t1c]}``, checked to share one grid). With ``slices=True`` 2D slice images
    (TIFF/PNG/JPEG) are accepted too, each as a stack of one slice (``{"image": [path]}``); a list may not
    mix slices and volumes. With ``skip_bad=True`` (batch inference) an unusable file is logged and left
    out instead of stopping the run; the skipped files and their faults are listed in the log, and an
    error is raised only when nothing usable is left. ``thorough``: as for
    :func:`~monai_pipeline.data.validate.image_info` (False on the inference path). ``stacks``: a list of slice
    images is one patient's stack (see :func:`stack_slices`), its slices of one size, instead of an error.
    """
    if skip_bad:
        items, bad = [], []
        for entry in gather_paths(images, IMAGE_SUFFIXES + (SLICE_SUFFIXES if slices else ())):
            try:
                items.extend(image_datalist([entry], ndim, slices, thorough=thorough, stacks=stacks))
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
    paths = gather_paths(images, suffixes)
    kinds = {is_slice_file(first(q)) for q in paths}
    if len(kinds) > 1:
        raise DataError("the inference datalist mixes 2D slice images and 3D volumes; run them separately")
    items = []
    for entry in paths:
        full = first(entry)
        if isinstance(entry, list) and len(entry) == 0:
            raise DataError("the inference datalist holds an empty list of modality files")
        if slices and is_slice_file(full):
            if isinstance(entry, list) and len(entry) > 1 and not stacks:
                raise DataError(f"{full}: give slice images one by one, not as a list")
            group = [str(f) for f in entry] if isinstance(entry, list) else [full]
            sizes = {}
            for f in group:
                if not is_slice_file(f):
                    raise DataError(f"{f}: a stack of slice images holds another kind of file")
                sizes.setdefault(read_slice(f).shape[:2], f)
            if len(sizes) > 1:
                (a, fa), (b, fb) = list(sizes.items())[:2]
                raise DataError(f"{fb}: its size {b[1]} x {b[0]} differs from {fa} ({a[1]} x {a[0]}) of the same "
                                "patient; a model that reads neighbouring slices needs a patient's slices at one size")
            item = {"image": group}
        elif isinstance(entry, list):
            validate_datalist([{"image": entry}], ndim, thorough=thorough)
            item = {"image": entry}
        else:
            image_info(full, ndim, thorough)
            item = {"image": full}
        items.append({**item, "case_id": case_id(full)})
    return _unique_case_ids(items)


def _unique_case_ids(items: list[dict]) -> list[dict]:
    check_unique_case_ids(first(item["image"]) for item in items)
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


def lidc_images(root: str | os.PathLike, split: str = "test", val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0) -> list[str]:
    """The crop image paths of one :func:`lidc_split` split (default: the test patients, whom the shipped nodule
    model never trained on), as an inference datalist."""
    return [item["image"] for item in lidc_split(root, split, val_fraction, test_fraction, seed)]


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
             for f in sorted(folder.iterdir(), key=lambda f: slice_parts(f) or (f.name, 0, False))
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

    ``split_mode="cv"``: patient-level cross-validation with a test set per fold: ``"test"`` is fold ``fold`` of a
    fixed-seed ``num_folds``-fold split, and the other folds' patients are split again (seed + 1) into
    ``"train"`` and ``"val"`` (``val_fraction`` of them: checkpoint choice and early stopping), so every patient is
    scored once, by the model of the fold that never saw it, and nothing is chosen on it.
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
    if split_mode == "cv" and split != "all":  # cross-validation: fold `fold` is the test set
        rest, test = kfold_split(items, num_folds, fold, seed)
        if split == "test":
            return test[: int(max_cases)] if max_cases is not None else test
        train, val = split_train_val(rest, val_fraction, seed + 1)
        items = train if split == "train" else val
        return items[: int(max_cases)] if max_cases is not None else items
    if test_fraction > 0 and split != "all":
        items, test = split_train_val(items, test_fraction, seed)
        if split == "test":
            return test[: int(max_cases)] if max_cases is not None else test
        val_fraction = val_fraction / max(1e-9, 1.0 - test_fraction)
        seed += 1
    items = select(items, provided, split, split_mode, val_fraction, seed, num_folds, fold, str(root))
    return items[: int(max_cases)] if max_cases is not None else items
