"""Evaluation metrics in world units, checked by hand on small boxes, and the evaluate command's files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import VENV_BIN, run_cmd
from monai_pipeline.evaluation.metrics import case_metrics, summarise
from monai_pipeline.io.images import write_nifti


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
    assert [r["case_id"] for r in rows] == ["c1", "c2"]
    assert float(rows[0]["dice"]) == pytest.approx(0.9) and float(rows[0]["hd95_mm"]) == pytest.approx(0.8, abs=1e-4)
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert summary["summary"]["dice"]["mean"] == pytest.approx(0.95) and "Both masks empty" in summary["rules"]


# ------------------------------------------------------------------------------------------ lesions
def test_lesion_table_by_hand():
    from monai_pipeline.evaluation.lesions import lesion_table

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
    from monai_pipeline.evaluation.lesions import detection_summary, match_lesions

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


# ------------------------------------------------------------------------------ tumour present / absent
def test_presence_by_hand_and_against_pairwise_auc():
    from monai_pipeline.evaluation.lesions import presence_summary

    scores, present = [0.9, 0.8, 0.3, 0.1, 0.6], [True, True, False, False, False]
    s = presence_summary(scores, present, threshold=0.5, threshold_source="test")
    assert s["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 0}
    assert s["f1"] == pytest.approx(0.8) and s["sensitivity"] == 1.0 and s["specificity"] == pytest.approx(2 / 3)
    assert s["tuned_threshold"] == pytest.approx(0.7)  # between 0.6 (absent) and 0.8 (present): F1 = 1
    assert s["threshold_source"] == "test"
    # a second, independent ROC-AUC: the share of (present, absent) pairs ranked correctly, ties count 1/2
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40).astype(float)
    present = rng.random(40) < 0.4
    pos, neg = scores[present], scores[~present]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    s = presence_summary(scores, present)
    assert s["roc_auc"] == pytest.approx(pairwise)
    assert s["roc"]["fpr"][-1] == 1.0 and s["roc"]["tpr"][-1] == 1.0
    assert presence_summary([1.0, 2.0], [True, True])["roc_auc"] is None  # one class only: undefined


# ----------------------------------------------------------------------------- lungs and tumour burden
def _lung_dice(pred, ref):
    from monai_pipeline.evaluation.metrics import dice

    return dice(pred, ref)


def test_lung_mask_against_slicer_lungs():
    """CTChest4 (LPS, flipped axes, 3 x 3 x 10 mm) against the lungs 3D Slicer's user segmented (5 right, 6 left)."""
    import SimpleITK as sitk

    from conftest import shared
    from monai_pipeline.anatomy import lung_mask
    from monai_pipeline.io.images import read_mask

    folder = shared("ct_chest_slicerio")
    image = sitk.ReadImage(str(folder / "CTChest4.nrrd"))
    seg = sitk.Resample(sitk.ReadImage(str(folder / "Segmentation.seg.nrrd")), image, sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0)
    ref = sitk.GetArrayFromImage(seg).transpose()
    ct, aff = read_mask(folder / "CTChest4.nrrd")
    lungs = lung_mask(ct, aff)
    assert _lung_dice(lungs > 0, (ref == 5) | (ref == 6)) >= 0.95
    assert _lung_dice(lungs == 1, ref == 5) >= 0.90  # right lung
    assert _lung_dice(lungs == 2, ref == 6) >= 0.90  # left lung


def test_lung_mask_against_totalsegmentator_lung_bases():
    """A mostly abdominal CT with only the lung bases in view: gas in the colon must not pass for lung."""
    from conftest import shared
    from monai_pipeline.anatomy import lung_mask
    from monai_pipeline.io.images import read_mask

    folder = shared("totalsegmentator_examples")
    ct, aff = read_mask(folder / "example_ct_sm.nii.gz")
    seg, _ = read_mask(folder / "example_seg.nii.gz")
    lungs = lung_mask(ct, aff)
    assert _lung_dice(lungs > 0, (seg >= 10) & (seg <= 14)) >= 0.90
    assert _lung_dice(lungs == 1, (seg >= 12) & (seg <= 14)) >= 0.90  # right lobes
    assert _lung_dice(lungs == 2, (seg == 10) | (seg == 11)) >= 0.90  # left lobes


