"""RTSTRUCT reading and rasterisation (monai_pipeline.io.rtstruct): exact voxels on synthetic structure sets
written with pydicom (an axial and an oblique grid), the even-odd rule and its half-open boundary, the checks
that pair a structure set with its image, and the real LUNG1-001 structure set against its CT."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_pipeline.anatomy import lung_mask
from monai_pipeline.errors import DataError
from monai_pipeline.io.images import ImageProperties
from monai_pipeline.io.rtstruct import RTStruct, label_map, rasterise, read_rtstruct, select_rois

from conftest import shared

RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
FOR_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
K = 3  # the slice the synthetic polygons are drawn on


def _rotation() -> np.ndarray:
    a, b = np.radians(20), np.radians(7)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


AXIAL = ImageProperties(shape=(10, 12, 6), spacing=(0.8, 0.7, 2.5), origin=(-20.0, 15.0, -40.0),
                        direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
OBLIQUE = ImageProperties(shape=(10, 12, 6), spacing=(0.8, 0.7, 2.5), origin=(-20.0, 15.0, -40.0),
                          direction=tuple(tuple(float(v) for v in row) for row in _rotation()))
GRIDS = pytest.mark.parametrize("props", [AXIAL, OBLIQUE], ids=["axial", "oblique"])


def lps(props: ImageProperties, ijk) -> np.ndarray:
    """``(N, 3)`` continuous voxel indices -> ``(N, 3)`` LPS mm on ``props``' grid."""
    ijk = np.asarray(ijk, dtype=float)
    return ijk @ props.lps_affine[:3, :3].T + props.lps_affine[:3, 3]


def rect(i0: float, i1: float, j0: float, j1: float, k: float = K, clockwise: bool = False) -> np.ndarray:
    """Corners of an axis-aligned rectangle in voxel indices, ``(4, 3)``."""
    pts = np.array([[i0, j0, k], [i1, j0, k], [i1, j1, k], [i0, j1, k]], dtype=float)
    return pts[::-1] if clockwise else pts


def box_mask(shape, i0: int, i1: int, j0: int, j1: int, k: int = K) -> np.ndarray:
    """Expected mask: voxels i0..i1, j0..j1 (inclusive) on slice k."""
    m = np.zeros(shape[:3], dtype=bool)
    m[i0:i1 + 1, j0:j1 + 1, k] = True
    return m


def write_rtstruct(path: Path, rois: dict[str, list | None], props: ImageProperties = AXIAL, *,
                   modality: str = "RTSTRUCT", sop_class: str = RTSTRUCT_SOP, for_uid: str = FOR_UID,
                   series_uid: str | None = SERIES_UID, untidy: bool = False) -> Path:
    """Write a structure set with pydicom. ``rois`` maps an ROI name to its contours, each an ``(N, 3)`` array of
    voxel indices on ``props`` (CLOSED_PLANAR) or ``(array, type)``; ``None`` writes an ROI without
    ContourSequence. ``series_uid=None`` leaves out RTReferencedStudySequence. ``untidy`` gives every
    ContourImageSequence item no ReferencedSOPInstanceUID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ref = Dataset()
    ref.FrameOfReferenceUID = for_uid
    if series_uid is not None:
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        study = Dataset()
        study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", generate_uid()
        study.RTReferencedSeriesSequence = DicomSequence([series])
        ref.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref])
    ssroi, roic = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        item = Dataset()
        item.ROINumber, item.ROIName, item.ReferencedFrameOfReferenceUID = number, name, for_uid
        ssroi.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = number
        if contours is not None:
            seq = []
            for c in contours:
                pts, kind = c if isinstance(c, tuple) else (c, "CLOSED_PLANAR")
                ci = Dataset()
                ci.ContourGeometricType = kind
                ci.NumberOfContourPoints = len(pts)
                ci.ContourData = [f"{v:.10g}" for v in lps(props, pts).ravel()]
                image = Dataset()
                image.ReferencedSOPClassUID = CT_SOP
                if not untidy:
                    image.ReferencedSOPInstanceUID = generate_uid()
                ci.ContourImageSequence = DicomSequence([image])
                seq.append(ci)
            rc.ContourSequence = DicomSequence(seq)
        roic.append(rc)
    ds.StructureSetROISequence = DicomSequence(ssroi)
    ds.ROIContourSequence = DicomSequence(roic)
    ds.save_as(path, enforce_file_format=True)
    return path


@contextmanager
def raises(match: str, *names: str):
    """pytest.raises(DataError, match=match) whose message is one line and also names each of ``names``."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)


