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
           "score_slice_folders", "case_metrics", "summarise", "METRIC_RULES", "CASE_METRIC_KEYS", "lesion_table",
           "match_lesions", "detection_summary", "presence_summary", "lung_mask", "tumour_burden", "pair_folders",
           "evaluate_case", "evaluate_cases", "evaluate_folders", "evaluate_predictions", "LUNG_LABELS"]


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
    from scipy import ndimage

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
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
    from scipy import ndimage

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


def score_pairs(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], tolerance_mm: float = 2.0,
                resample: bool = False) -> list[dict]:
    """All :func:`case_metrics` of each ``(prediction, label)`` file pair, in world units.

    A pair on different voxel grids is an error naming both files (unless ``resample``: the prediction is
    then resampled onto the label's grid, nearest neighbour).
    """
    from monai_pipeline.data import case_id

    rows = []
    for pred_path, label_path in pairs:
        g, ga = read_mask(label_path)
        p = _on_label_grid(str(pred_path), str(label_path), g.shape, ga, resample, "prediction")
        spacing = np.linalg.norm(ga[:3, :3], axis=0)
        rows.append({"prediction": str(pred_path), "label": str(label_path), "case_id": case_id(label_path),
                     **case_metrics(p, g, spacing, tolerance_mm)})
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


# ------------------------------------------------------------------------------------------ lesions
def lesion_table(mask: np.ndarray, affine: np.ndarray, prob: np.ndarray | None = None,
                 return_labels: bool = False) -> list[dict] | tuple[list[dict], np.ndarray]:
    """Connected components of a binary mask (full connectivity: 26 neighbours in 3D, 8 in 2D) as lesions.

    Args:
        mask: ``(I, J[, K])`` array, > 0 = lesion; K is the axial (slice) axis.
        affine: 4x4 voxel-to-world matrix in RAS mm (nibabel's convention; :func:`read_mask` gives it).
        prob: optional tumour probability map of the same shape, for each lesion's confidence.

    Returns:
        one row per lesion, largest first: ``id`` (1..n), ``voxels``, ``volume_ml``, ``centroid_vox`` and
        ``centroid_ras_mm``, ``bbox_vox`` (``[[i0, j0, k0], [i1, j1, k1]]`` inclusive) and ``bbox_ras_mm``
        (world extent of the box's voxel corners, min/max per RAS axis), ``longest_axial_diameter_mm`` (the
        largest in-plane distance between two of the lesion's voxel centres on one slice) and, with ``prob``,
        ``confidence_mean`` / ``confidence_max``. With ``return_labels``, also the component image, in which
        lesion ``row`` is ``labels == row["component"]``.
    """
    from scipy import ndimage
    from scipy.spatial.distance import pdist

    m = np.asarray(mask) > 0
    labels, n = ndimage.label(m, structure=np.ones((3,) * m.ndim, bool))
    if n == 0:
        return ([], labels) if return_labels else []
    aff = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)[: m.ndim]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == idx
        coords = np.argwhere(comp) + np.array([s.start for s in sl])
        centroid = coords.mean(axis=0)
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        corners = np.array(np.meshgrid(*[[a - 0.5, b + 0.5] for a, b in zip(lo, hi)], indexing="ij")).reshape(m.ndim, -1).T
        world = _to_world(aff, corners)
        diameter = 0.0
        axial = coords[:, 2] if m.ndim == 3 else np.zeros(len(coords), int)
        for k in np.unique(axial):
            pts = coords[axial == k][:, :2] * spacing[:2]
            if len(pts) > 1:
                if len(pts) > 400:  # the farthest pair lies on the convex hull
                    from scipy.spatial import ConvexHull

                    try:
                        pts = pts[ConvexHull(pts).vertices]
                    except Exception:  # noqa: BLE001 - collinear points: keep them all
                        pass
                diameter = max(diameter, float(pdist(pts).max()))
        row = {"id": idx, "component": idx, "voxels": int(len(coords)), "volume_ml": len(coords) * voxel_ml,
               "centroid_vox": [round(float(c), 3) for c in centroid],
               "centroid_ras_mm": [round(float(c), 3) for c in _to_world(aff, centroid[None])[0]],
               "bbox_vox": [lo.tolist(), hi.tolist()],
               "bbox_ras_mm": [np.round(world.min(axis=0), 3).tolist(), np.round(world.max(axis=0), 3).tolist()],
               "longest_axial_diameter_mm": round(diameter, 3)}
        if prob is not None:
            vals = np.asarray(prob)[tuple(coords.T)]
            row.update(confidence_mean=float(vals.mean()), confidence_max=float(vals.max()))
        rows.append(row)
    rows.sort(key=lambda r: -r["voxels"])
    for new_id, r in enumerate(rows, start=1):
        r["id"] = new_id
    return (rows, labels) if return_labels else rows