@pytest.mark.parametrize("direction", ["identity", "flipped", "rotated"])
def test_lung_mask_sides_follow_world_coordinates(direction):
    """Phantoms stored in three voxel orders: label 1 is always the lung on the patient's right (larger RAS x)."""
    from monai_pipeline.anatomy import lung_mask
    from monai_pipeline.evaluation.lesions import tumour_burden
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom

    img, label, aff = make_phantom(4, PhantomSpec((80, 80, 40), (4.0, 4.0, 6.0)), n_tumours=2, direction=direction)
    lungs = lung_mask(img, aff)
    x = [(aff[:3, :3] @ np.argwhere(lungs == k).mean(axis=0) + aff[:3, 3])[0] for k in (1, 2)]
    assert x[0] > x[1]
    b = tumour_burden(label, lungs, aff)  # tumour outside the lung mask (against the pleura) goes to the nearest lung
    assert b["tumour_right_ml"] + b["tumour_left_ml"] == pytest.approx(b["tumour_ml"]) and b["tumour_ml"] > 0
    if direction != "rotated":  # this phantom's rotated copy has a tumour bulging out of the lung
        assert (lungs[label > 0] > 0).mean() > 0.9


def test_tumour_burden_by_hand():
    from monai_pipeline.evaluation.lesions import tumour_burden

    aff = np.diag([2.0, 2.0, 5.0, 1.0])  # 20 uL voxels
    lungs = np.zeros((30, 10, 4), np.uint8)
    lungs[2:12] = 1   # 10*10*4 = 400 voxels: right lung
    lungs[18:28] = 2  # 400 voxels: left lung
    tumour = np.zeros_like(lungs)
    tumour[4:6, 2:4, 1] = 1     # 4 voxels inside the right lung
    tumour[12:14, 5:7, 2] = 1   # 4 voxels just outside the right lung: assigned to it (nearest)
    tumour[20:22, 5:6, 3] = 1   # 2 voxels in the left lung
    b = tumour_burden(tumour, lungs, aff)
    assert b["n_lesions"] == 3 and b["tumour_ml"] == pytest.approx(10 * 0.02)
    assert b["lung_right_ml"] == pytest.approx(8.0) and b["lung_left_ml"] == pytest.approx(8.0)
    assert b["tumour_right_ml"] == pytest.approx(0.16) and b["tumour_left_ml"] == pytest.approx(0.04)
    assert b["involved_right_pct"] == pytest.approx(100 * 0.16 / (8.0 + 0.08))
    assert b["involved_left_pct"] == pytest.approx(100 * 0.04 / 8.0)
    assert tumour_burden(tumour, np.zeros_like(lungs), aff)["involved_right_pct"] is None  # no lung in view


# ------------------------------------------------------------------------- the evaluate command, whole
def _phantom_run(tmp_path, n=3):
    """Phantom CTs, labels, predictions (one lesion missed, one false positive) and probability maps."""
    from scipy import ndimage

    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom

    dirs = {k: tmp_path / k for k in ("img", "lab", "pred", "prob")}
    for d in dirs.values():
        d.mkdir()
    for c in range(n):
        img, label, aff = make_phantom(10 + c, PhantomSpec((64, 64, 32), (5.0, 5.0, 8.0)), n_tumours=2 if c else 0)
        pred = label.copy()
        comps, k = ndimage.label(label)
        if k > 1:
            pred[comps == 2] = 0  # one tumour missed
        if c == 2:
            pred[30:33, 30:33, 15:17] = 1  # a false positive in the mediastinum
        prob = np.where(pred > 0, 0.9, 0.05).astype(np.float32)
        write_nifti(img, aff, dirs["img"] / f"lung_{c}.nii.gz")
        write_nifti(label, aff, dirs["lab"] / f"lung_{c}.nii.gz")
        write_nifti(pred.astype(np.uint8), aff, dirs["pred"] / f"lung_{c}_seg.nii.gz")
        write_nifti(prob, aff, dirs["prob"] / f"lung_{c}_prob.nii.gz")
    return dirs


