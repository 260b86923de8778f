"""import-dicom: a TCIA-style tree (real NSCLC-Radiomics patient + a synthetic one) becomes an MSD dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pydicom

from conftest import shared
from monai_pipeline.app import cli
from monai_pipeline.io.dicom import choose_series
from monai_pipeline.io.images import read_image
from monai_pipeline.io.naming import case_id
from monai_pipeline.io.rtstruct import label_map, read_rtstruct


def test_tree_to_msd_dataset_with_pseudonyms(tmp_path, capsys):
    from test_data_bad_inputs import _dicom, _rtstruct

    lung1 = shared("nsclc_radiomics", "LUNG1-001")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink(lung1, tree / "patient_a")  # a real patient, as the hospital stores it
    files = _dicom(tree / "patient_b", "ct")
    _rtstruct(tree / "patient_b" / "rs.dcm", {"GTV-1": ((3, 3), (7, 7)), "Lung L": ((9, 2), (14, 12)),
                                              "lung r": ((0, 0), (2, 2))}, tree / "patient_b" / "ct")
    out = tmp_path / "dataset"
    ids = tmp_path / "identity.csv"
    code = cli.main(["import-dicom", "--input", str(tree), "--out", str(out), "--label", "tumour=GTV.*",
                     "--label", "lung=Lung [LR]", "--name", "nsclc", "--id-map", str(ids)])
    assert code == 0, capsys.readouterr().err[-3000:]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "tumour", "2": "lung"} and meta["numTraining"] == 2
    report = json.loads((out / "import_report.json").read_text())
    real, synth = case_id(lung1), case_id(files[0])
    assert sorted(report) == sorted([real, synth]) and all(c.startswith("dcm-") for c in report)
    assert report[real]["tumour"]["rois"] == ["GTV-1"] and report[real]["lung"]["rois"] == ["Lung L", "Lung R"]
    assert report[synth]["lung"]["rois"] == ["Lung L", "lung r"]  # case-insensitive, several ROIs merged
    assert report[synth]["tumour"]["voxels"] == 25 and report[synth]["lung"]["voxels"] == 6 * 11 + 9

    # the real case: CT in HU on the series' grid; labels as the RTSTRUCT gives them, the tumour kept where the
    # radiotherapy lung contours overlap it (the earlier label wins)
    ct, props = read_image(out / "imagesTr" / f"{real}.nii.gz")
    src, src_props = read_image(lung1)
    assert props.same_grid(src_props) and np.array_equal(ct, src)
    lab, lab_props = read_image(out / "labelsTr" / f"{real}.nii.gz")
    assert lab_props.same_grid(src_props) and lab.dtype == np.uint8
    rs = next(p for p in lung1.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    gtv, _ = label_map(read_rtstruct(rs), src_props, [("t", "GTV-1")])
    assert np.array_equal(lab == 1, gtv == 1)
    voxel_ml = float(np.prod(src_props.spacing)) / 1000
    assert abs(report[real]["tumour"]["ml"] - gtv.sum() * voxel_ml) < 0.01
    assert 140 < report[real]["tumour"]["ml"] < 170  # GTV-1 is ~156 mL (tests/test_io_rtstruct.py: vs shoelace)

    # no identity in anything written into the dataset; the map only where asked, outside it
    header = pydicom.dcmread(choose_series(lung1).slices[0].path, stop_before_pixels=True)
    secrets = [str(header.PatientID), str(header.PatientName), str(header.StudyDate)]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes() if not path.name.endswith(".gz") else __import__("gzip").open(path).read(4096)
            assert not any(s.encode() in data for s in secrets), path
    assert "LUNG1-001" in ids.read_text() and real in ids.read_text()
    # the dataset trains as any MSD dataset: the lung bundle's datalist reads it
    from monai_pipeline.data.datasets import msd_datalist

    train = msd_datalist(out, "train", val_fraction=0.5)
    val = msd_datalist(out, "val", val_fraction=0.5)
    assert len(train) == len(val) == 1