# --- synthetic structure sets ----------------------------------------------------------------------------------

def test_read_rtstruct_fields(tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV-1": [rect(1.5, 4.5, 2.5, 6.5)], "Empty": None,
                                                "Marker": [(np.array([[2.0, 2.0, 2.5]]), "POINT")]})
    s = read_rtstruct(path)
    assert s.path == path and s.frame_of_reference_uids == (FOR_UID,) and s.series_uids == (SERIES_UID,)
    assert [(r.number, r.name) for r in s.rois] == [(1, "GTV-1"), (2, "Empty"), (3, "Marker")]
    gtv = s.roi("GTV-1")
    assert len(gtv.contours) == 1 and gtv.contours[0].geometric_type == "CLOSED_PLANAR"
    np.testing.assert_allclose(gtv.contours[0].points, lps(AXIAL, rect(1.5, 4.5, 2.5, 6.5)), atol=1e-6)
    assert gtv.contours[0].points.shape == (4, 3) and len(gtv.polygons) == 1
    assert s.roi("Empty").contours == () and s.roi("Marker").polygons == []
    assert s.roi("Marker").contours[0].geometric_type == "POINT"


@GRIDS
def test_square_gives_exactly_its_voxels(tmp_path, props):
    """Edges between voxel centres: i 1.5..4.5 and j 2.5..6.5 hold centres i 2..4, j 3..6 (12 voxels)."""
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [rect(1.5, 4.5, 2.5, 6.5)]}, props)
    lab, matched = label_map(path, props, [("tumour", "gtv")], FOR_UID, SERIES_UID)
    assert lab.dtype == np.uint8 and lab.shape == props.shape and matched == {"tumour": ["GTV"]}
    np.testing.assert_array_equal(lab == 1, box_mask(props.shape, 2, 4, 3, 6))
    assert int((lab == 1).sum()) == 12
    # the same polygon traversed the other way round fills the same voxels
    mask = rasterise([lps(props, rect(1.5, 4.5, 2.5, 6.5, clockwise=True))], props)
    np.testing.assert_array_equal(mask, box_mask(props.shape, 2, 4, 3, 6))


@GRIDS
def test_inner_polygon_is_a_hole_and_an_island_in_it_is_filled(tmp_path, props):
    outer, hole, island = rect(0.5, 7.5, 0.5, 8.5), rect(2.5, 4.5, 3.5, 5.5), rect(2.7, 3.3, 3.7, 4.3)
    path = write_rtstruct(tmp_path / "rs.dcm", {"Lung": [outer, hole], "Lung2": [outer, hole, island]}, props)
    expected = box_mask(props.shape, 1, 7, 1, 8) & ~box_mask(props.shape, 3, 4, 4, 5)
    lab, _ = label_map(path, props, [("lung", "lung")])
    np.testing.assert_array_equal(lab == 1, expected)
    assert int((lab == 1).sum()) == 7 * 8 - 2 * 2
    lab2, _ = label_map(path, props, [("lung", "lung2")])
    expected[3, 4, K] = True  # the island inside the hole (depth 2) is in again
    np.testing.assert_array_equal(lab2 == 1, expected)
    assert int((lab2 == 1).sum()) == 53


@GRIDS
@pytest.mark.parametrize("clockwise", [False, True], ids=["ccw", "cw"])
def test_edges_through_voxel_centres_are_half_open(props, clockwise):
    """A centre exactly on an edge counts when the interior lies towards +i (+j for edges along i): the square
    with edges through centres i 1..4, j 2..5 covers i 1..3, j 2..4, whichever way it is traversed; two squares
    sharing an edge leave no gap and no double claim (XOR would punch a line of holes)."""
    mask = rasterise([lps(props, rect(1, 4, 2, 5, clockwise=clockwise))], props)
    np.testing.assert_array_equal(mask, box_mask(props.shape, 1, 3, 2, 4))
    pair = [lps(props, rect(1, 4, 2, 5, clockwise=clockwise)), lps(props, rect(4, 7, 2, 5, clockwise=not clockwise))]
    np.testing.assert_array_equal(rasterise(pair, props), box_mask(props.shape, 1, 6, 2, 4))
    # the image's edge (half a voxel beyond the outer centres) is allowed and fills the border voxels
    edge = rasterise([lps(props, rect(-0.5, 2.5, -0.5, 1.5, clockwise=clockwise))], props)
    np.testing.assert_array_equal(edge, box_mask(props.shape, 0, 2, 0, 1))


