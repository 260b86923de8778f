"""Delineation from a point (``monai-pipeline delineate``), markups in and out, RECIST measurements.

The end-to-end tests run the nodule bundle's shipped model (``bundles/lung_nodule_ct_delineation/models``) on
real LIDC-IDRI crops, on a crop pasted into a large synthetic chest (volume file and DICOM series), and check
what is written: the mask on the CT's grid, the Slicer segmentation, the RECIST lines, the table, the DICOM SEG.
The growth of the crop is tested on its own with a segmenter that thresholds the crop (a sphere far larger
than the first crop).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, VENV_BIN, run_cmd, shared
from monai_pipeline.errors import DataError
from monai_pipeline.io.images import ImageProperties, read_image, read_properties, write_image

NODULE_MODELS = ROOT / "bundles" / "lung_nodule_ct_delineation" / "models"
CLI = str(VENV_BIN / "monai-pipeline")
LIDC = ("LIDC-IDRI-0001_1", "LIDC-IDRI-0004_1")  # 0001_1: a 23 mm nodule; 0004_1: a test-split patient


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _centroid(mask: np.ndarray, props: ImageProperties) -> np.ndarray:
    return (props.lps_affine @ np.append(np.argwhere(mask > 0).mean(axis=0), 1.0))[:3]


def _point(lps) -> str:
    return ",".join(f"{v:.4f}" for v in lps)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    if not (NODULE_MODELS / "model.pt").is_file():
        pytest.fail(f"{NODULE_MODELS}/model.pt is missing: the nodule bundle ships its weights")
    return NODULE_MODELS


def _lidc(case: str) -> tuple[Path, Path]:
    root = shared("lidc_nodules")
    return root / f"{case}_image.nii.gz", root / f"{case}_nodule_mask.nii.gz"


# ------------------------------------------------------------------------------------------- markups
def test_points_from_markups_lps_and_ras_and_numbers(tmp_path):
    from monai_pipeline.app.delineate import load_points
    from monai_pipeline.io.markups import write_points

    lps = np.array([[10.0, -20.0, 30.5], [-4.0, 6.0, -8.0]])
    for system in ("LPS", "RAS"):
        f = write_points(tmp_path / f"p_{system}.mrk.json", lps, ["a", "b"], system)
        stored = np.array([cp["position"] for cp in json.loads(f.read_text())["markups"][0]["controlPoints"]])
        np.testing.assert_allclose(stored, lps if system == "LPS" else lps * [-1, -1, 1])
        got = load_points(f)
        np.testing.assert_allclose(got.lps, lps)
        assert got.labels == ("a", "b")
    np.testing.assert_allclose(load_points(["10,-20,30.5"], "lps").lps, lps[:1])
    np.testing.assert_allclose(load_points(["-10,20,30.5"], "RAS").lps, lps[:1])  # RAS -> LPS: x and y negated


@pytest.mark.parametrize("doc, fault", [
    ({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": []}]}, "no defined point"),
    ({"markups": [{"type": "Curve", "coordinateSystem": "LPS",
                   "controlPoints": [{"position": [0, 0, 0]}]}]}, "type 'Curve'"),
    ({"markups": [{"type": "Plane", "coordinateSystem": "RAS",
                   "controlPoints": [{"position": [0, 0, 0]}]}]}, "type 'Plane'"),
    ({"markups": [{"type": "Fiducial", "controlPoints": [{"position": [0, 0, 0]}]}]}, "no coordinate system stated"),
    ({"markups": [{"type": "Fiducial", "coordinateSystem": "IJK",
                   "controlPoints": [{"position": [0, 0, 0]}]}]}, "is not LPS or RAS"),
    ({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS",
                   "controlPoints": [{"position": [0, "x", 0]}]}]}, "no numeric 'position'"),
    ({"points": []}, "no 'markups' list"),
])
def test_bad_markups_are_named(tmp_path, doc, fault):
    from monai_pipeline.io.markups import read_points

    f = tmp_path / "bad.mrk.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=str(f)) as err:
        read_points(f)
    assert fault in str(err.value)


def test_numbers_need_a_coordinate_system():
    from monai_pipeline.app.delineate import load_points

    with pytest.raises(DataError, match="no coordinate system stated"):
        load_points(["1,2,3"])
    with pytest.raises(DataError, match="three numbers"):
        load_points(["1,2"], "LPS")


# ---------------------------------------------------------------------------------------- measurements
def test_recist_axes_of_a_rotated_ellipse():
    """A 20 x 10 mm ellipse rotated 28.6 degrees on 0.5 mm pixels: long and short axes within a pixel, at right
    angles, on the slice; volume to 1 %; lesion_table's diameter is the same long axis."""
    from monai_pipeline.evaluation.lesions import lesion_table
    from monai_pipeline.evaluation.measure import lesion_measures

    sp = 0.5
    i, j, k = np.meshgrid(np.arange(80), np.arange(80), np.arange(5), indexing="ij")
    x, y = (i - 40) * sp, (j - 40) * sp
    c, s = np.cos(0.5), np.sin(0.5)
    m = ((c * x + s * y) / 10) ** 2 + ((-s * x + c * y) / 5) ** 2 <= 1
    m[..., 0] = False
    m[:, :, 1] &= ((c * x + s * y) / 8)[:, :, 1] ** 2 + ((-s * x + c * y) / 4)[:, :, 1] ** 2 <= 1  # a smaller slice
    aff = np.diag([sp, sp, 2.0, 1.0])
    r = lesion_measures(m, aff)
    assert 20 - 2 * sp <= r["long_mm"] <= 20 and 10 - 2 * sp <= r["short_mm"] <= 10
    assert r["slice"] in (2, 3, 4)
    long_dir = np.subtract(*r["long_points"])
    short_dir = np.subtract(*r["short_points"])
    assert abs(np.dot(long_dir, short_dir)) / (np.linalg.norm(long_dir) * np.linalg.norm(short_dir)) < 0.05
    assert abs(long_dir[0] / np.linalg.norm(long_dir)) == pytest.approx(abs(c), abs=0.05)  # along the rotated axis
    assert {p[2] for p in r["long_points"] + r["short_points"]} == {r["slice"] * 2.0}
    assert r["volume_ml"] == pytest.approx(m.sum() * sp * sp * 2.0 / 1000, rel=1e-6)
    assert lesion_table(m, aff)[0]["longest_axial_diameter_mm"] == r["long_mm"]