def _to_world(affine: np.ndarray, vox: np.ndarray) -> np.ndarray:
    v = np.zeros((len(vox), 3))
    v[:, : vox.shape[1]] = vox
    return v @ affine[:3, :3].T + affine[:3, 3]


def box_iou(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """IoU of two inclusive voxel boxes ``[[lo...], [hi...]]`` (2D or 3D)."""
    lo = np.maximum(np.asarray(a[0]), np.asarray(b[0]))
    hi = np.minimum(np.asarray(a[1]), np.asarray(b[1]))
    inter = float(np.prod(np.clip(hi - lo + 1, 0, None)))
    va = float(np.prod(np.asarray(a[1]) - np.asarray(a[0]) + 1))
    vb = float(np.prod(np.asarray(b[1]) - np.asarray(b[0]) + 1))
    return inter / (va + vb - inter) if va + vb - inter > 0 else 0.0


def match_lesions(pred: np.ndarray, label: np.ndarray, affine: np.ndarray, prob: np.ndarray | None = None) -> dict:
    """Lesions of one case and how they match: ``{"pred": [...], "label": [...]}``.

    Each predicted lesion (a row of :func:`lesion_table`, confidence = max probability, or 1.0 without
    ``prob``) gets ``hit`` (it overlaps a label lesion by at least one voxel), ``matched_label`` and
    ``best_box_iou`` (its best 3D box IoU with a label lesion). Each label lesion gets ``detected`` (some
    predicted lesion overlaps it).
    """
    p, g = np.asarray(pred) > 0, np.asarray(label) > 0
    prows, pl = lesion_table(p, affine, prob, return_labels=True)
    grows, gl = lesion_table(g, affine, return_labels=True)
    by_component = {r["component"]: r for r in grows}
    for r in grows:
        r["detected"] = False
    for r in prows:
        hits = [by_component[int(c)] for c in np.unique(gl[(pl == r["component"]) & g])]
        r["hit"] = bool(hits)
        r["matched_label"] = max(hits, key=lambda h: h["voxels"])["id"] if hits else None
        for h in hits:
            h["detected"] = True
        r["best_box_iou"] = max((box_iou(r["bbox_vox"], h["bbox_vox"]) for h in grows), default=0.0)
        r.setdefault("confidence_max", 1.0)
    return {"pred": prows, "label": grows}


FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def detection_summary(cases: Sequence[dict], iou_threshold: float = 0.5) -> dict:
    """Lesion-level detection figures over cases of :func:`match_lesions`.

    Returns ``sensitivity`` (label lesions overlapped by a prediction), ``precision`` (predicted lesions
    overlapping a label lesion), ``froc`` (sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per case,
    predicted lesions ranked by confidence), ``froc_mean`` (their mean, as in LUNA16) and ``map_50`` (average
    precision of 3D boxes at IoU >= ``iou_threshold``, each label box matched at most once, all-point
    interpolation as in VOC/COCO).
    """
    n_cases = len(cases)
    n_label = sum(len(c["label"]) for c in cases)
    preds = [(r["confidence_max"], r["hit"], ci, r) for ci, c in enumerate(cases) for r in c["pred"]]
    detected = sum(r["detected"] for c in cases for r in c["label"])
    out: dict = {"n_cases": n_cases, "n_label_lesions": n_label, "n_pred_lesions": len(preds),
                 "sensitivity": detected / n_label if n_label else None,
                 "precision": sum(h for _, h, _, _ in preds) / len(preds) if preds else None}
    # FROC: walk down the confidence ranking; a hit counts once per label lesion
    preds.sort(key=lambda t: -t[0])
    seen: set = set()
    tps, fps = [], []
    tp = fp = 0
    for _, hit, ci, r in preds:
        key = (ci, r["matched_label"])
        if hit and key not in seen:
            seen.add(key)
            tp += 1
        elif not hit:
            fp += 1
        tps.append(tp)
        fps.append(fp)
    froc = {}
    for rate in FROC_RATES:
        allowed = rate * n_cases
        best = max((t for t, f in zip(tps, fps) if f <= allowed), default=0)
        froc[str(rate)] = best / n_label if n_label else None
    out["froc"] = froc
    out["froc_mean"] = float(np.mean(list(froc.values()))) if n_label else None
    # mAP@0.5 over boxes (one class): greedy matching by confidence
    used: set = set()
    flags = []
    for conf, _, ci, r in preds:
        best, best_j = 0.0, None
        for j, gr in enumerate(cases[ci]["label"]):
            iou = box_iou(r["bbox_vox"], gr["bbox_vox"])
            if iou > best and (ci, j) not in used:
                best, best_j = iou, j
        ok = best >= iou_threshold
        if ok:
            used.add((ci, best_j))
        flags.append(ok)
    if n_label and flags:
        tp_cum = np.cumsum(flags)
        prec = tp_cum / np.arange(1, len(flags) + 1)
        rec = tp_cum / n_label
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[1.0], prec, [0.0]])
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        out["map_50"] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    else:
        out["map_50"] = None if not n_label else 0.0
    out["iou_threshold"] = iou_threshold
    return out