def test_two_rois_merged_by_one_pattern(tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", {"Lung L": [rect(0.5, 3.5, 0.5, 2.5)], "GTV": [rect(4.5, 5.5, 4.5, 5.5)],
                                                "lung r": [rect(5.5, 8.5, 6.5, 9.5)]})
    lab, matched = label_map(path, AXIAL, [("lungs", r"lung [lr]")])
    assert matched == {"lungs": ["Lung L", "lung r"]}
    np.testing.assert_array_equal(lab, (box_mask(AXIAL.shape, 1, 3, 1, 2) | box_mask(AXIAL.shape, 6, 8, 7, 9))
                                  .astype(np.uint8))
    assert int(lab.sum()) == 6 + 9


def test_earlier_label_wins_where_labels_overlap(tmp_path):
    """A covers i, j 2..4, B covers 4..6: they share voxel (4, 4); the earlier label keeps it."""
    path = write_rtstruct(tmp_path / "rs.dcm", {"A": [rect(1.5, 4.5, 1.5, 4.5)], "B": [rect(3.5, 6.5, 3.5, 6.5)]})
    lab, _ = label_map(path, AXIAL, [("a", "A"), ("b", "B")])
    assert (int((lab == 1).sum()), int((lab == 2).sum()), int(lab[4, 4, K])) == (9, 8, 1)
    lab, _ = label_map(path, AXIAL, [("b", "B"), ("a", "A")])
    assert (int((lab == 1).sum()), int((lab == 2).sum()), int(lab[4, 4, K])) == (9, 8, 1)
    assert lab[2, 2, K] == 2 and lab[6, 6, K] == 1


def test_select_rois_is_case_insensitive_and_whole_name(tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", {n: [rect(1.5, 2.5, 1.5, 2.5)] for n in
                                                ("GTV-1", "Lung L", "lung r", "PTV-1")})
    s = read_rtstruct(path)
    assert select_rois(s, "gtv-1") == ["GTV-1"]
    assert select_rois(s, "LUNG [LR]") == ["Lung L", "lung r"]
    assert select_rois(s, r"(gtv|ptv)-\d") == ["GTV-1", "PTV-1"]
    with raises("no ROI name matches 'gtv'", str(path), "'GTV-1', 'Lung L', 'lung r', 'PTV-1'"):
        select_rois(s, "gtv")  # fullmatch: a prefix is not enough


# --- faults --------------------------------------------------------------------------------------------------

@GRIDS
def test_contour_outside_the_image(tmp_path, props):
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [rect(-2.0, 3.5, 1.5, 3.5)]}, props)
    with raises("contour outside the image", str(path), "'GTV'", "k=3", "2.00 voxels (1.6 mm) along i"):
        label_map(path, props, [("gtv", "GTV")])
    path = write_rtstruct(tmp_path / "rs2.dcm", {"GTV": [rect(1.5, 3.5, 1.5, 3.5, k=-1)]}, props)
    with raises("contour outside the image", str(path), "k=-1", "along k"):
        label_map(path, props, [("gtv", "GTV")])


def test_pattern_matching_nothing_lists_the_rois(tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV-1": [rect(1.5, 2.5, 1.5, 2.5)], "Spinal cord": None})
    with raises("no ROI name matches 'heart'", str(path), "'GTV-1', 'Spinal cord'"):
        label_map(path, AXIAL, [("gtv", "gtv-1"), ("heart", "heart")])


def test_not_an_rtstruct(tmp_path):
    path = write_rtstruct(tmp_path / "ct.dcm", {}, modality="CT", sop_class=CT_SOP)
    with raises("is a CT .*not an RTSTRUCT", str(path), "CT Image Storage"):
        label_map(path, AXIAL, [("gtv", "gtv")])
    # no Modality but the RT Structure Set SOP class: read, with a warning
    assert read_rtstruct(write_rtstruct(tmp_path / "rs.dcm", {"GTV": None}, modality="")).names == ["GTV"]
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file at all\n")
    with raises("not a DICOM file", str(text)):
        read_rtstruct(text)
    with raises("file not found", str(tmp_path / "missing.dcm")):
        read_rtstruct(tmp_path / "missing.dcm")


def test_frame_of_reference_and_series_must_be_the_image(tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [rect(1.5, 2.5, 1.5, 2.5)]})
    with raises(f"refers to Frame of Reference {FOR_UID}, the image is in 1.2.3", str(path)):
        label_map(path, AXIAL, [("gtv", "gtv")], frame_of_reference="1.2.3")
    with raises(f"references another series \\({SERIES_UID}\\)", str(path), "1.2.4"):
        label_map(path, AXIAL, [("gtv", "gtv")], FOR_UID, series_uid="1.2.4")
    lab, _ = label_map(path, AXIAL, [("gtv", "gtv")], FOR_UID, SERIES_UID)
    assert int(lab.sum()) == 1