# -------------------------------------------------------------------------------------- crop growth
def test_crop_grows_until_the_lesion_is_inside_and_stops_at_the_cap(tmp_path):
    """A 70 mm sphere: the first 48 mm crop cuts it, the crop grows until the sphere is whole; with a 50 mm cap it
    stops there, flagged. The segmenter thresholds the crop it is given (the growth is what is tested)."""
    from monai_pipeline.app.delineate import _delineate_one

    sp = np.array([1.5, 1.5, 2.0])
    shape = (140, 140, 90)
    grid = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, sp)], indexing="ij")
    ball = sum(g ** 2 for g in grid) <= 35.0 ** 2
    ct = np.where(ball, 40.0, -850.0).astype(np.float32)
    props = ImageProperties(shape, tuple(sp), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))

    def threshold(path):
        arr, _ = read_image(path)
        return (arr > -300).astype(np.uint8)

    centre = np.asarray(shape, float) / 2
    comp, box, how = _delineate_one(ct, props, centre, threshold, tmp_path, 48.0, 16.0, 150.0)
    full = np.zeros(shape, bool)
    full[box] = comp
    assert how["grew"] >= 1 and not how["capped"]
    assert np.array_equal(full, ball)
    comp, box, how = _delineate_one(ct, props, centre, threshold, tmp_path, 48.0, 16.0, 50.0)
    assert how["capped"] and max(how["crop_mm"]) <= 50.0
    assert comp.sum() < ball.sum()