def test_evaluate_command_writes_lesions_detection_presence_and_burden(tmp_path):
    from monai_pipeline.evaluation.lesions import lesion_table
    from monai_pipeline.io.images import read_mask

    d = _phantom_run(tmp_path)
    out = tmp_path / "o"
    proc = run_cmd([str(VENV_BIN / "monai-pipeline"), "evaluate", "--pred", str(d["pred"]), "--label", str(d["lab"]),
                    "--images", str(d["img"]), "--prob", str(d["prob"]), "--out", str(out)], cwd=tmp_path)
    for name in ("metrics.csv", "metrics.json", "lesions.csv", "lesions.json", "detection.json", "presence.json",
                 "burden.csv"):
        assert (out / name).is_file(), name
    # lesion rows equal the components of each file, counted here independently
    rows = list(csv.DictReader(open(out / "lesions.csv")))
    for c in range(3):
        for source, folder, suffix in (("pred", "pred", "_seg"), ("label", "lab", "")):
            arr, aff = read_mask(d[folder] / f"lung_{c}{suffix}.nii.gz")
            assert sum(r["case_id"] == f"lung_{c}" and r["source"] == source for r in rows) == len(lesion_table(arr, aff))
    det = json.loads((out / "detection.json").read_text())
    assert det["n_label_lesions"] == 4 and det["sensitivity"] == pytest.approx(0.5)  # 2 of 4 tumours kept
    assert det["precision"] == pytest.approx(2 / 3)  # 2 hits, 1 false positive
    pres = json.loads((out / "presence.json").read_text())
    assert pres["confusion"] == {"tp": 2, "fp": 0, "tn": 1, "fn": 0} and "0.5" in pres["threshold_source"]
    burden = list(csv.DictReader(open(out / "burden.csv")))
    assert [b["case_id"] for b in burden] == ["lung_0", "lung_1", "lung_2"]
    assert float(burden[0]["label_tumour_ml"]) == 0 and float(burden[1]["label_tumour_ml"]) > 0
    lungs, _ = read_mask(out / "lungs" / "lung_1_lungs.nii.gz")
    assert set(np.unique(lungs)) == {0, 1, 2}
    assert "right lung" in proc.stdout and "mAP@0.5" in proc.stdout

    # a threshold tuned on one run and applied to another is stated as such
    proc = run_cmd([str(VENV_BIN / "monai-pipeline"), "evaluate", "--pred", str(d["pred"]), "--label", str(d["lab"]),
                    "--prob", str(d["prob"]), "--presence-threshold-from", str(out / "presence.json"), "--out",
                    str(tmp_path / "o2")], cwd=tmp_path)
    pres2 = json.loads((tmp_path / "o2" / "presence.json").read_text())
    assert pres2["threshold"] == pres["tuned_threshold"] and "tuned on the cases of" in pres2["threshold_source"]


def test_evaluate_refuses_bad_geometry_and_probabilities_unless_resampled(tmp_path):
    d = _phantom_run(tmp_path, n=1)
    cli = str(VENV_BIN / "monai-pipeline")
    arr = nib_load(d["pred"] / "lung_0_seg.nii.gz")
    write_nifti(arr[0][:, :, :30], arr[1], d["pred"] / "lung_0_seg.nii.gz")  # two slices short
    proc = run_cmd([cli, "evaluate", "--pred", str(d["pred"]), "--label", str(d["lab"]), "--out", str(tmp_path / "o")],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "lung_0_seg.nii.gz" in proc.stderr and "lung_0.nii.gz" in proc.stderr
    assert "--resample" in proc.stderr and not (tmp_path / "o").exists()
    run_cmd([cli, "evaluate", "--pred", str(d["pred"]), "--label", str(d["lab"]), "--resample", "--out",
             str(tmp_path / "o")], cwd=tmp_path)
    assert (tmp_path / "o" / "metrics.csv").is_file()
    prob = nib_load(d["prob"] / "lung_0_prob.nii.gz")
    write_nifti(prob[0] + 0.97, prob[1], d["prob"] / "lung_0_prob.nii.gz")  # 1.02 where the model said 0.05
    proc = run_cmd([cli, "evaluate", "--pred", str(d["pred"]), "--label", str(d["lab"]), "--resample", "--prob",
                    str(d["prob"]), "--out", str(tmp_path / "o3")], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "lung_0_prob.nii.gz" in proc.stderr and "[0, 1]" in proc.stderr
    assert not (tmp_path / "o3").exists()


def nib_load(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def test_nearest_lung_on_a_box_equals_the_whole_volume_transform():
    """Tumour outside both lung masks goes to the nearest lung; the boxed transform (grown until exact) gives the
    whole-volume answer, including a far-away voxel that forces the box to grow."""
    from scipy import ndimage

    from monai_pipeline.evaluation.lesions import _nearest_lung

    lungs = np.zeros((120, 100, 60), np.uint8)
    lungs[10:50, 20:80, 5:55], lungs[70:110, 20:80, 5:55] = 1, 2
    tumour = np.zeros(lungs.shape, bool)
    tumour[45:75, 40:60, 20:30] = True  # between the lungs, nearer one or the other by position
    tumour[0:3, 0:3, 0:3] = True  # far from both
    outside = tumour & (lungs == 0)
    spacing = np.array([0.8, 0.9, 2.5])
    whole = lungs[tuple(ndimage.distance_transform_edt(lungs == 0, sampling=spacing, return_distances=False,
                                                       return_indices=True))]
    for margin in (2.0, 30.0, 500.0):
        boxed = _nearest_lung(outside, lungs, spacing, margin_mm=margin)
        assert np.array_equal(boxed[outside], whole[outside]) and np.array_equal(boxed[lungs > 0], lungs[lungs > 0])
    assert set(np.unique(whole[outside])) == {1, 2}