@GRIDS
def test_polygon_off_the_slices(tmp_path, props):
    between = rect(1.5, 3.5, 1.5, 3.5, k=2.5)
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [between]}, props)
    with raises("not on an image slice \\(between two slices", str(path), "'GTV'", "0.50 voxels (1.25 mm)"):
        label_map(path, props, [("gtv", "GTV")])
    tilted = np.array([[1.5, 1.5, 3.0], [3.5, 1.5, 3.0], [3.5, 3.5, 3.4], [1.5, 3.5, 3.4]])
    path = write_rtstruct(tmp_path / "rs2.dcm", {"GTV": [tilted]}, props)
    with raises("tilted against the slices", str(path), "0.40 voxels (1.00 mm)"):
        label_map(path, props, [("gtv", "GTV")])
    # within 0.1 voxel of the slice is on it
    path = write_rtstruct(tmp_path / "rs3.dcm", {"GTV": [rect(1.5, 3.5, 1.5, 3.5, k=K + 0.08)]}, props)
    lab, _ = label_map(path, props, [("gtv", "GTV")])
    np.testing.assert_array_equal(lab == 1, box_mask(props.shape, 2, 3, 2, 3))


def test_untidy_file_is_tolerated(tmp_path, caplog):
    """No ReferencedSOPInstanceUID in ContourImageSequence, no referenced series, an ROI without ContourSequence,
    POINT markers between slices, a polygon stored twice."""
    square = rect(1.5, 4.5, 2.5, 6.5)
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [square, square.copy()], "Empty": None,
                                                "Iso": [(np.array([[5.0, 5.0, 2.5]]), "POINT")]},
                          series_uid=None, untidy=True)
    s = read_rtstruct(path)
    assert s.series_uids == () and s.roi("Empty").contours == ()
    with caplog.at_level(logging.WARNING, logger="monai_pipeline.io.rtstruct"):
        lab, matched = label_map(path, AXIAL, [("gtv", "gtv"), ("empty", "empty|iso")], FOR_UID, series_uid="1.2.4")
    assert matched == {"gtv": ["GTV"], "empty": ["Empty", "Iso"]}
    np.testing.assert_array_equal(lab, box_mask(AXIAL.shape, 2, 4, 3, 6).astype(np.uint8))  # the copy is no hole
    text = caplog.text
    assert "names no referenced image series" in text
    assert "'Empty' (label 'empty') has no closed polygons" in text and "'Iso' (label 'empty')" in text
    assert "1 polygon(s) repeat an earlier one" in text


def test_labels_argument_is_checked(tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [rect(1.5, 2.5, 1.5, 2.5)]})
    with pytest.raises(ValueError, match="distinct names"):
        label_map(path, AXIAL, [("a", "gtv"), ("a", "gtv")])
    with pytest.raises(ValueError, match="1 to 255"):
        label_map(path, AXIAL, [])


# --- LUNG1-001 (NSCLC-Radiomics): the real structure set on its CT ----------------------------------------------

