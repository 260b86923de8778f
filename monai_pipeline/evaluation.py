"""Evaluation stage: overlap metrics between written masks and reference labels.

Masks are compared on their files, in the source geometry, after checking that both files share one
voxel grid. (The bundles' evaluate config computes the same Dice with MONAI's ``MeanDice`` handler.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["dice", "read_mask", "score_pairs", "read_metric_details"]


def dice(pred: np.ndarray, label: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two binary masks (any value > 0 is foreground); ``empty`` when both are empty."""
    p, g = np.asarray(pred) > 0, np.asarray(label) > 0
    denom = int(p.sum()) + int(g.sum())
    return empty if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


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
    """Per-case rows ``{"case", "dice"}`` of a MONAI ``MetricsSaver`` details CSV (``val_mean_dice_raw.csv``)."""
    import csv

    with open(path, newline="") as fh:
        return [{"case": Path(r["filename"]).name, "dice": float(r["mean"])} for r in csv.DictReader(fh)]
