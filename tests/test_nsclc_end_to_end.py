"""A whole chest CT as the hospital stores it (NSCLC-Radiomics LUNG1-001: DICOM CT + RTSTRUCT), end to end.

DICOM series -> lung mask (against the RTSTRUCT's lungs) -> the lung bundle's inference (a model trained on
phantoms: its tumour mask says nothing about accuracy here) -> mask as NIfTI and DICOM SEG -> tumour burden
from the RTSTRUCT's GTV (nearest-lung rule) -> Slicer folder. Speed is measured by scripts/benchmark_nsclc.py.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from conftest import TINY, VENV_BIN, run_cmd, shared
from monai_pipeline.io.images import read_image, read_properties

CLI = str(VENV_BIN / "monai-pipeline")
SETS = [a for i in range(0, len(TINY), 2) for a in ("--set", f"{TINY[i].lstrip('-')}={TINY[i + 1]}")]

pytestmark = pytest.mark.slow


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_lung1_dicom_to_masks_burden_and_slicer(trained, tmp_path):
    from monai_pipeline.anatomy import lung_mask
    from monai_pipeline.evaluation.lesions import tumour_burden
    from monai_pipeline.io.dicom_seg import read_dicom_seg
    from monai_pipeline.io.naming import case_id
    from monai_pipeline.io.rtstruct import label_map

    case = shared("nsclc_radiomics", "LUNG1-001")
    ct, props = read_image(case)
    rs = next(p for p in sorted(case.glob("*.dcm")) if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    rt, _ = label_map(rs, props, [("gtv", "GTV-1"), ("right lung", "Lung R"), ("left lung", "Lung L")])
    rt_lungs, _ = label_map(rs, props, [("lungs", "Lung [LR]")])

    # lungs: the classical mask against the radiotherapist's, both lungs and each side
    lungs = lung_mask(ct, props.affine)
    assert _dice(lungs, rt_lungs) >= 0.95
    assert _dice(lungs == 1, rt == 2) >= 0.93 and _dice(lungs == 2, rt == 3) >= 0.93  # right is 1, left is 2

    # burden from the GTV: RT lung contours leave the GTV out and the threshold mask leaves dense tumour out,
    # so most of it lies outside both masks and goes to the nearest lung (this tumour sits in the left lung:
    # its centroid lies at LPS x = +82 mm, the RT "Lung L" centroid at +83 mm)
    gtv = rt == 1
    inside = float((gtv & (lungs > 0)).sum()) / gtv.sum()
    burden = tumour_burden(gtv, lungs, props.affine)
    assert 150 < burden["tumour_ml"] < 162  # GTV-1: 155.8 mL (155.9 mL by the shoelace estimate)
    assert abs(burden["tumour_right_ml"] + burden["tumour_left_ml"] - burden["tumour_ml"]) < 0.01
    assert burden["tumour_left_ml"] > 0.9 * burden["tumour_ml"], burden
    assert inside < 0.5, inside

    # inference on the DICOM series: NIfTI mask on the CT's grid and a DICOM SEG equal to it
    out = tmp_path / "masks"
    run_cmd([CLI, "infer", "--images", str(case), "--ckpt-dir", str(trained / "models"), "--output-dir", str(out),
             "--id-map", str(tmp_path / "identity.csv"), *SETS], cwd=tmp_path)
    assert "LUNG1-001" in (tmp_path / "identity.csv").read_text()  # asked for: the map, outside the outputs
    cid = case_id(case)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{cid}_seg.dcm", f"{cid}_seg.nii.gz"]
    mask, mask_props = read_image(out / f"{cid}_seg.nii.gz")
    assert mask_props.same_grid(props) and mask.shape == (512, 512, 134)
    assert np.array_equal(read_dicom_seg(out / f"{cid}_seg.dcm", props, case) > 0, mask > 0)
    seg = pydicom.dcmread(out / f"{cid}_seg.dcm", stop_before_pixels=True)
    src = pydicom.dcmread(next(p for p in sorted(case.glob("*.dcm"))
                               if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"), stop_before_pixels=True)
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "Lung CT tumour segmentation"

    # Slicer folder of the GTV, from the DICOM series (the CT written beside it as NRRD)
    from monai_pipeline.io.images import write_image

    write_image(gtv.astype(np.uint8), props, tmp_path / "gtv.nii.gz")
    run_cmd([CLI, "export-slicer", "--image", str(case), "--mask", str(tmp_path / "gtv.nii.gz"), "--out",
             str(tmp_path / "slicer"), "--case-id", "lung1"], cwd=tmp_path)
    folder = tmp_path / "slicer" / "lung1"
    assert read_properties(folder / "lung1_image.nrrd").same_grid(props)
    manifest = json.loads((folder / "export_manifest.json").read_text())
    assert manifest["case_id"] == "lung1"
    assert "lung1_image.nrrd" in (folder / "load_in_slicer.py").read_text()