@pytest.fixture(scope="module")
def lung1() -> SimpleNamespace:
    """The CT grid and HU volume (SimpleITK's GDCM series reader on the CT files: the test's own way to the grid),
    and the RTSTRUCT found by Modality."""
    folder = shared("nsclc_radiomics", "LUNG1-001")
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))}
    rtstructs = [f for f, h in headers.items() if h.Modality == "RTSTRUCT"]
    cts = [h for h in headers.values() if h.Modality == "CT"]
    assert len(rtstructs) == 1 and len(cts) == 134, (rtstructs, len(cts))
    series = {h.SeriesInstanceUID for h in cts}
    assert len(series) == 1
    uid = series.pop()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    image = reader.Execute()  # HU: SimpleITK applies RescaleSlope / RescaleIntercept
    return SimpleNamespace(rtstruct=rtstructs[0], props=ImageProperties.of(image), series_uid=uid,
                           frame_of_reference=str(cts[0].FrameOfReferenceUID),
                           ct=sitk.GetArrayFromImage(image).transpose(2, 1, 0), struct=read_rtstruct(rtstructs[0]))


def _raw_polygons(path: Path, roi_name: str) -> dict[float, list[np.ndarray]]:
    """The ROI's CLOSED_PLANAR ContourData straight from pydicom, ``(N, 3)`` LPS mm, grouped by z (mm)."""
    ds = pydicom.dcmread(path)
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    contours = next(rc.ContourSequence for rc in ds.ROIContourSequence if int(rc.ReferencedROINumber) == number)
    by_z: dict[float, list[np.ndarray]] = defaultdict(list)
    for c in contours:
        if c.ContourGeometricType == "CLOSED_PLANAR":
            p = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
            by_z[round(float(p[0, 2]), 2)].append(p)
    return by_z


def _polygon_area(p: np.ndarray) -> float:
    """Area (mm^2) of a planar polygon in its own plane: half the norm of the summed cross products (shoelace)."""
    return 0.5 * float(np.linalg.norm(np.cross(p, np.roll(p, -1, axis=0)).sum(axis=0)))


def _inside(point: np.ndarray, poly: np.ndarray) -> bool:
    """Crossing-number test in the x-y plane (the test's own, for nesting depth only)."""
    x, y = point[0], point[1]
    xs, ys = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(xs, -1), np.roll(ys, -1)
    crosses = ((ys > y) != (yn > y)) & (x < xs + (y - ys) * (xn - xs) / np.where(yn == ys, 1.0, yn - ys))
    return bool(crosses.sum() % 2)


def _shoelace_ml(by_z: dict[float, list[np.ndarray]], slice_mm: float) -> float:
    """Even-odd area per slice (each polygon's area signed by its nesting depth) x slice spacing, in mL."""
    total = 0.0
    for polys in by_z.values():
        for a, p in enumerate(polys):
            depth = sum(_inside(p[0], q) for b, q in enumerate(polys) if b != a)
            total += (-1) ** depth * _polygon_area(p)
    return total * slice_mm / 1000.0


def _slice_grid(props: ImageProperties, k: int) -> ImageProperties:
    """The one-slice grid of slice ``k``."""
    origin = props.lps_affine @ np.array([0.0, 0.0, k, 1.0])
    return ImageProperties(shape=(*props.shape[:2], 1), spacing=props.spacing, origin=tuple(origin[:3]),
                           direction=props.direction)


def test_lung1_header(lung1):
    s: RTStruct = lung1.struct
    assert s.frame_of_reference_uids == (lung1.frame_of_reference,) and s.series_uids == (lung1.series_uid,)
    assert {"GTV-1", "PTV-1", "CTV-1", "Lung L", "Lung R", "Spinal cord"} <= set(s.names)
    assert len(s.roi("GTV-1").polygons) == 21
    assert s.roi("Isocenter 6").polygons == [] and s.roi("Isocenter 6").contours[0].geometric_type == "POINT"


def test_lung1_gtv_volume_matches_the_shoelace_estimate(lung1):
    props = lung1.props
    start = time.perf_counter()
    lab, matched = label_map(lung1.rtstruct, props, [("gtv", "GTV-1")], lung1.frame_of_reference, lung1.series_uid)
    seconds = time.perf_counter() - start
    assert matched == {"gtv": ["GTV-1"]}
    raster_ml = int((lab == 1).sum()) * float(np.prod(props.spacing)) / 1000.0
    by_z = _raw_polygons(lung1.rtstruct, "GTV-1")
    assert len(by_z) == 21 and all(len(p) == 1 for p in by_z.values())
    shoelace_ml = _shoelace_ml(by_z, slice_mm=props.spacing[2])
    assert abs(raster_ml - shoelace_ml) <= 0.05 * shoelace_ml, \
        f"GTV-1: raster {raster_ml:.2f} mL vs shoelace {shoelace_ml:.2f} mL (label_map {seconds:.2f} s)"
    print(f"GTV-1: raster {raster_ml:.2f} mL, shoelace {shoelace_ml:.2f} mL, label_map {seconds:.2f} s")


