"""DICOM series in: the real NSCLC-Radiomics CT, geometry, pseudonyms, compressed files, and every refusal by name."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import shared
from monai_pipeline.errors import DataError
from monai_pipeline.io import dicom
from monai_pipeline.io.images import ImageProperties, read_image, read_properties
from monai_pipeline.io.naming import case_id


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


GRID = ImageProperties(shape=(24, 20, 12), spacing=(0.8, 0.9, 2.5), origin=(-101.37, -55.123, -240.77),
                       direction=tuple(map(tuple, _rotation(17, 6))))


def _volume(props: ImageProperties = GRID, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=props.shape).astype(np.int16)


def _series(folder: Path, props: ImageProperties = GRID, seed: int = 0, **kw) -> tuple[np.ndarray, list[Path]]:
    arr = _volume(props, seed)
    return arr, dicom.write_series(arr, props, folder, **kw)


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


# ------------------------------------------------------------------------------------ the real CT
def test_nsclc_ct_series_read_with_geometry_and_hu(caplog):
    folder = shared("nsclc_radiomics", "LUNG1-001")
    with caplog.at_level(logging.DEBUG, logger="monai_pipeline"):
        arr, props = read_image(folder)
    assert arr.shape == (512, 512, 134) and arr.dtype == np.int16
    assert props.shape == (512, 512, 134)
    assert np.allclose(props.spacing, (0.9765625, 0.9765625, 3.0))
    assert arr.min() == -1024 and 1000 < arr.max() < 4000  # HU: slope and intercept applied
    # independent: SimpleITK's own GDCM series reader over the CT series
    scan = dicom.scan_folder(folder)
    (uid,) = scan.series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    ref = reader.Execute()
    assert ImageProperties.of(ref).same_grid(props)
    assert np.array_equal(sitk.GetArrayViewFromImage(ref).transpose(2, 1, 0), arr)
    skipped = sorted(why.split()[0] for _, why in scan.skipped)
    assert skipped == ["RTDOSE", "RTPLAN", "RTSTRUCT"]
    # no identity: the case ID is a pseudonym, and nothing logged carries the patient's fields
    ds = pydicom.dcmread(scan.series[uid].slices[0].path, stop_before_pixels=True)
    cid = case_id(folder)
    assert cid == dicom.pseudonym(uid) and cid.startswith("dcm-") and len(cid) == 16
    secrets = {str(ds.PatientID), str(ds.PatientName), str(ds.get("StudyDate", ""))} - {""}
    assert secrets, "the test needs identity fields to look for"
    # the folder's own name is the user's choice (here it is the patient ID): only what we derive is checked
    for text in [cid, caplog.text.replace(str(folder.resolve()), "<folder>").replace(str(folder), "<folder>"),
                 str(props)]:
        assert not any(s in text for s in secrets), text


def test_identity_rows_only_on_request():
    folder = shared("nsclc_radiomics", "LUNG1-001")
    (row,) = dicom.identity_rows([folder])
    assert row["case_id"] == case_id(folder) and row["PatientID"] == "LUNG1-001"


# ------------------------------------------------------------------------------------ geometry
def test_oblique_series_round_trip(tmp_path):
    arr, files = _series(tmp_path / "s")
    got, props = read_image(tmp_path / "s")
    assert np.array_equal(got, arr) and got.dtype == np.int16
    assert props.same_grid(GRID), props.difference(GRID, "written")
    # any one file of the series stands for it; FOLDER#UID too
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert read_properties(files[3]).same_grid(GRID)
    assert read_properties(f"{tmp_path / 's'}#{uid}").same_grid(GRID)
    assert case_id(files[3]) == case_id(tmp_path / "s") == dicom.pseudonym(uid)


def test_slices_are_ordered_by_position_not_by_name(tmp_path):
    arr, files = _series(tmp_path / "s")
    for i, f in enumerate(reversed(files)):  # names now run against the slice order
        f.rename(f.with_name(f"x{i:04d}.dcm"))
    got, props = read_image(tmp_path / "s")
    assert np.array_equal(got, arr) and props.same_grid(GRID)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless"])
def test_compressed_transfer_syntaxes_are_read(tmp_path, syntax):
    from pydicom import uid as uids

    arr, files = _series(tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        try:
            ds.compress(getattr(uids, syntax))
        except (RuntimeError, NotImplementedError) as err:
            pytest.skip(f"pydicom cannot encode {syntax} here: {err}")
        ds.save_as(f)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == getattr(uids, syntax)
    got, _ = read_image(tmp_path / "s")
    assert np.array_equal(got, arr)


def test_other_objects_and_localizers_are_set_aside(tmp_path):
    _series(tmp_path / "s")
    shutil.copy(shared("nsclc_radiomics", "LUNG1-001", "2.dcm"), tmp_path / "s" / "rtstruct.dcm")
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    loc = ImageProperties(shape=(24, 20, 2), spacing=(1, 1, 1), origin=(0, 0, 0),
                          direction=((1, 0, 0), (0, 0, 1), (0, -1, 0)))
    _, loc_files = _series(tmp_path / "loc", loc)
    _edit(loc_files[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    shutil.copy(loc_files[0], tmp_path / "s" / "scout.dcm")
    scan = dicom.scan_folder(tmp_path / "s")
    assert len(scan.series) == 1
    reasons = sorted(why for _, why in scan.skipped)
    assert any("RTSTRUCT" in r for r in reasons) and "localizer (scout) image" in reasons
    assert "not a DICOM file" in reasons
    assert read_properties(tmp_path / "s").same_grid(GRID)


# ------------------------------------------------------------------------------------ refusals
def _refused(path, *needles: str) -> str:
    with pytest.raises(DataError) as err:
        read_image(path)
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_two_series_need_a_choice_and_the_message_lists_them(tmp_path):
    _, a = _series(tmp_path / "tree" / "study" / "a")
    _, b = _series(tmp_path / "tree" / "study" / "b", seed=1)
    uids = [pydicom.dcmread(f[0], stop_before_pixels=True).SeriesInstanceUID for f in (a, b)]
    _refused(tmp_path / "tree", str(tmp_path / "tree"), "2 image series", uids[0], uids[1], "#SERIES_UID")
    got, _ = read_image(f"{tmp_path / 'tree'}#{uids[1]}")
    assert np.array_equal(got, _volume(seed=1))
    _refused(f"{tmp_path / 'tree'}#1.2.3.4", "no image series 1.2.3.4")


def test_missing_slice(tmp_path):
    _, files = _series(tmp_path / "s")
    files[5].unlink()
    _refused(tmp_path / "s", "1 slice(s) missing", "slice_0004.dcm", "slice_0006.dcm")


def test_uneven_spacing(tmp_path):
    _, files = _series(tmp_path / "s")
    ds = pydicom.dcmread(files[5])
    normal = np.asarray(GRID.direction)[:, 2]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + 0.6 * normal]
    ds.save_as(files[5])
    _refused(tmp_path / "s", "uneven slice spacing")


def test_gantry_tilt(tmp_path):
    _, files = _series(tmp_path / "s")
    row = np.asarray(GRID.direction)[:, 1]
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + 0.3 * k * row]
        ds.save_as(f)
    _refused(tmp_path / "s", "gantry tilt")


def test_corrupt_header_is_named(tmp_path):
    _, files = _series(tmp_path / "s")
    files[3].write_bytes(files[3].read_bytes()[:128] + b"DICM" + b"\xff" * 40)
    _refused(tmp_path / "s", str(files[3].name), "corrupt DICOM file")


def test_truncated_pixel_data_is_named(tmp_path):
    _, files = _series(tmp_path / "s")
    files[7].write_bytes(files[7].read_bytes()[:-300])
    _refused(tmp_path / "s", "slice_0007.dcm", "pixel data")


def test_two_frames_of_reference(tmp_path):
    _, files = _series(tmp_path / "s")
    _edit(files[2], FrameOfReferenceUID=pydicom.uid.generate_uid())
    _refused(tmp_path / "s", "2 Frames of Reference")


def test_mixed_orientation_and_size(tmp_path):
    _, files = _series(tmp_path / "o")
    _edit(files[2], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    _refused(tmp_path / "o", "mixed slice orientations")
    _, files = _series(tmp_path / "z")
    ds = pydicom.dcmread(files[2])
    ds.Rows = 10
    ds.PixelData = ds.PixelData[: 10 * 24 * 2]
    ds.save_as(files[2])
    _refused(tmp_path / "z", "mixed slice sizes")


def test_single_slice_and_multiframe(tmp_path):
    _, files = _series(tmp_path / "s")
    for f in files[1:]:
        f.unlink()
    _refused(tmp_path / "s", "a single slice is not a volume")
    _edit(files[0], NumberOfFrames=3)
    _refused(tmp_path / "s", "multi-frame", "dcm2niix")


def test_a_dicom_object_that_is_not_an_image(tmp_path):
    rt = shared("nsclc_radiomics", "LUNG1-001", "2.dcm")
    _refused(rt, "RTSTRUCT", "not an image")
    only = tmp_path / "rt"
    only.mkdir()
    shutil.copy(rt, only / "rs.dcm")
    _refused(only, "no DICOM image series", "RTSTRUCT")


def test_a_left_handed_grid_is_stored_with_its_slices_reversed(tmp_path):
    flipped = ImageProperties(shape=GRID.shape, spacing=GRID.spacing, origin=GRID.origin,
                              direction=tuple(map(tuple, np.asarray(GRID.direction) @ np.diag([1, 1, -1]))))
    arr = _volume(flipped)
    dicom.write_series(arr, flipped, tmp_path / "s")
    got, props = read_image(tmp_path / "s")
    assert np.array_equal(got, arr[:, :, ::-1])
    last = flipped.lps_affine @ [0, 0, GRID.shape[2] - 1, 1]
    assert np.allclose(props.lps_affine @ [0, 0, 0, 1], last, atol=1e-4)  # the same voxels in space


def test_identity_map_written_only_where_asked_and_outside_the_outputs(tmp_path):
    import csv

    _series(tmp_path / "s", patient_id="Doe^Jane")
    (tmp_path / "a.nii.gz").write_bytes(b"")  # not DICOM: not in the map
    out = dicom.write_identity_map([tmp_path / "s", tmp_path / "a.nii.gz"], tmp_path / "ids.csv")
    (row,) = list(csv.DictReader(out.open()))
    assert row["case_id"] == case_id(tmp_path / "s") and row["PatientID"] == "Doe^Jane"
    assert dicom.write_identity_map([tmp_path / "a.nii.gz"], tmp_path / "none.csv") is None
    with pytest.raises(DataError, match="must lie outside"):
        dicom.write_identity_map([tmp_path / "s"], tmp_path / "masks" / "ids.csv", outside=tmp_path / "masks")
