"""Evaluation stage: overlap metrics between written masks and reference labels.

Masks are compared on their files, in the source geometry, after checking that both files share one
voxel grid. (The bundles' evaluate config computes the same Dice with MONAI's ``MeanDice`` handler.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["dice", "iou", "read_mask", "score_pairs", "read_metric_details", "slice_scores", "patient_dice",
           "score_slice_folders"]


def dice(pred: np.ndarray, label: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two binary masks (any value > 0 is foreground); ``empty`` when both are empty."""
    p, g = np.asarray(pred) > 0, np.asarray(label) > 0
    denom = int(p.sum()) + int(g.sum())
    return empty if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def iou(pred: np.ndarray, label: np.ndarray, empty: float = 1.0) -> float:
    """Intersection over union of two binary masks (> 0 is foreground); ``empty`` when both are empty."""
    p, g = np.asarray(pred) > 0, np.asarray(label) > 0
    union = int(np.logical_or(p, g).sum())
    return empty if union == 0 else int(np.logical_and(p, g).sum()) / union


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a mask file once: ``(array in voxel order i, j, k, 4x4 RAS affine in mm)``.

    Raises :class:`~monai_pipeline.data.DataError` naming the file when it cannot be read.
    """
    import SimpleITK as sitk

    from monai_pipeline.data import DataError, itk_affine

    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise DataError(f"{path}: not a readable mask ({(str(err).strip().splitlines() or ['unknown error'])[-1]})") from None
    return sitk.GetArrayFromImage(img).transpose(), itk_affine(img)


def score_pairs(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], atol_mm: float = 1e-3) -> list[dict]:
    """Dice of each ``(prediction, label)`` file pair; a pair on different voxel grids is an error."""
    rows = []
    for pred_path, label_path in pairs:
        p, pa = read_mask(pred_path)
        g, ga = read_mask(label_path)
        if p.shape != g.shape or not np.allclose(pa, ga, atol=atol_mm):
            from monai_pipeline.data import DataError

            raise DataError(f"{pred_path}: geometry (shape {p.shape} / affine) differs from its label {label_path}")
        rows.append({"prediction": str(pred_path), "label": str(label_path), "case_id": Path(label_path).name,
                     "dice": dice(p, g), "label_voxels": int((g > 0).sum()), "pred_voxels": int((p > 0).sum())})
    return rows


def read_metric_details(path: str | os.PathLike) -> list[dict]:
    """Per-case rows ``{"case", "filename", "dice"}`` of a MONAI ``MetricsSaver`` details CSV
    (``val_mean_dice_raw.csv``); ``filename`` is the case's (first) image file."""
    import csv

    with open(path, newline="") as fh:
        return [{"case": Path(r["filename"]).name, "filename": r["filename"], "dice": float(r["mean"])}
                for r in csv.DictReader(fh)]


# ------------------------------------------------------------------------------------- 2D slices
# Rules for empty masks (stated once, used everywhere):
# * a slice (or patient) whose prediction and label are both empty scores Dice = IoU = 1 (a correct
#   "no tumour"); such slices are flagged ``both_empty`` so summaries can leave them out;
# * a slice with tumour in only one of the two scores 0;
# * per-patient Dice is volumetric: TP, FP and FN are summed over all of the patient's slices first
#   (2 * sum TP / (sum |P| + sum |G|)), the measure of Buda et al. 2019, so a patient's empty slices add
#   nothing unless the model paints tumour in them (false positives lower it).
def slice_scores(pred_slices: Iterable[np.ndarray], label_slices: Iterable[np.ndarray]) -> list[dict]:
    """Per-slice Dice and IoU of paired 2D masks: ``[{"slice", "dice", "iou", "pred_pixels", "label_pixels",
    "intersection", "both_empty"}]``."""
    rows = []
    for k, (p, g) in enumerate(zip(pred_slices, label_slices)):
        p, g = np.asarray(p) > 0, np.asarray(g) > 0
        if p.shape != g.shape:
            raise ValueError(f"slice {k}: prediction shape {p.shape} differs from label shape {g.shape}")
        rows.append({"slice": k, "dice": dice(p, g), "iou": iou(p, g), "pred_pixels": int(p.sum()),
                     "label_pixels": int(g.sum()), "intersection": int(np.logical_and(p, g).sum()),
                     "both_empty": not p.any() and not g.any()})
    return rows


def patient_dice(rows: Sequence[dict]) -> float:
    """Volumetric Dice of one patient from its :func:`slice_scores` rows (1.0 when all are empty)."""
    denom = sum(r["pred_pixels"] + r["label_pixels"] for r in rows)
    return 1.0 if denom == 0 else 2.0 * sum(r["intersection"] for r in rows) / denom


def score_slice_folders(pred_dir: str | os.PathLike, label_root: str | os.PathLike,
                        pred_postfix: str = "mask") -> tuple[list[dict], list[dict]]:
    """Score predicted slice masks against the label masks of a slice dataset.

    Args:
        pred_dir: ``<slice>_<pred_postfix>.png`` files (as the brain bundle writes them), searched recursively.
        label_root: slice dataset (``<patient>/<patient>_<n>_mask.tif``, searched recursively). Only the
            slices that have a prediction are scored, but every predicted slice needs its label.

    Returns:
        ``(slice_rows, patient_rows)``: per slice ``{"patient", "slice_id", "dice", "iou", ...}`` (see
        :func:`slice_scores`) and per patient ``{"patient", "dice", "n_slices", "n_tumour_slices"}``.

    Raises:
        DataError: a prediction without its label, or of another size.
    """
    from monai_pipeline.data import DataError, _slice_parts, read_slice

    labels = {}
    for f in sorted(Path(label_root).rglob("*")):
        parts = _slice_parts(f)
        if parts and parts[2] and not f.name.startswith("."):
            labels[f"{parts[0]}_{parts[1]}"] = (parts[0], f)
    suffix = f"_{pred_postfix}.png"
    preds = {f.name[: -len(suffix)]: f for f in sorted(Path(pred_dir).rglob(f"*{suffix}"))}
    if not preds:
        raise DataError(f"{pred_dir}: no predicted slice masks (*{suffix})")
    slice_rows: list[dict] = []
    for sid, pred_file in preds.items():
        if sid not in labels:
            raise DataError(f"{pred_file}: no label mask for slice {sid} under {label_root}")
        patient, label_file = labels[sid]
        p, g = read_slice(pred_file, mask=True), read_slice(label_file, mask=True)
        if p.shape != g.shape:
            raise DataError(f"{pred_file}: size {p.shape} differs from its label {label_file} {g.shape}")
        row = slice_scores([p], [g])[0]
        row.update(patient=patient, slice_id=sid, prediction=str(pred_file), label=str(label_file))
        slice_rows.append(row)
    patient_rows = []
    for patient in sorted({r["patient"] for r in slice_rows}):
        rows = [r for r in slice_rows if r["patient"] == patient]
        patient_rows.append({"patient": patient, "dice": patient_dice(rows), "n_slices": len(rows),
                             "n_tumour_slices": sum(r["label_pixels"] > 0 for r in rows)})
    return slice_rows, patient_rows