def test_lung1_lungs_agree_with_lung_mask(lung1):
    """Lung L + Lung R against the project's threshold lung mask, each side against its side (an L/R flip would
    fail). On every second voxel in-plane (a grid whose centres are a subset of the CT's) to keep this to seconds:
    measured Dice 0.959 on the full grid and on this one (left 0.957, right 0.960)."""
    p = lung1.props
    sub = ImageProperties(shape=(p.shape[0] // 2, p.shape[1] // 2, p.shape[2]),
                          spacing=(2 * p.spacing[0], 2 * p.spacing[1], p.spacing[2]), origin=p.origin,
                          direction=p.direction)
    lab, matched = label_map(lung1.struct, sub, [("right", "lung r"), ("left", "lung l")], lung1.frame_of_reference,
                             lung1.series_uid)
    assert matched == {"right": ["Lung R"], "left": ["Lung L"]}
    auto = lung_mask(lung1.ct[::2, ::2, :], sub.affine)  # 1 right lung, 2 left lung

    def dice(a, b):
        return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())

    both, right, left = dice(lab > 0, auto > 0), dice(lab == 1, auto == 1), dice(lab == 2, auto == 2)
    print(f"lungs Dice vs lung_mask: both {both:.4f}, right {right:.4f}, left {left:.4f}")
    assert both >= 0.95 and right >= 0.95 and left >= 0.95, (both, right, left)


def test_lung1_slices_with_several_polygons(lung1, caplog):
    """Lung L's extra polygons are disjoint islands (even-odd = union there); Lung R has one polygon inside another
    (z = -393.5 mm), a hole the fill honours; every polygon of '1,SUV_primair' is stored twice, and the repeats
    are dropped rather than cancelling the ROI."""
    props, path = lung1.props, lung1.rtstruct
    inverse = np.linalg.inv(props.lps_affine)

    def slice_of(polys: list[np.ndarray]) -> int:
        return int(round((inverse @ [*polys[0][0], 1.0])[2]))

    lung_l = {z: ps for z, ps in _raw_polygons(path, "Lung L").items() if len(ps) > 1}
    assert len(lung_l) == 24
    for z, polys in lung_l.items():
        grid = _slice_grid(props, slice_of(polys))
        fills = [rasterise([q], grid) for q in polys]
        even_odd = rasterise(polys, grid)
        assert sum(int(f.sum()) for f in fills) == int(np.logical_or.reduce(fills).sum()), f"z={z}: overlap"
        np.testing.assert_array_equal(even_odd, np.logical_or.reduce(fills))
    polys = _raw_polygons(path, "Lung R")[-393.5]
    nested = [(a, b) for a, p in enumerate(polys) for b, q in enumerate(polys) if a != b and _inside(p[0], q)]
    assert len(polys) == 3 and len(nested) == 1, nested  # one hole in one outline, and a separate island
    grid = _slice_grid(props, slice_of(polys))
    fills = [rasterise([q], grid) for q in polys]
    even_odd, union, hole = rasterise(polys, grid), np.logical_or.reduce(fills), fills[nested[0][0]]
    assert int(hole.sum()) > 0 and not np.array_equal(even_odd, union)
    np.testing.assert_array_equal(even_odd, union & ~hole)
    print(f"Lung R z=-393.5: hole of {int(hole.sum())} voxel(s) in {int(union.sum())}")
    suv = lung1.struct.roi("1,SUV_primair").polygons
    assert len(suv) == 170
    with caplog.at_level(logging.WARNING, logger="monai_pipeline.io.rtstruct"):
        lab, _ = label_map(lung1.struct, props, [("suv", "1,SUV_primair")])
    assert "85 polygon(s) repeat an earlier one" in caplog.text
    raster_ml = int(lab.sum()) * float(np.prod(props.spacing)) / 1000.0
    unique = {z: list({p.round(3).tobytes(): p for p in ps}.values()) for z, ps in
              _raw_polygons(path, "1,SUV_primair").items()}
    shoelace_ml = _shoelace_ml(unique, props.spacing[2])
    assert abs(raster_ml - shoelace_ml) <= 0.05 * shoelace_ml, (raster_ml, shoelace_ml)