# ------------------------------------------------------------------------------ tumour present / absent
def presence_summary(scores: Sequence[float], present: Sequence[bool], threshold: float = 0.0,
                     threshold_source: str = "default") -> dict:
    """Tumour present/absent figures of cases (or slices) from a per-case score of the model's output.

    Args:
        scores: one score per case, higher = more likely tumour (the maximum tumour probability, or the
            predicted tumour volume in mL / pixel count when no probabilities were saved).
        present: whether the reference label holds any tumour, per case.
        threshold: a case is called "tumour present" when ``score > threshold``; choose it on validation
            cases (their ``tuned_threshold``) and say where it came from in ``threshold_source``.

    Returns:
        ``threshold``, ``threshold_source``, ``roc_auc`` (MONAI's ``compute_roc_auc``; None when only one
        class is present), ``f1``, ``sensitivity``, ``specificity``, ``confusion`` (``tp``, ``fp``, ``tn``,
        ``fn``) at that threshold, ``roc`` (``fpr``/``tpr``/``thresholds``, from the highest score down) and
        ``tuned_threshold``: the threshold that maximises F1 on *these* cases (midway between two scores), to
        be reused on unseen cases when these are validation cases, never to report figures on these.
    """
    import torch
    from monai.metrics import compute_roc_auc

    s = np.asarray(scores, dtype=float)
    y = np.asarray(present, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores ({s.shape}) and present ({y.shape}) must be two lists of one length")

    def counts(t: float) -> dict:
        pred = s > t
        return {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()), "tn": int((~pred & ~y).sum()),
                "fn": int((~pred & y).sum())}

    def f1(c: dict) -> float | None:
        denom = 2 * c["tp"] + c["fp"] + c["fn"]
        return 2 * c["tp"] / denom if denom else None

    levels = np.unique(s)
    cands = (np.concatenate([[levels[0] - 1.0], (levels[:-1] + levels[1:]) / 2, [levels[-1]]])
             if s.size else np.asarray([threshold]))
    tuned = float(max(cands, key=lambda t: (f1(counts(t)) or 0.0, -t)))
    conf = counts(threshold)
    both = 0 < y.sum() < y.size
    roc_auc = float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y.astype(float)))) if both else None
    fpr, tpr, thr = [0.0], [0.0], [None]
    for t in levels[::-1]:
        pred = s >= t
        tpr.append(float((pred & y).sum() / max(int(y.sum()), 1)))
        fpr.append(float((pred & ~y).sum() / max(int((~y).sum()), 1)))
        thr.append(float(t))
    tp_fn, tn_fp = conf["tp"] + conf["fn"], conf["tn"] + conf["fp"]
    return {"threshold": float(threshold), "threshold_source": threshold_source, "roc_auc": roc_auc,
            "f1": f1(conf), "sensitivity": conf["tp"] / tp_fn if tp_fn else None,
            "specificity": conf["tn"] / tn_fp if tn_fp else None, "confusion": conf,
            "n": int(s.size), "n_present": int(y.sum()), "tuned_threshold": tuned,
            "roc": {"fpr": fpr, "tpr": tpr, "thresholds": thr}}


