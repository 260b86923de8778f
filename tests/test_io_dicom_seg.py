"""DICOM SEG out: read back voxel for voxel, coded segments, references to every source slice, an empty mask,
no patient identity in what we log, and (where dicom3tools installs) dciodvfy finds no error."""

from __future__ import annotations

import logging
import subprocess
import warnings

import numpy as np
import pydicom
import pytest

from conftest import debian_tool
from monai_pipeline.io import dicom
from monai_pipeline.io.dicom_seg import read_dicom_seg, write_dicom_seg
from monai_pipeline.io.images import ImageProperties, read_properties

GRID = ImageProperties(shape=(20, 18, 10), spacing=(0.9, 0.8, 2.5), origin=(-20.5, 30.25, -80.0),
                       direction=((0.9659258, -0.2588190, 0.0), (0.2588190, 0.9659258, 0.0), (0.0, 0.0, 1.0)))


@pytest.fixture()
def series(tmp_path):
    arr = np.random.default_rng(0).integers(-1000, 300, size=GRID.shape).astype(np.int16)
    files = dicom.write_series(arr, GRID, tmp_path / "ct", patient_id="Doe^Jane")
    return tmp_path / "ct", files


def test_labels_round_trip_with_codes_and_references(series, tmp_path, caplog):
    folder, files = series
    mask = np.zeros(GRID.shape, np.uint8)
    mask[3:9, 4:12, 2:5] = 1
    mask[12:16, 2:6, 6:8] = 2
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_dicom_seg(mask, folder, tmp_path / "seg.dcm", names={1: "tumor", 2: "left lung"},
                              algorithm={"name": "Lung CT tumour segmentation", "version": "0.4.0 (git abc)"})
    assert np.array_equal(read_dicom_seg(out, read_properties(folder), folder), mask)
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    seg1, seg2 = ds.SegmentSequence
    assert (seg1.SegmentLabel, seg1.SegmentAlgorithmType, seg1.SegmentAlgorithmName) == (
        "tumor", "AUTOMATIC", "Lung CT tumour segmentation")
    assert seg1.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SNOMED CT Neoplasm
    t = seg2.SegmentedPropertyTypeCodeSequence[0]
    assert (t.CodeValue, t.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue) == ("39607008", "7771000")
    # only non-empty frames are stored, each pointing at its source slice
    sop_by_file = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: k for k, f in enumerate(files)}
    refs = [fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for fg in ds.PerFrameFunctionalGroupsSequence]
    assert int(ds.NumberOfFrames) == 3 + 2 and all(r in sop_by_file for r in refs)
    assert sorted(sop_by_file[r] for r in refs) == [2, 3, 4, 6, 7]
    # the writer's logs and warnings carry no patient name
    assert "Doe" not in caplog.text and not any("Doe" in str(w.message) for w in caught)


def test_an_empty_mask_is_written_with_every_frame(series, tmp_path):
    folder, files = series
    out = write_dicom_seg(np.zeros(GRID.shape, np.uint8), folder, tmp_path / "empty.dcm")
    ds = pydicom.dcmread(out)
    assert int(ds.NumberOfFrames) == len(files) and ds.SegmentSequence[0].SegmentLabel == "tumor"
    assert read_dicom_seg(out, read_properties(folder), folder).sum() == 0


def test_a_mask_off_the_grid_is_refused(series, tmp_path):
    folder, _ = series
    with pytest.raises(ValueError, match="not the DICOM series"):
        write_dicom_seg(np.zeros((5, 5, 5), np.uint8), folder, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_dciodvfy_finds_no_error(series, tmp_path):
    """dicom3tools' validator (installed with apt-get when missing and possible) finds no error in our SEG."""
    dciodvfy = debian_tool(("dciodvfy",), "dicom3tools")
    folder, _ = series
    mask = np.zeros(GRID.shape, np.uint8)
    mask[3:9, 4:12, 2:5] = 1
    for name, m in (("seg.dcm", mask), ("empty.dcm", np.zeros_like(mask))):
        out = write_dicom_seg(m, folder, tmp_path / name)
        report = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True)
        errors = [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, errors