# ----------------------------------------------------------------------------------- with the model
def test_lidc_crop_from_its_centre_matches_the_crop_benchmark(model_dir, tmp_path):
    """The point at the nodule's centre on LIDC crops gives the bundle's own crop result (the crop is smaller than
    the first delineation crop, so the whole crop is segmented and the component at the point kept)."""
    from monai_pipeline import delineate, segment

    for case in LIDC:
        image, label = _lidc(case)
        ref, props = read_image(label)
        res = delineate(image, [_point(_centroid(ref, props))], tmp_path / "dl", coordinate_system="LPS",
                        model_dir=model_dir)
        pred, pprops = read_image(res.folder / res.files["mask"])
        assert pprops.same_grid(props)
        crop = segment([image], model_dir, tmp_path / "seg", bundle="nodule", dicom_seg=False)
        whole, _ = read_image(crop.masks[0])
        assert _dice(pred, ref) >= _dice(whole, ref) - 0.02, case
        assert _dice(pred, ref) > 0.6, case
        assert res.lesions[0]["status"] == "ok"


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> dict:
    """LIDC-IDRI-0001_1 pasted into a 300 x 240 x 60 mm synthetic chest (body, two lungs at -850 HU, air around,
    a table below the body), on the crop's own spacing and direction; written as NRRD and as a DICOM series."""
    from monai_pipeline.io.dicom import write_series

    root = tmp_path_factory.mktemp("chest")
    ct, props = read_image(_lidc(LIDC[0])[0])
    ref, _ = read_image(_lidc(LIDC[0])[1])
    sp = np.asarray(props.spacing)
    shape = np.round(np.array([300.0, 240.0, 30.0]) / sp).astype(int)
    i, j = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:2]], indexing="ij")
    big = np.full(shape, -1000.0, np.float32)
    body = (i / 0.9) ** 2 + (j / 0.75) ** 2 <= 1
    lungs = (((np.abs(i) - 0.45) / 0.33) ** 2 + (j / 0.55) ** 2 <= 1) & body
    big[body] = 40.0
    big[lungs] = -850.0
    big[:, j[0] > 0.9] = 200.0  # the table, below the body (posterior: +j in LPS here)
    big += np.random.default_rng(0).normal(0, 10, big.shape).astype(np.float32)
    lo = np.array([int(0.7 * shape[0]) - ct.shape[0] // 2, shape[1] // 2 - ct.shape[1] // 2, shape[2] // 2 - ct.shape[2] // 2])
    sl = tuple(slice(a, a + n) for a, n in zip(lo, ct.shape))
    big[sl] = ct
    truth = np.zeros(shape, np.uint8)
    truth[sl] = ref > 0
    origin = (props.lps_affine @ np.append(-lo.astype(float), 1.0))[:3]
    bprops = ImageProperties(tuple(int(s) for s in shape), props.spacing, tuple(origin), props.direction, "32-bit float")
    nrrd = write_image(big, bprops, root / "chest.nrrd")
    dicom = write_series(np.rint(big).astype(np.int16), bprops, root / "chest_dicom")
    return {"nrrd": nrrd, "dicom": Path(dicom[0]).parent, "truth": truth, "props": bprops, "ct": big,
            "point": _centroid(truth, bprops), "table": (bprops.lps_affine @ np.r_[shape[0] // 2, shape[1] - 2, lo[2], 1.0])[:3]}


def test_whole_ct_point_gives_mask_table_slicer_files_on_the_ct_grid(model_dir, chest, tmp_path):
    from monai_pipeline import delineate
    from monai_pipeline.io.markups import write_points
    import slicerio

    pts = write_points(tmp_path / "points.mrk.json", chest["point"][None], ["clicked"], "RAS")
    res = delineate(chest["nrrd"], pts, tmp_path / "out", model_dir=model_dir)
    folder = res.folder
    assert folder == (tmp_path / "out" / "chest").resolve()
    pred, pprops = read_image(folder / res.files["mask"])
    assert pprops.same_grid(chest["props"]) and pred.shape == chest["ct"].shape
    # the nodule is found and kept (0.59 here; crops pasted into a chest score 0.55 on average in the
    # delineation benchmark, the crop alone about 0.8: the context the model never saw costs it)
    assert _dice(pred, chest["truth"]) > 0.45
    lesion = res.lesions[0]
    assert lesion["status"] == "ok" and lesion["point_label"] == "clicked"
    assert lesion["volume_ml"] == pytest.approx((pred == 1).sum() * np.prod(chest["props"].spacing) / 1000, rel=1e-3)
    np.testing.assert_allclose(lesion["centroid_lps_mm"], _centroid(pred == 1, pprops), atol=1e-2)  # of the mask, in LPS
    assert np.linalg.norm(np.subtract(lesion["centroid_lps_mm"], chest["point"])) < 15.0  # on the clicked nodule
    assert lesion["centroid_ras_mm"] == pytest.approx(np.asarray(lesion["centroid_lps_mm"]) * [-1, -1, 1])
    seg = slicerio.read_segmentation(str(folder / res.files["segmentation"]))
    assert [s["name"] for s in seg["segments"]] == ["nodule 1"]
    assert np.array_equal(slicerio.segment_mask(seg, "nodule 1"), pred == 1)
    long = json.loads((folder / res.files["markups"][1]["long_axis"]).read_text())["markups"][0]
    assert long["type"] == "Line" and long["coordinateSystem"] == "LPS"
    ends = np.array([cp["position"] for cp in long["controlPoints"]])
    assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(lesion["long_mm"], abs=1e-3)
    assert lesion["short_mm"] <= lesion["long_mm"]
    rows = list(csv.DictReader(open(folder / "lesions.csv")))
    assert rows[0]["status"] == "ok" and float(rows[0]["volume_ml"]) == pytest.approx(lesion["volume_ml"])
    manifest = json.loads((folder / "delineation.json").read_text())
    assert manifest["points"]["source"].endswith("points.mrk.json") and manifest["lesions"][0]["lesion"] == 1


def test_dicom_series_gives_the_same_mask_and_a_dicom_seg(model_dir, chest, tmp_path):
    from monai_pipeline import delineate
    from monai_pipeline.io.dicom_seg import read_dicom_seg

    point = [_point(chest["point"])]
    a = delineate(chest["nrrd"], point, tmp_path / "a", coordinate_system="LPS", model_dir=model_dir)
    b = delineate(chest["dicom"], point, tmp_path / "b", coordinate_system="LPS", model_dir=model_dir)
    ma, _ = read_image(a.folder / a.files["mask"])
    mb, pb = read_image(b.folder / b.files["mask"])
    assert pb.same_grid(read_properties(chest["dicom"]))
    assert _dice(ma, mb) >= 0.99
    assert np.array_equal(read_dicom_seg(b.folder / b.files["dicom_seg"], pb, chest["dicom"]), mb)
    assert "LIDC" not in b.folder.name and b.folder.name.startswith("dcm-")


@pytest.mark.parametrize("where, fault", [("outside", "outside the image"), ("air", "in air or lung"),
                                          ("table", "outside the body")])
def test_bad_points_name_the_fault_and_write_nothing(model_dir, chest, tmp_path, where, fault):
    from monai_pipeline import delineate

    p = {"outside": chest["point"] + [0, 0, 500.0], "table": chest["table"],
         "air": (chest["props"].lps_affine @ np.r_[2, 2, 5, 1.0])[:3]}[where]
    with pytest.raises(DataError, match=fault):
        delineate(chest["nrrd"], [_point(chest["point"]), _point(p)], tmp_path / "out", coordinate_system="LPS",
                  model_dir=model_dir)
    assert not (tmp_path / "out").exists()


def test_cli_exit_2_one_line_and_a_good_run(model_dir, chest, tmp_path):
    bad = run_cmd([CLI, "delineate", "--image", str(chest["nrrd"]), f"--points={_point(chest['point'])}",
                   "--out", str(tmp_path / "o")], cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "coordinate system" in bad.stderr
    curve = tmp_path / "curve.mrk.json"
    curve.write_text(json.dumps({"markups": [{"type": "Curve", "coordinateSystem": "LPS",
                                              "controlPoints": [{"position": [0, 0, 0]}]}]}))
    bad = run_cmd([CLI, "delineate", "--image", str(chest["nrrd"]), "--points", str(curve), "--out",
                   str(tmp_path / "o")], cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "Curve" in bad.stderr and not (tmp_path / "o").exists()
    ras = chest["point"] * [-1, -1, 1]
    good = run_cmd([CLI, "delineate", "--image", str(chest["nrrd"]), f"--points={_point(ras)}",
                    "--coordinate-system", "ras", "--out", str(tmp_path / "o"), "--model-dir", str(model_dir)],
                   cwd=tmp_path)
    assert "nodule 1 (P-1): ok" in good.stdout and (tmp_path / "o" / "chest" / "lesions.csv").is_file()
