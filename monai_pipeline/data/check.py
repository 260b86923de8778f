"""Dataset integrity check: every problem of a dataset, not only the first (``monai-pipeline check``).

Runs the validation of :mod:`monai_pipeline.data.validate` file by file, collecting what it refuses instead of
stopping at the first fault, and adds what a researcher wants to know before training: label values
outside the declared labels, float label maps, masks that are not exactly binary, non-finite voxels,
spacing outliers and duplicated images (by a hash of the voxel data) across cases and splits. Findings are
``error`` (the pipeline refuses the file) or ``warning`` (usable, but look at it).

Layouts recognised: an MSD ``dataset.json`` folder, a folder of patient slice folders (LGG), the LIDC crops
(``index.csv``), or any folder of volumes (every image file below it is checked on its own; a file whose
name says label/seg/mask/OT is checked as a label map).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from monai_pipeline.data.datasets import lidc_datalist, read_dataset_json
from monai_pipeline.data.validate import check_pair, image_info, read_voxels
from monai_pipeline.errors import DataError
from monai_pipeline.io.dicom import SERIES_SEPARATOR, is_dicom_path, scan_folder
from monai_pipeline.io.naming import IMAGE_SUFFIXES, is_slice_file
from monai_pipeline.io.slices import pair_slices, read_slice

__all__ = ["Finding", "check_dataset", "format_table"]

_LABEL_NAME = re.compile(r"(label|seg|mask|^ot|otmulti)", re.IGNORECASE)
_SPACING_OUTLIER = 3.0  # a spacing this many times off the dataset median is reported


@dataclass
class Finding:
    """One problem: ``severity`` ``"error"`` or ``"warning"``, the file (or folder) and what is wrong."""

    severity: str
    path: str
    problem: str


class _Checker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.findings: list[Finding] = []
        self.hashes: dict[str, list[tuple[str, str]]] = {}
        self.spacings: list[tuple[str, tuple[float, ...]]] = []

    def add(self, severity: str, path, problem: str) -> None:
        self.findings.append(Finding(severity, str(path), problem))

    def error(self, err: Exception, path) -> None:
        msg = str(err)
        prefix = f"{path}: "
        self.add("error", path, msg[len(prefix):] if msg.startswith(prefix) else msg)

    # ------------------------------------------------------------------------------------ volumes
    def volume(self, path: Path, role: str, split: str, labels: set[int] | None = None) -> np.ndarray | None:
        """Check one volume; return its voxels (None when unreadable)."""
        try:
            info = image_info(path, ndim=3)
        except DataError as err:
            self.error(err, path)
            return None
        self.spacings.append((str(path), tuple(float(s) for s in info.spacing[:3])))
        arr = _voxels(path)
        if arr is None:
            self.add("error", path, "voxel data could not be read")
            return None
        self.hashes.setdefault(_digest(arr), []).append((split, str(path)))
        if arr.dtype.kind == "f":
            bad = int((~np.isfinite(arr)).sum())
            if bad:
                self.add("error", path, f"{bad} voxels are NaN or infinite")
                return arr
        if role == "label":
            self._label_values(path, arr, labels)
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            if lo == hi:
                self.add("warning", path, f"constant image (every voxel {lo:g})")
        return arr

    def _label_values(self, path: Path, arr: np.ndarray, labels: set[int] | None) -> None:
        values = np.unique(arr)
        if arr.dtype.kind == "f":
            integral = np.all(values == np.round(values))
            if integral:
                self.add("warning", path, f"label map stored as {arr.dtype} (values {_show(values)} are whole numbers;"
                                          " read as integers)")
            elif values.size <= 3 and np.all((values < 0.01) | (np.abs(values - 1) < 1e-3)):
                self.add("warning", path, f"mask values {_show(values)}: not exactly 0/1; threshold at 0.5")
            else:
                self.add("error", path, f"label map holds fractional values {_show(values)}")
                return
        if labels is not None:
            extra = sorted(set(np.round(values).astype(int).tolist()) - labels)
            if extra:
                self.add("error", path, f"label values {extra} are not among the declared labels {sorted(labels)}")

    # ------------------------------------------------------------------------------------- slices
    def slice_pair(self, image: Path | None, mask: Path | None, split: str) -> None:
        img = msk = None
        if image is not None:
            try:
                img = read_slice(image)
                self.hashes.setdefault(_digest(img), []).append((split, str(image)))
            except DataError as err:
                self.error(err, image)
        if mask is not None:
            try:
                msk = read_slice(mask, mask=True)
            except DataError as err:
                self.error(err, mask)
        if image is None:
            self.add("error", mask, "mask without its image")
        elif mask is None:
            self.add("error", image, "image without its mask")
        elif img is not None and msk is not None and img.shape[:2] != msk.shape:
            self.add("error", mask, f"mask size {msk.shape[1]}x{msk.shape[0]} differs from image "
                                    f"{Path(image).name} size {img.shape[1]}x{img.shape[0]}")

    # -------------------------------------------------------------------------------- dataset-wide
    def finish(self) -> list[Finding]:
        for _, group in self.hashes.items():
            if len(group) > 1:
                splits = sorted({s for s, _ in group})
                where = " and ".join(splits) if len(splits) > 1 else splits[0]
                sev = "error" if len(splits) > 1 else "warning"
                first = group[0][1]
                for _, path in group[1:]:
                    self.add(sev, path, f"same voxel data as {first} ({where})")
        if len(self.spacings) >= 3:
            med = np.median(np.asarray([s for _, s in self.spacings]), axis=0)
            for path, sp in self.spacings:
                ratio = np.asarray(sp) / np.maximum(med, 1e-9)
                if np.any(ratio > _SPACING_OUTLIER) or np.any(ratio < 1 / _SPACING_OUTLIER):
                    self.add("warning", path, f"spacing {tuple(round(s, 3) for s in sp)} mm is far from the dataset "
                                              f"median {tuple(round(float(m), 3) for m in med)}")
        return self.findings


def _voxels(path: Path) -> np.ndarray | None:
    try:
        return read_voxels(path)
    except Exception:  # noqa: BLE001 - any reader failure is reported as a finding
        return None


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha1(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _show(values: np.ndarray, most: int = 6) -> str:
    shown = ", ".join(f"{v:.8g}" for v in values[:most])
    return "{" + shown + (", ..." if values.size > most else "") + "}"


def check_dataset(root: str | os.PathLike) -> list[Finding]:
    """Every problem found in the dataset at ``root`` (see the module docstring for the layouts)."""
    root = Path(root)
    chk = _Checker(root)
    if not root.exists():
        chk.add("error", root, "not found")
        return chk.findings
    if root.is_file():
        role = "label" if _LABEL_NAME.search(root.name) else "image"
        if is_slice_file(root):
            chk.slice_pair(root if role == "image" else None, root if role == "label" else None, "file")
            return [f for f in chk.findings if "without its" not in f.problem]
        chk.volume(root, role, "file")
        return chk.finish()
    if (root / "dataset.json").is_file():
        _check_msd(chk, root)
    elif not any(root.rglob("*.nii*")) and is_dicom_path(root):
        _check_dicom(chk, root)
    elif (root / "index.csv").is_file():
        _check_lidc(chk, root)
    elif any(is_slice_file(f) for d in root.iterdir() if d.is_dir() for f in d.iterdir()):
        _check_slices(chk, root)
    else:
        _check_volumes(chk, root)
    return chk.finish()


def _check_msd(chk: _Checker, root: Path) -> None:
    try:
        meta = read_dataset_json(root)
    except DataError as err:
        chk.error(err, root / "dataset.json")
        return
    labels = {int(k) for k in meta["labels"]} if all(str(k).lstrip("-").isdigit() for k in meta["labels"]) else None
    for split in ("training", "validation"):
        for item in meta[split]:
            images = item["image"] if isinstance(item["image"], list) else [item["image"]]
            readable = [chk.volume(Path(image), "image", split) is not None for image in images]
            if chk.volume(Path(item["label"]), "label", split, labels) is None:
                continue
            for image, ok in zip(images, readable):
                if ok:
                    try:
                        check_pair(image, item["label"])
                    except DataError as err:
                        chk.error(err, item["label"])
    for item in meta["test"]:
        for image in item["image"] if isinstance(item["image"], list) else [item["image"]]:
            chk.volume(Path(image), "image", "test")
    listed = json.loads((root / "dataset.json").read_text(encoding="utf-8-sig"))
    for key, section in (("numTraining", "training"), ("numTest", "test")):
        if key in listed and isinstance(listed[key], int) and listed[key] != len(listed.get(section, [])):
            chk.add("warning", root / "dataset.json", f"{key} says {listed[key]} but '{section}' lists "
                                                      f"{len(listed.get(section, []))}")


def _check_lidc(chk: _Checker, root: Path) -> None:
    try:
        items = lidc_datalist(root, validate=False)
    except DataError as err:
        chk.error(err, root / "index.csv")
        return
    for item in items:
        chk.volume(Path(item["image"]), "image", "all")
        chk.volume(Path(item["label"]), "label", "all", {0, 1})


def _check_slices(chk: _Checker, root: Path) -> None:
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        pairs, problems = pair_slices(folder)
        for f, fault in problems:
            chk.add("error", f, fault)
        if not pairs:
            chk.add("warning", folder, "no slice images in this folder")
        for key in sorted(pairs):
            chk.slice_pair(pairs[key].get("image"), pairs[key].get("mask"), folder.name)


def _check_dicom(chk: _Checker, root: Path) -> None:
    """A DICOM folder or tree: every image series checked as a volume (``FOLDER#SERIES_UID``)."""
    try:
        found = scan_folder(root)
    except DataError as err:
        chk.error(err, root)
        return
    if not found.series:
        chk.add("error", root, "no DICOM image series")
    for uid in sorted(found.series):
        chk.volume(Path(f"{root}{SERIES_SEPARATOR}{uid}"), "image", "dicom")


def _check_volumes(chk: _Checker, root: Path) -> None:
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)
                   and not f.name.startswith("."))
    if not files:
        chk.add("error", root, f"no images found ({', '.join(IMAGE_SUFFIXES)})")
    for f in files:
        chk.volume(f, "label" if _LABEL_NAME.search(f.name) else "image", f.parent.name)


def format_table(findings: list[Finding], root: str | os.PathLike = "") -> str:
    """The findings as a fixed-width table (paths relative to ``root`` where possible)."""
    if not findings:
        return "no problems found"
    rows = []
    for f in sorted(findings, key=lambda f: (f.severity != "error", f.path)):
        path = f.path
        try:
            path = str(Path(f.path).relative_to(Path(root))) if root else path
        except ValueError:
            pass
        rows.append((f.severity.upper(), path, f.problem))
    width = [max(len(r[i]) for r in rows + [("SEVERITY", "FILE", "PROBLEM")]) for i in range(2)]
    lines = [f"{'SEVERITY':{width[0]}}  {'FILE':{width[1]}}  PROBLEM"]
    lines += [f"{s:{width[0]}}  {p:{width[1]}}  {m}" for s, p, m in rows]
    return "\n".join(lines)


def findings_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