# ----------------------------------------------------------------------------- lungs and tumour burden
from monai_pipeline.anatomy import LUNG_LABELS, lung_mask  # noqa: E402,F401  (re-exported: burden per lung)

def tumour_burden(tumour: np.ndarray, lungs: np.ndarray, affine: np.ndarray) -> dict:
    """Tumour volume, lesion count and the share of each lung that tumour occupies.

    A tumour voxel belongs to the lung it lies in or, when it lies outside both lung masks (the lung mask
    leaves out solid tissue touching the pleura), to the nearest lung. A lung's involvement is its tumour
    volume over (lung volume + tumour outside the lung mask assigned to it), in %.

    Args:
        tumour: ``(I, J, K)`` binary tumour mask (> 0).
        lungs: :func:`lung_mask` output on the same grid (1 right, 2 left).
        affine: 4x4 RAS affine (mm).

    Returns:
        ``tumour_ml``, ``n_lesions``, ``lung_right_ml``, ``lung_left_ml``, ``tumour_right_ml``,
        ``tumour_left_ml``, ``involved_right_pct``, ``involved_left_pct`` (None for a lung not in view).
    """
    from scipy import ndimage

    t = np.asarray(tumour) > 0
    lungs = np.asarray(lungs)
    aff = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    owner = lungs.copy()
    if lungs.any() and (t & (lungs == 0)).any():
        nearest = ndimage.distance_transform_edt(lungs == 0, sampling=spacing, return_distances=False,
                                                 return_indices=True)
        owner = lungs[tuple(nearest)]
    out: dict = {"tumour_ml": float(t.sum()) * voxel_ml,
                 "n_lesions": int(ndimage.label(t, structure=np.ones((3, 3, 3), bool))[1])}
    for label, side in ((1, "right"), (2, "left")):
        lung_ml = float((lungs == label).sum()) * voxel_ml
        in_lung = float((t & (lungs == label)).sum()) * voxel_ml
        outside = float((t & (lungs == 0) & (owner == label)).sum()) * voxel_ml
        out[f"lung_{side}_ml"] = lung_ml
        out[f"tumour_{side}_ml"] = in_lung + outside
        out[f"involved_{side}_pct"] = 100.0 * (in_lung + outside) / (lung_ml + outside) if lung_ml else None
    return out


