"""Evaluation over folders: pair masks with labels, score every case, write the tables and summaries.

Masks are compared on their files, in the source geometry, after checking that both files share one
voxel grid. (The bundles' evaluate config computes the same Dice with MONAI's ``MeanDice`` handler.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from monai_pipeline.anatomy import lung_mask
from monai_pipeline.data.validate import check_probabilities, check_same_grid, check_same_size, slice_mask_pairs
from monai_pipeline.evaluation.lesions import detection_summary, match_lesions, presence_summary, tumour_burden
from monai_pipeline.evaluation.metrics import CASE_METRIC_KEYS, METRIC_RULES, case_metrics, patient_dice, slice_scores, \
    summarise
from monai_pipeline.io.atomic import atomic_write_text, staged_folder
from monai_pipeline.io.images import ImageProperties, read_image, write_mask_like
from monai_pipeline.io.naming import case_id, mask_path, pair_folders
from monai_pipeline.io.slices import read_slice

__all__ = ["score_pairs", "read_metric_details", "score_slice_folders", "evaluate_case", "evaluate_cases",
           "evaluate_folders", "evaluate_predictions", "csv_text", "LESION_COLUMNS"]


def score_pairs(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], tolerance_mm: float = 2.0,
                resample: bool = False) -> list[dict]:
    """All :func:`case_metrics` of each ``(prediction, label)`` file pair, in world units.

    A pair on different voxel grids is an error naming both files (unless ``resample``: the prediction is
    then resampled onto the label's grid, nearest neighbour).
    """
    rows = []
    for pred_path, label_path in pairs:
        g, gp = read_image(label_path, "label")
        p = _on_label_grid(str(pred_path), str(label_path), gp, resample, "prediction")
        spacing = gp.spacing[:3]
        rows.append({"prediction": str(pred_path), "label": str(label_path), "case_id": case_id(label_path),
                     **case_metrics(p, g, spacing, tolerance_mm)})
    return rows


def read_metric_details(path: str | os.PathLike) -> list[dict]:
    """Per-case rows ``{"case", "filename", "dice"}`` of a MONAI ``MetricsSaver`` details CSV
    (``val_mean_dice_raw.csv``); ``filename`` is the case's (first) image file."""
    with open(path, newline="") as fh:
        return [{"case": Path(r["filename"]).name, "filename": r["filename"], "dice": float(r["mean"])}
                for r in csv.DictReader(fh)]


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
    slice_rows: list[dict] = []
    for sid, patient, pred_file, label_file in slice_mask_pairs(pred_dir, label_root, pred_postfix):
        p, g = read_slice(pred_file, mask=True), read_slice(label_file, mask=True)
        check_same_size(pred_file, p, label_file, g)
        row = slice_scores([p], [g])[0]
        row.update(patient=patient, slice_id=sid, prediction=str(pred_file), label=str(label_file))
        slice_rows.append(row)
    patient_rows = []
    for patient in sorted({r["patient"] for r in slice_rows}):
        rows = [r for r in slice_rows if r["patient"] == patient]
        patient_rows.append({"patient": patient, "dice": patient_dice(rows), "n_slices": len(rows),
                             "n_tumour_slices": sum(r["label_pixels"] > 0 for r in rows)})
    return slice_rows, patient_rows


def _on_label_grid(path: str, label_path: str, label_props: ImageProperties, resample: bool, what: str,
                   linear: bool = False) -> np.ndarray:
    """``path``'s voxels on the label's grid: as they are when the grids agree, resampled when asked. ``what``
    names the file in messages (a prediction is read as a mask)."""
    arr, props = read_image(path, "mask" if what == "prediction" else what)
    if props.same_grid(label_props):
        return arr
    if not resample:
        check_same_grid(path, props, label_path, label_props, what,
                        "; pass --resample to resample it onto the label's grid")
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
    g, gp = read_image(case["label"], "label")
    ga = gp.affine
    p = _on_label_grid(case["prediction"], case["label"], gp, resample, "prediction")
    row = {"case_id": case["case_id"], **case_metrics(p, g, np.linalg.norm(ga[:3, :3], axis=0), tolerance_mm),
           **{k: case[k] for k in ("prediction", "label", "image", "prob") if k in case}}
    prob = None
    if "prob" in case:
        prob = _on_label_grid(case["prob"], case["label"], gp, resample, "probability map", linear=True)
        prob = np.asarray(prob, dtype=np.float32)
        check_probabilities(case["prob"], prob)
    lesions = match_lesions(p, g, ga, prob)
    score = float(prob.max()) if prob is not None else row["volume_pred_ml"]
    burden = None
    if "image" in case:
        img = _on_label_grid(case["image"], case["label"], gp, resample, "image", linear=True)
        if _looks_like_ct(img):
            lungs = lung_mask(img, ga)
            burden = {"case_id": case["case_id"],
                      **{f"pred_{k}": v for k, v in tumour_burden(p, lungs, ga).items()},
                      **{f"label_{k}": v for k, v in tumour_burden(g, lungs, ga).items()}}
            if lungs_dir is not None:
                dest = write_mask_like(lungs, gp, Path(lungs_dir) / f"{case['case_id']}_lungs.nii.gz")
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
    with_prob = any("prob" in c for c in cases)
    o = Path(out_dir) if out_dir is not None else None
    # lung masks are built in a hidden folder, swapped in as o/lungs only when every case passed
    stage = staged_folder(o / "lungs") if o is not None and any("image" in c for c in cases) else contextlib.nullcontext()
    with stage as staging:
        results = [evaluate_case(c, tolerance_mm, resample, staging) for c in cases]
        rows = [r["metrics"] for r in results]
        summary = summarise(rows, CASE_METRIC_KEYS)
        detection = detection_summary([r["lesions"] for r in results])
        if presence_threshold is None:
            presence_threshold = 0.5 if with_prob else 0.0
            presence_threshold_source = ("default: tumour present when the maximum tumour probability exceeds 0.5"
                                         if with_prob else
                                         "default: tumour present when any tumour voxel is predicted (volume > 0 mL)")
        presence = presence_summary([r["presence_score"] for r in results],
                                    [r["metrics"]["volume_label_ml"] > 0 for r in results],
                                    presence_threshold, presence_threshold_source or "given")
        presence["score"] = "maximum tumour probability" if with_prob else "predicted tumour volume (mL)"
        presence["cases"] = [{"case_id": r["metrics"]["case_id"], "score": r["presence_score"],
                              "label_present": r["metrics"]["volume_label_ml"] > 0,
                              "pred_present": r["presence_score"] > presence_threshold} for r in results]
        burden = [r["burden"] for r in results if r["burden"] is not None]
        out = {"cases": rows, "summary": summary, "detection": detection, "presence": presence, "burden": burden}
        if o is not None:
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
                for b in burden:
                    b["lungs"] = str(o / "lungs" / Path(b["lungs"]).name)
    if o is not None and burden:
        atomic_write_text(o / "burden.csv", csv_text(burden, list(burden[0])))
    return out


def evaluate_folders(pred_dir: str | os.PathLike, label_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     postfix: str = "seg", images_dir: str | os.PathLike | None = None,
                     prob_dir: str | os.PathLike | None = None, **kwargs) -> dict:
    """:func:`evaluate_cases` of the cases :func:`pair_folders` finds in the folders (``kwargs`` go to it)."""
    partners = {"label": label_dir, **({"image": images_dir} if images_dir is not None else {}),
                **({"prob": (prob_dir, "prob")} if prob_dir is not None else {})}
    return evaluate_cases(pair_folders(pred_dir, partners, postfix, mask_key="prediction"), out_dir, **kwargs)


def evaluate_predictions(datalist: Sequence[dict], pred_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         postfix: str = "seg", ext: str = ".nii.gz", enabled: bool = True, **kwargs) -> dict | None:
    """The bundles' evaluate step after inference: the masks a ``SaveMaskd`` wrote to ``pred_dir`` for the
    datalist's images, scored against the datalist's labels by :func:`evaluate_cases` (images included, so CT
    cases get lungs and tumour burden). Writes the same files as ``monai-pipeline evaluate``.
    """
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
