"""Lesions: connected components, matching and detection (FROC), tumour presence (ROC), burden per lung."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from scipy import ndimage

from monai_pipeline.evaluation.measure import axial_diameters

__all__ = ["lesion_table", "box_iou", "match_lesions", "detection_summary", "presence_summary", "tumour_burden",
           "FROC_RATES"]


# ------------------------------------------------------------------------------------------ lesions
def lesion_table(mask: np.ndarray, affine: np.ndarray, prob: np.ndarray | None = None,
                 return_labels: bool = False) -> list[dict] | tuple[list[dict], np.ndarray]:
    """Connected components of a binary mask (full connectivity: 26 neighbours in 3D, 8 in 2D) as lesions.

    Args:
        mask: ``(I, J[, K])`` array, > 0 = lesion; K is the axial (slice) axis.
        affine: 4x4 voxel-to-world matrix in RAS mm (nibabel's convention; :func:`~monai_pipeline.io.images.read_mask` gives it).
        prob: optional tumour probability map of the same shape, for each lesion's confidence.

    Returns:
        one row per lesion, largest first: ``id`` (1..n), ``voxels``, ``volume_ml``, ``centroid_vox`` and
        ``centroid_ras_mm``, ``bbox_vox`` (``[[i0, j0, k0], [i1, j1, k1]]`` inclusive) and ``bbox_ras_mm``
        (world extent of the box's voxel corners, min/max per RAS axis), ``longest_axial_diameter_mm`` (the
        largest in-plane distance between two of the lesion's voxel centres on one slice) and, with ``prob``,
        ``confidence_mean`` / ``confidence_max``. With ``return_labels``, also the component image, in which
        lesion ``row`` is ``labels == row["component"]``.
    """
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
        diameter = axial_diameters(comp if m.ndim == 3 else comp[..., None], aff, axis=2)["long_mm"]
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

def _nearest_lung(outside: np.ndarray, lungs: np.ndarray, spacing: np.ndarray, margin_mm: float = 30.0) -> np.ndarray:
    """``lungs`` with every voxel of ``outside`` given the label of its nearest lung voxel (Euclidean, in mm).

    The distance transform runs on the box around ``outside`` widened by ``margin_mm`` (a whole 512 x 512 CT
    costs seconds and gigabytes), and the box grows until the farthest nearest-lung distance found fits inside
    the margin: no lung voxel outside the box can then be nearer, so the result is the full-volume one.
    """
    owner = lungs.copy()
    idx = np.argwhere(outside)
    lo_t, hi_t = idx.min(axis=0), idx.max(axis=0) + 1
    margin = float(margin_mm)
    while True:
        pad = np.ceil(margin / spacing).astype(int)
        lo, hi = np.maximum(lo_t - pad, 0), np.minimum(hi_t + pad, lungs.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = lungs[box]
        whole = all(a == 0 for a in lo) and all(b == n for b, n in zip(hi, lungs.shape))
        if sub.any():
            dist, nearest = ndimage.distance_transform_edt(sub == 0, sampling=spacing, return_indices=True)
            reach = float(dist[outside[box]].max())
            if reach <= margin or whole:
                owner[box] = sub[tuple(nearest)]
                return owner
            margin = reach + float(spacing.max())
        elif whole:
            return owner
        else:
            margin *= 2


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
    t = np.asarray(tumour) > 0
    lungs = np.asarray(lungs)
    aff = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    owner = lungs.copy()
    if lungs.any() and (t & (lungs == 0)).any():
        owner = _nearest_lung(t & (lungs == 0), lungs, spacing)
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