# ------------------------------------------------------------------------------ folders of volumes
def pair_folders(pred_dir: str | os.PathLike, label_dir: str | os.PathLike, postfix: str = "seg",
                 images_dir: str | os.PathLike | None = None, prob_dir: str | os.PathLike | None = None,
                 prob_postfix: str = "prob") -> list[dict]:
    """Pair ``<case>_<postfix>.*`` predictions with ``<case>.*`` labels (and images / probability maps).

    Returns one ``{"case_id", "prediction", "label"[, "image"][, "prob"]}`` per case, sorted by case ID.
    A case missing its partner in any given folder is an error naming the case(s) and the folders.
    """
    from monai_pipeline.data import DataError, files_by_case

    preds, labels = files_by_case(pred_dir, postfix), files_by_case(label_dir)
    if not labels:
        raise DataError(f"{label_dir}: no label files to evaluate")
    missing = sorted(set(labels) ^ set(preds))
    if missing:
        raise DataError(f"no partner for case(s) {', '.join(missing)} between {pred_dir} and {label_dir}")
    extra = {}
    for key, folder, fix in (("image", images_dir, ""), ("prob", prob_dir, prob_postfix)):
        if folder is not None:
            found = files_by_case(folder, fix)
            lost = sorted(set(labels) - set(found))
            if lost:
                raise DataError(f"{folder}: no {key} for case(s) {', '.join(lost)}")
            extra[key] = found
    return [{"case_id": c, "prediction": str(preds[c]), "label": str(labels[c]),
             **{k: str(v[c]) for k, v in extra.items()}} for c in sorted(labels)]


def _on_label_grid(path: str, label_path: str, g_shape: tuple, g_aff: np.ndarray, resample: bool,
                   what: str, atol_mm: float = 1e-3, linear: bool = False) -> np.ndarray:
    """``path``'s voxels on the label's grid: as they are when the grids agree, resampled when asked."""
    import SimpleITK as sitk

    from monai_pipeline.data import DataError

    arr, aff = read_mask(path)
    if arr.shape == g_shape and np.allclose(aff, g_aff, atol=atol_mm):
        return arr
    if not resample:
        raise DataError(f"{path}: {what} geometry (shape {arr.shape}, spacing "
                        f"{np.round(np.linalg.norm(aff[:3, :3], axis=0), 4).tolist()}, origin "
                        f"{np.round(aff[:3, 3], 3).tolist()}) differs from its label {label_path} (shape {g_shape}, "
                        f"spacing {np.round(np.linalg.norm(g_aff[:3, :3], axis=0), 4).tolist()}, origin "
                        f"{np.round(g_aff[:3, 3], 3).tolist()}); pass --resample to resample it onto the label's grid")
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(sitk.ReadImage(str(path)), sitk.ReadImage(str(label_path)), sitk.Transform(), interp, 0.0)
    return sitk.GetArrayFromImage(out).transpose()


def _looks_like_ct(image: np.ndarray) -> bool:
    """Hounsfield units: air around -1000 somewhere in the volume."""
    return float(np.min(image)) <= -900.0


def evaluate_case(case: dict, tolerance_mm: float = 2.0, resample: bool = False,
                  lungs_dir: str | os.PathLike | None = None) -> dict:
    """Everything measured on one case of :func:`pair_folders`.

    Returns ``{"metrics": row, "lesions": match_lesions(...), "presence_score": float,
    "burden": dict | None}``: ``row`` holds :func:`case_metrics` plus the file paths; the presence score is
    the maximum tumour probability when a probability map is given, else the predicted tumour volume (mL);
    ``burden`` (:func:`tumour_burden` of the prediction and of the label, with the lungs of
    :func:`lung_mask`, written to ``lungs_dir/<case>_lungs.nii.gz``) is computed for CT images only.
    """
    from monai_pipeline.data import DataError

    g, ga = read_mask(case["label"])
    p = _on_label_grid(case["prediction"], case["label"], g.shape, ga, resample, "prediction")
    row = {"case_id": case["case_id"], **case_metrics(p, g, np.linalg.norm(ga[:3, :3], axis=0), tolerance_mm),
           **{k: case[k] for k in ("prediction", "label", "image", "prob") if k in case}}
    prob = None
    if "prob" in case:
        prob = _on_label_grid(case["prob"], case["label"], g.shape, ga, resample, "probability map", linear=True)
        prob = np.asarray(prob, dtype=np.float32)
        lo, hi = float(np.nanmin(prob)), float(np.nanmax(prob))
        if not (np.isfinite(prob).all() and lo >= 0.0 and hi <= 1.0):
            raise DataError(f"{case['prob']}: probabilities must lie in [0, 1] (found {lo:g} to {hi:g}"
                            f"{', and NaN/inf' if not np.isfinite(prob).all() else ''})")
    lesions = match_lesions(p, g, ga, prob)
    score = float(prob.max()) if prob is not None else row["volume_pred_ml"]
    burden = None
    if "image" in case:
        img = _on_label_grid(case["image"], case["label"], g.shape, ga, resample, "image", linear=True)
        if _looks_like_ct(img):
            lungs = lung_mask(img, ga)
            burden = {"case_id": case["case_id"],
                      **{f"pred_{k}": v for k, v in tumour_burden(p, lungs, ga).items()},
                      **{f"label_{k}": v for k, v in tumour_burden(g, lungs, ga).items()}}
            if lungs_dir is not None:
                from monai_pipeline.export import write_mask_like

                dest = write_mask_like(lungs, case["label"], Path(lungs_dir) / f"{case['case_id']}_lungs.nii.gz")
                burden["lungs"] = str(dest)
    return {"metrics": row, "lesions": lesions, "presence_score": score, "burden": burden}


