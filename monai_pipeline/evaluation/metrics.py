"""Overlap and surface metrics of one case, their summaries, and the per-slice / per-patient rules for 2D."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

__all__ = ["dice", "iou", "case_metrics", "summarise", "slice_scores", "patient_dice", "METRIC_RULES",
           "CASE_METRIC_KEYS"]


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


METRIC_RULES = (
    "Masks are binary (> 0). Surface metrics are in mm on each case's own grid (voxel spacing respected). "
    "Both masks empty: dice = iou = precision = recall = surface_dice = boundary_f1 = 1, hd95 = asd = 0 "
    "(a correct 'no tumour'). One mask empty: dice = iou = surface_dice = boundary_f1 = 0, hd95 and asd "
    "undefined (null, left out of means); precision is undefined (null) when nothing is predicted, recall when "
    "the label is empty. surface_dice is MONAI's normalised surface Dice and boundary_f1 the F1 of boundary "
    "voxels lying within the tolerance of the other boundary, both at tolerance_mm."
)


CASE_METRIC_KEYS = ("dice", "iou", "precision", "recall", "specificity", "pixel_accuracy", "hd95_mm", "asd_mm",
                    "surface_dice", "boundary_f1", "volume_pred_ml", "volume_label_ml", "volume_diff_ml")


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def case_metrics(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> dict:
    """Overlap, surface and volume metrics of one binary prediction against its label.

    Args:
        pred, label: arrays of one shape (any value > 0 is foreground), voxel order matching ``spacing``.
        spacing: voxel size in mm per axis.
        tolerance_mm: tolerance of ``surface_dice`` and ``boundary_f1``.

    Returns:
        ``dice, iou, precision, recall, specificity, pixel_accuracy, hd95_mm, asd_mm, surface_dice,
        boundary_f1, volume_pred_ml, volume_label_ml, volume_diff_ml`` (pred - label) and the voxel counts;
        empty masks follow :data:`METRIC_RULES`. HD95, ASD and surface Dice are MONAI's.
    """
    p, g = np.asarray(pred) > 0, np.asarray(label) > 0
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from label shape {g.shape}")
    spacing = [float(x) for x in spacing][: p.ndim]
    tp, fp = int((p & g).sum()), int((p & ~g).sum())
    fn, tn = int((~p & g).sum()), int((~p & ~g).sum())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict = {
        "dice": dice(p, g), "iou": iou(p, g),
        "precision": tp / (tp + fp) if tp + fp else (1.0 if not g.any() else None),
        "recall": tp / (tp + fn) if tp + fn else (1.0 if not p.any() else None),
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "pixel_accuracy": (tp + tn) / p.size,
        "volume_pred_ml": (tp + fp) * voxel_ml, "volume_label_ml": (tp + fn) * voxel_ml,
        "volume_diff_ml": (fp - fn) * voxel_ml,
        "pred_voxels": tp + fp, "label_voxels": tp + fn, "tolerance_mm": float(tolerance_mm),
    }
    if not p.any() and not g.any():
        out.update(hd95_mm=0.0, asd_mm=0.0, surface_dice=1.0, boundary_f1=1.0)
        return out
    if not p.any() or not g.any():
        out.update(hd95_mm=None, asd_mm=None, surface_dice=0.0, boundary_f1=0.0)
        return out

    def onehot(m: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(m.astype(np.float32))
        return torch.stack([1 - t, t])[None]

    yp, yg = onehot(p), onehot(g)
    out["hd95_mm"] = float(compute_hausdorff_distance(yp, yg, percentile=95, spacing=spacing)[0, 0])
    out["asd_mm"] = float(compute_average_surface_distance(yp, yg, symmetric=True, spacing=spacing)[0, 0])
    out["surface_dice"] = float(compute_surface_dice(yp, yg, [float(tolerance_mm)], spacing=spacing)[0, 0])
    sp, sg = _surface(p), _surface(g)
    dist_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    b_prec = float((dist_to_g[sp] <= tolerance_mm).mean())
    b_rec = float((dist_to_p[sg] <= tolerance_mm).mean())
    out["boundary_f1"] = 2 * b_prec * b_rec / (b_prec + b_rec) if b_prec + b_rec else 0.0
    return out


def summarise(rows: Sequence[dict], keys: Sequence[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean, median, std and a bootstrap 95 % CI of the mean (cases resampled, fixed seed) per metric.

    Undefined values (None / NaN) are left out of a metric's figures and counted in ``n_undefined``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for k in keys:
        vals = np.asarray([r[k] for r in rows if r.get(k) is not None and np.isfinite(r[k])], dtype=float)
        if vals.size == 0:
            out[k] = {"n": 0, "n_undefined": len(rows)}
            continue
        boot = vals[rng.integers(0, vals.size, size=(n_boot, vals.size))].mean(axis=1)
        out[k] = {"mean": float(vals.mean()), "median": float(np.median(vals)), "std": float(vals.std()),
                  "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                  "n": int(vals.size), "n_undefined": len(rows) - int(vals.size)}
    return out


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
