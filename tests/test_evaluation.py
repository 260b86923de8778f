"""Evaluation metrics in world units, checked by hand on small boxes, and the evaluate command's files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import VENV_BIN, run_cmd
from monai_pipeline.evaluation import case_metrics, summarise
from monai_pipeline.io import write_nifti


def _box(shape=(20, 20, 10), lo=(5, 5, 2), hi=(15, 15, 8)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_shifted_box_by_hand():
    """A 10x10x6 box and the same box moved one voxel along i (0.8 mm): 540 of 600 voxels overlap."""
    m = case_metrics(_box(lo=(6, 5, 2), hi=(16, 15, 8)), _box(), spacing=(0.8, 0.8, 2.0), tolerance_mm=1.0)
    assert m["dice"] == pytest.approx(0.9) and m["iou"] == pytest.approx(540 / 660)
    assert m["precision"] == pytest.approx(0.9) and m["recall"] == pytest.approx(0.9)
    assert m["specificity"] == pytest.approx(1 - 60 / (4000 - 600)) and m["pixel_accuracy"] == pytest.approx(1 - 120 / 4000)
    assert m["volume_label_ml"] == pytest.approx(600 * 0.8 * 0.8 * 2.0 / 1000) and m["volume_diff_ml"] == 0.0
    assert m["hd95_mm"] == pytest.approx(0.8, abs=1e-4)  # no surface point is farther than the shift
    assert 0 < m["asd_mm"] < 0.8
    assert m["surface_dice"] == pytest.approx(1.0) and m["boundary_f1"] == pytest.approx(1.0)  # within 1 mm


def test_spacing_is_respected():
    """The same one-voxel shift along k, where voxels are 2.0 mm: the distance is 2 mm, not 1 voxel."""
    m = case_metrics(_box(lo=(5, 5, 3), hi=(15, 15, 9)), _box(), spacing=(0.8, 0.8, 2.0), tolerance_mm=1.0)
    assert m["hd95_mm"] == pytest.approx(2.0, abs=1e-4)
    assert m["surface_dice"] < 1.0 and m["boundary_f1"] < 1.0  # the top and bottom faces are 2 mm off


def test_empty_mask_rules():
    empty = np.zeros((8, 8, 4), bool)
    both = case_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0 and both["surface_dice"] == 1.0
    missed = case_metrics(empty, _box((8, 8, 4), (2, 2, 1), (5, 5, 3)), (1, 1, 1))
    assert missed["dice"] == 0.0 and missed["hd95_mm"] is None and missed["precision"] is None and missed["recall"] == 0.0
    false_alarm = case_metrics(_box((8, 8, 4), (2, 2, 1), (5, 5, 3)), empty, (1, 1, 1))
    assert false_alarm["dice"] == 0.0 and false_alarm["recall"] is None and false_alarm["precision"] == 0.0


def test_summary_bootstrap_is_fixed_and_skips_undefined():
    rows = [{"dice": d, "hd95_mm": h} for d, h in [(0.9, 1.0), (0.7, None), (0.8, 3.0), (0.6, 2.0)]]
    s1, s2 = summarise(rows, ["dice", "hd95_mm"]), summarise(rows, ["dice", "hd95_mm"])
    assert s1 == s2
    assert s1["dice"]["mean"] == pytest.approx(0.75) and s1["dice"]["median"] == pytest.approx(0.75)
    assert s1["dice"]["ci95"][0] <= 0.75 <= s1["dice"]["ci95"][1]
    assert s1["hd95_mm"]["n"] == 3 and s1["hd95_mm"]["n_undefined"] == 1


def test_evaluate_command_writes_per_case_csv_and_summary(tmp_path):
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    write_nifti(_box().astype(np.uint8), aff, tmp_path / "l" / "c1.nii.gz")
    write_nifti(_box(lo=(6, 5, 2), hi=(16, 15, 8)).astype(np.uint8), aff, tmp_path / "p" / "c1_seg.nii.gz")
    write_nifti(np.zeros((20, 20, 10), np.uint8), aff, tmp_path / "l" / "c2.nii.gz")
    write_nifti(np.zeros((20, 20, 10), np.uint8), aff, tmp_path / "p" / "c2_seg.nii.gz")
    run_cmd([str(VENV_BIN / "monai-pipeline"), "evaluate", "--pred", str(tmp_path / "p"), "--label",
             str(tmp_path / "l"), "--out", str(tmp_path / "o"), "--tolerance-mm", "1"], cwd=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "o" / "metrics.csv")))
    assert [r["case_id"] for r in rows] == ["c1.nii.gz", "c2.nii.gz"]
    assert float(rows[0]["dice"]) == pytest.approx(0.9) and float(rows[0]["hd95_mm"]) == pytest.approx(0.8, abs=1e-4)
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert summary["summary"]["dice"]["mean"] == pytest.approx(0.95) and "Both masks empty" in summary["rules"]


# ------------------------------------------------------------------------------------------ lesions
def test_lesion_table_by_hand():
    from monai_pipeline.evaluation import lesion_table

    m = np.zeros((20, 20, 10), np.uint8)
    m[2:5, 2:5, 2:4] = 1       # 18 voxels, 3 x 3 in plane
    m[10:18, 10:12, 5] = 1     # 16 voxels on one slice, 8 x 2
    m[19, 19, 9] = 1           # a single voxel
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    prob = np.where(m > 0, 0.6, 0.0)
    prob[3, 3, 3] = 0.9
    rows = lesion_table(m, aff, prob)
    assert [r["voxels"] for r in rows] == [18, 16, 1] and [r["id"] for r in rows] == [1, 2, 3]
    a, b, c = rows
    assert a["volume_ml"] == pytest.approx(18 * 0.5 * 0.5 * 2.0 / 1000)
    assert a["centroid_vox"] == [3.0, 3.0, 2.5] and a["centroid_ras_mm"] == [11.5, -18.5, 35.0]
    assert a["bbox_vox"] == [[2, 2, 2], [4, 4, 3]]
    assert a["bbox_ras_mm"] == [[10.75, -19.25, 33.0], [12.25, -17.75, 37.0]]  # voxel corners, +-half a voxel
    assert a["longest_axial_diameter_mm"] == pytest.approx(np.hypot(2, 2) * 0.5, abs=1e-3)
    assert b["longest_axial_diameter_mm"] == pytest.approx(np.hypot(7, 1) * 0.5, abs=1e-3)
    assert a["confidence_max"] == pytest.approx(0.9) and b["confidence_mean"] == pytest.approx(0.6)
    assert c["longest_axial_diameter_mm"] == 0.0
    # 26-connectivity: voxels touching at a corner are one lesion
    d = np.zeros((5, 5, 5), np.uint8)
    d[1, 1, 1] = d[2, 2, 2] = 1
    assert len(lesion_table(d, np.eye(4))) == 1


def test_detection_figures_by_hand():
    """Two cases. Case A: label lesions L1, L2; predictions P1 (hits L1, conf 0.9, same box), P2 (false, 0.8).
    Case B: label lesion L3; prediction P3 (hits L3 with a box IoU under 0.5, conf 0.3).
    Sensitivity 2/3 (L2 missed), precision 2/3. Ranked: P1 hit, P2 FP, P3 hit.
    FROC over 2 cases: at 1/8 and 1/4 FP per case (0 FPs allowed) -> 1/3; at >= 1/2 (1 FP) -> 2/3.
    mAP@0.5: only P1 matches a box (IoU 1); precision at recall 1/3 is 1 -> AP = 1/3."""
    from monai_pipeline.evaluation import detection_summary, match_lesions

    aff = np.eye(4)
    la, pa, proba = np.zeros((30, 30, 6), np.uint8), np.zeros((30, 30, 6), np.uint8), np.zeros((30, 30, 6))
    la[2:6, 2:6, 1:3] = 1          # L1
    la[20:24, 20:24, 1:3] = 1      # L2 (missed)
    pa[2:6, 2:6, 1:3] = 1          # P1 = L1
    pa[10:13, 20:23, 4:6] = 1      # P2 (false positive)
    proba[pa > 0] = 0.8
    proba[2:6, 2:6, 1:3] = 0.9
    lb, pb, probb = np.zeros((30, 30, 6), np.uint8), np.zeros((30, 30, 6), np.uint8), np.zeros((30, 30, 6))
    lb[5:15, 5:15, 0:6] = 1        # L3: big
    pb[5:8, 5:8, 0:2] = 1          # P3: small, inside L3
    probb[pb > 0] = 0.3
    cases = [match_lesions(pa, la, aff, proba), match_lesions(pb, lb, aff, probb)]
    assert [r["hit"] for r in cases[0]["pred"]] == [True, False]
    assert [r["detected"] for r in cases[0]["label"]] == [True, False]
    s = detection_summary(cases)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["precision"] == pytest.approx(2 / 3)
    assert s["froc"]["0.125"] == pytest.approx(1 / 3) and s["froc"]["0.25"] == pytest.approx(1 / 3)
    assert s["froc"]["0.5"] == pytest.approx(2 / 3) and s["froc"]["8.0"] == pytest.approx(2 / 3)
    assert s["map_50"] == pytest.approx(1 / 3)