LESION_COLUMNS = ("case_id", "source", "lesion_id", "voxels", "volume_ml", "centroid_ras_x", "centroid_ras_y",
                  "centroid_ras_z", "bbox_vox", "longest_axial_diameter_mm", "confidence", "hit_or_detected",
                  "best_box_iou")


def _lesion_rows(case_id: str, lesions: dict) -> list[dict]:
    rows = []
    for source in ("pred", "label"):
        for r in lesions[source]:
            rows.append({"case_id": case_id, "source": source, "lesion_id": r["id"], "voxels": r["voxels"],
                         "volume_ml": round(r["volume_ml"], 4),
                         **dict(zip(("centroid_ras_x", "centroid_ras_y", "centroid_ras_z"), r["centroid_ras_mm"])),
                         "bbox_vox": " ".join(map(str, r["bbox_vox"][0] + r["bbox_vox"][1])),
                         "longest_axial_diameter_mm": r["longest_axial_diameter_mm"],
                         "confidence": r.get("confidence_max") if source == "pred" else None,
                         "hit_or_detected": r["hit"] if source == "pred" else r["detected"],
                         "best_box_iou": round(r["best_box_iou"], 4) if source == "pred" else None})
    return rows


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as CSV text (empty cell for None); values containing commas are quoted."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return buf.getvalue()


def evaluate_cases(cases: Sequence[dict], out_dir: str | os.PathLike | None = None, tolerance_mm: float = 2.0,
                   resample: bool = False, presence_threshold: float | None = None,
                   presence_threshold_source: str | None = None) -> dict:
    """Evaluate cases of :func:`pair_folders` (predicted masks against labels); write the files to ``out_dir``.

    Files (each written atomically): ``metrics.csv`` (per case), ``metrics.json`` (summary: mean, median,
    std, bootstrap 95 % CI; rules; cases), ``lesions.csv`` + ``lesions.json`` (every predicted and label
    lesion, matched), ``detection.json`` (:func:`detection_summary`), ``presence.json``
    (:func:`presence_summary` per case; the threshold is ``presence_threshold`` or, by default, 0.5 of the
    maximum probability / any predicted voxel, and its source is stated) and, with CT ``images_dir``,
    ``burden.csv`` plus ``lungs/<case>_lungs.nii.gz``.

    Returns ``{"cases", "summary", "detection", "presence", "burden"}``.
    """
    import json

    from monai_pipeline.io import atomic_write_text, replace_folder

    import shutil
    import tempfile

    with_prob = any("prob" in c for c in cases)
    staging = None
    if out_dir is not None and any("image" in c for c in cases):  # lung masks go to a hidden folder until all cases passed
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lungs.", dir=out_dir))
    try:
        results = [evaluate_case(c, tolerance_mm, resample, staging) for c in cases]
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            if not any(Path(out_dir).iterdir()):
                Path(out_dir).rmdir()
        raise
    rows = [r["metrics"] for r in results]
    summary = summarise(rows, CASE_METRIC_KEYS)
    detection = detection_summary([r["lesions"] for r in results])
    if presence_threshold is None:
        presence_threshold = 0.5 if with_prob else 0.0
        presence_threshold_source = ("default: tumour present when the maximum tumour probability exceeds 0.5"
                                     if with_prob else
                                     "default: tumour present when any tumour voxel is predicted (volume > 0 mL)")
    presence = presence_summary([r["presence_score"] for r in results], [r["metrics"]["volume_label_ml"] > 0 for r in results],
                                presence_threshold, presence_threshold_source or "given")
    presence["score"] = "maximum tumour probability" if with_prob else "predicted tumour volume (mL)"
    presence["cases"] = [{"case_id": r["metrics"]["case_id"], "score": r["presence_score"],
                          "label_present": r["metrics"]["volume_label_ml"] > 0,
                          "pred_present": r["presence_score"] > presence_threshold} for r in results]
    burden = [r["burden"] for r in results if r["burden"] is not None]
    out = {"cases": rows, "summary": summary, "detection": detection, "presence": presence, "burden": burden}
    if out_dir is not None:
        o = Path(out_dir)
        cols = ["case_id", *CASE_METRIC_KEYS, "pred_voxels", "label_voxels", "prediction", "label"]
        atomic_write_text(o / "metrics.csv", csv_text(rows, cols))
        atomic_write_text(o / "metrics.json", json.dumps(
            {"mean_dice": summary["dice"].get("mean"), "summary": summary, "rules": METRIC_RULES,
             "tolerance_mm": tolerance_mm, "cases": rows}, indent=2))
        lesion_rows = [x for r in results for x in _lesion_rows(r["metrics"]["case_id"], r["lesions"])]
        atomic_write_text(o / "lesions.csv", csv_text(lesion_rows, LESION_COLUMNS))
        atomic_write_text(o / "lesions.json", json.dumps(
            {r["metrics"]["case_id"]: r["lesions"] for r in results}, indent=1, default=_json_default))
        atomic_write_text(o / "detection.json", json.dumps(detection, indent=2))
        atomic_write_text(o / "presence.json", json.dumps(presence, indent=2))
        if staging is not None:
            lungs = o / "lungs"
            for b in burden:
                b["lungs"] = str(lungs / Path(b["lungs"]).name)
            replace_folder(staging, lungs)
        if burden:
            atomic_write_text(o / "burden.csv", csv_text(burden, list(burden[0])))
    return out


def evaluate_folders(pred_dir: str | os.PathLike, label_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     postfix: str = "seg", images_dir: str | os.PathLike | None = None,
                     prob_dir: str | os.PathLike | None = None, **kwargs) -> dict:
    """:func:`evaluate_cases` of the cases :func:`pair_folders` finds in the folders (``kwargs`` go to it)."""
    return evaluate_cases(pair_folders(pred_dir, label_dir, postfix, images_dir, prob_dir), out_dir, **kwargs)


def evaluate_predictions(datalist: Sequence[dict], pred_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         postfix: str = "seg", ext: str = ".nii.gz", enabled: bool = True, **kwargs) -> dict | None:
    """The bundles' evaluate step after inference: the masks a ``SaveMaskd`` wrote to ``pred_dir`` for the
    datalist's images, scored against the datalist's labels by :func:`evaluate_cases` (images included, so CT
    cases get lungs and tumour burden). Writes the same files as ``monai-pipeline evaluate``.
    """
    from monai_pipeline.data import case_id
    from monai_pipeline.export import mask_path

    if not enabled:
        return None
    cases = []
    for d in datalist:
        image = d["image"][0] if isinstance(d["image"], (list, tuple)) else d["image"]
        cases.append({"case_id": case_id(image), "prediction": str(mask_path(image, pred_dir, postfix, ext)),
                      "label": str(d["label"]), "image": str(image)})
    return evaluate_cases(sorted(cases, key=lambda c: c["case_id"]), out_dir, **kwargs)


def _json_default(x):
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")
