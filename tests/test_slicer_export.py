"""``export-slicer``: Slicer folders (mask NIfTI, .seg.nrrd, colour table, LPS meshes, loader script).

Geometry is checked with SimpleITK and pynrrd on an oblique, flipped, anisotropic phantom and on 3D
Slicer's own ``CTChest4.nrrd`` with the lungs of its Slicer-written ``Segmentation.seg.nrrd``, whose header
is also the reference for the fields and value formats of ours. Bad input goes through the command line.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from unittest import mock

import nibabel as nib
import nrrd
import numpy as np
import pytest
import pyvista as pv
import SimpleITK as sitk
import slicerio

from conftest import run_cmd, shared
from monai_pipeline.app import cli
from monai_pipeline.slicer import export, segmentation
from monai_pipeline.errors import DataError
from monai_pipeline.evaluation.lesions import lesion_table
from monai_pipeline.slicer.export import export_slicer
from monai_pipeline.data.validate import segment_names as parse_segment_names

SHAPE, SPACING, ORIGIN = (40, 32, 20), (0.8, 1.1, 2.5), (-12.3, 45.6, -78.9)
LESIONS = [((12, 10, 7), (5, 4, 3)), ((28, 22, 13), (4, 3, 2))]  # (centre, radii) in voxels; label = index + 1


def _direction() -> np.ndarray:
    """Oblique, left-handed direction: rotations about z (30 deg) and x (20 deg), then k flipped."""
    a, b = np.radians(30), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx @ np.diag([1.0, 1.0, -1.0])


def _write(arr: np.ndarray, path: Path, like: sitk.Image | None = None, **geometry) -> Path:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    if like is not None:
        img.CopyInformation(like)
    img.SetSpacing(geometry.get("spacing", img.GetSpacing()))
    img.SetOrigin(geometry.get("origin", img.GetOrigin()))
    img.SetDirection(geometry.get("direction", img.GetDirection()))
    sitk.WriteImage(img, str(path))
    return path


def _lesions(shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    for value, (centre, radii) in enumerate(LESIONS, start=1):
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        labels[inside] = value
    return labels


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """Image (NIfTI, oblique + flipped, anisotropic) and masks: two lesions as labels 1/2 and as binary."""
    root = tmp_path_factory.mktemp("phantom")
    rng = np.random.default_rng(0)
    ct = (rng.normal(-700, 30, SHAPE) + 900 * (_lesions() > 0)).astype(np.int16)
    image = _write(ct, root / "ph_001.nii.gz", spacing=SPACING, origin=ORIGIN, direction=_direction().ravel())
    ref = sitk.ReadImage(str(image))
    labels = _lesions()
    multi = _write(labels, root / "ph_001_seg.nii.gz", like=ref)
    binary = _write((labels > 0).astype(np.uint8), root / "ph_001_bin.nii.gz", like=ref)
    return {"root": root, "image": image, "multi": multi, "binary": binary, "labels": labels, "ref": ref}


@pytest.fixture(scope="module")
def multi_export(phantom, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slicer_multi")
    return export_slicer(phantom["image"], phantom["multi"], out, names={1: "tumor", 2: "nodule"})


def _assert_same_geometry(img: sitk.Image, ref: sitk.Image) -> None:
    assert img.GetSize() == ref.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)


def _ijk_to_lps(ref: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing())
    m[:3, 3] = ref.GetOrigin()
    return m


# ---------------------------------------------------------------------------------------- the folder
def test_folder_holds_every_file(multi_export):
    names = sorted(p.name for p in multi_export.iterdir())
    assert names == sorted(["ph_001_seg.nii.gz", "ph_001.seg.nrrd", "ph_001_colors.ctbl", "load_in_slicer.py",
                            "README.txt", "export_manifest.json", "ph_001_1_tumor.vtk", "ph_001_1_tumor.stl",
                            "ph_001_2_nodule.vtk", "ph_001_2_nodule.stl"])
    assert not [p for p in multi_export.parent.iterdir() if p.name.startswith(".tmp") or p.name.startswith(".old")]
    readme = (multi_export / "README.txt").read_text()
    assert "LPS" in readme and "ph_001_1_tumor.stl" in readme
    manifest = json.loads((multi_export / "export_manifest.json").read_text())
    assert manifest["mesh_coordinate_system"] == "LPS"
    assert [(s["label"], s["name"]) for s in manifest["segments"]] == [(1, "tumor"), (2, "nodule")]


def test_seg_nrrd_reads_back_with_names_colours_labels(multi_export, phantom):
    seg = slicerio.read_segmentation(str(multi_export / "ph_001.seg.nrrd"))
    assert [(s["name"], s["labelValue"], s["layer"]) for s in seg["segments"]] == [("tumor", 1, 0), ("nodule", 2, 0)]
    tumour, nodule = seg["segments"]
    np.testing.assert_allclose(tumour["color"], segmentation._KNOWN_SEGMENTS["tumor"][0], atol=1e-6)
    np.testing.assert_allclose(nodule["color"], segmentation._KNOWN_SEGMENTS["nodule"][0], atol=1e-6)
    assert tumour["terminology"]["type"][1] == "108369006"  # SNOMED CT neoplasm
    for value, name in ((1, "tumor"), (2, "nodule")):
        np.testing.assert_array_equal(slicerio.segment_mask(seg, name), phantom["labels"] == value)
    np.testing.assert_allclose(seg["ijkToLPS"], _ijk_to_lps(phantom["ref"]), atol=1e-6)


def test_geometry_equals_the_image(multi_export, phantom):
    ref = phantom["ref"]
    seg = sitk.ReadImage(str(multi_export / "ph_001.seg.nrrd"))
    _assert_same_geometry(seg, ref)
    mask = sitk.ReadImage(str(multi_export / "ph_001_seg.nii.gz"))
    _assert_same_geometry(mask, ref)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask).T, phantom["labels"])
    np.testing.assert_allclose(nib.load(str(multi_export / "ph_001_seg.nii.gz")).affine,
                               nib.load(str(phantom["image"])).affine, atol=1e-4)
    _, header = nrrd.read(str(multi_export / "ph_001.seg.nrrd"))
    assert header["space"] == "left-posterior-superior"
    m = _ijk_to_lps(ref)
    np.testing.assert_allclose(header["space directions"], m[:3, :3].T, atol=1e-6)
    np.testing.assert_allclose(header["space origin"], m[:3, 3], atol=1e-6)


def test_extent_is_the_layer_extent_holding_every_segment(multi_export, phantom):
    """Slicer reads a layer with its first segment's extent: every segment carries the layer's extent."""
    _, header = nrrd.read(str(multi_export / "ph_001.seg.nrrd"))
    nz = np.argwhere(phantom["labels"] > 0)
    expected = " ".join(f"{lo} {hi}" for lo, hi in zip(nz.min(0), nz.max(0)))
    assert header["Segment0_Extent"] == header["Segment1_Extent"] == expected


def test_colour_table_matches_segments(multi_export):
    lines = [ln for ln in (multi_export / "ph_001_colors.ctbl").read_text().splitlines()]
    assert lines[0].startswith("# Color table file")
    rows = [ln.split() for ln in lines if not ln.startswith("#")]
    assert all(len(r) == 6 for r in rows)
    seg = slicerio.read_segmentation(str(multi_export / "ph_001.seg.nrrd"), skip_voxels=True)
    table = {int(r[0]): (r[1], [int(v) for v in r[2:5]], int(r[5])) for r in rows}
    assert table[0] == ("background", [0, 0, 0], 0)
    for s in seg["segments"]:
        name, rgb, alpha = table[s["labelValue"]]
        assert name == s["name"].replace(" ", "_") and alpha == 255
        assert rgb == [round(c * 255) for c in s["color"]]
    assert len(table) == len(seg["segments"]) + 1


# --------------------------------------------------------------------------------------------- meshes
@pytest.mark.parametrize("ext", [".stl", ".vtk"])
def test_meshes_lie_on_their_lesions_in_lps(multi_export, phantom, ext):
    """Mesh bounds (LPS) within the lesion's world box (lesion_table, RAS -> LPS) +- one voxel; centre on it."""
    ras = nib.load(str(multi_export / "ph_001_seg.nii.gz")).affine
    voxel = max(SPACING)
    for value, name in ((1, "tumor"), (2, "nodule")):
        path = multi_export / f"ph_001_{value}_{name}{ext}"
        assert b"SPACE=LPS" in path.read_bytes()[:300]
        mesh = pv.read(str(path))
        assert mesh.n_cells > 50 and mesh.is_all_triangles
        (lesion,) = lesion_table(phantom["labels"] == value, ras)
        lo_ras, hi_ras = np.array(lesion["bbox_ras_mm"])
        flip = np.array([-1.0, -1.0, 1.0])
        lo, hi = np.minimum(lo_ras * flip, hi_ras * flip), np.maximum(lo_ras * flip, hi_ras * flip)
        b = np.array(mesh.bounds).reshape(3, 2)
        assert np.all(b[:, 0] >= lo - voxel) and np.all(b[:, 1] <= hi + voxel), (b, lo, hi)
        centre = np.array(lesion["centroid_ras_mm"]) * flip
        assert np.linalg.norm(np.asarray(mesh.center_of_mass()) - centre) < voxel


def test_meshes_are_closed_with_outward_normals(multi_export):
    """Closed surfaces, normals outward although the image's direction matrix is left-handed."""
    mesh = pv.read(str(multi_export / "ph_001_1_tumor.vtk"))
    assert mesh.n_open_edges == 0
    normals = mesh.compute_normals(auto_orient_normals=False, consistent_normals=False).point_data["Normals"]
    outward = np.einsum("ij,ij->i", normals, mesh.points - mesh.center_of_mass())
    assert (outward > 0).mean() > 0.95
    assert mesh.volume > 0


def test_binary_mask_defaults_to_tumor(phantom, tmp_path):
    folder = export_slicer(phantom["image"], phantom["binary"], tmp_path, case_id="bin")
    seg = slicerio.read_segmentation(str(folder / "bin.seg.nrrd"))
    assert [(s["name"], s["labelValue"]) for s in seg["segments"]] == [("tumor", 1)]
    assert (folder / "bin_1_tumor.stl").is_file()
    assert pv.read(str(folder / "bin_1_tumor.stl")).split_bodies().n_blocks == 2  # the two lesions


# ---------------------------------------------------------------------------- header as Slicer writes it
_SEGMENT_FORMATS = {
    "ID": r"\S+", "Name": r".+", "Color": r"[0-9.e-]+ [0-9.e-]+ [0-9.e-]+", "ColorAutoGenerated": r"[01]",
    "Extent": r"-?\d+ -?\d+ -?\d+ -?\d+ -?\d+ -?\d+", "LabelValue": r"\d+", "Layer": r"\d+",
    "NameAutoGenerated": r"[01]", "Tags": r"(.*:.*\|)+",
}


def _segment_fields(header: dict) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        m = re.match(r"Segment(\d+)_(.+)", key)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return out


def _conversion_parameters(text: str) -> dict[str, str]:
    items = [p.split("|") for p in text.split("&") if p.strip()]
    assert all(len(p) == 3 for p in items), "each conversion parameter is name|value|description"
    return {p[0]: p[1] for p in items}


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> dict:
    """Slicer's CTChest4.nrrd and the lungs (labels 5, 6) of its Slicer-written segmentation, exported."""
    image = shared("ct_chest_slicerio", "CTChest4.nrrd")
    reference = shared("ct_chest_slicerio", "Segmentation.seg.nrrd")
    ref_seg = slicerio.read_segmentation(str(reference))
    lungs = (slicerio.segment_mask(ref_seg, "right lung").astype(np.uint8)
             + 2 * slicerio.segment_mask(ref_seg, "left lung").astype(np.uint8))
    root = tmp_path_factory.mktemp("chest")
    mask = _write(lungs, root / "CTChest4_seg.nrrd", like=sitk.ReadImage(str(image)))
    folder = export_slicer(image, mask, root / "out", names=["1=right lung", "2=left lung"])
    return {"image": image, "reference": reference, "folder": folder, "lungs": lungs}


def test_header_fields_and_formats_match_slicer(chest):
    ours = nrrd.read_header(str(chest["folder"] / "CTChest4.seg.nrrd"))
    theirs = nrrd.read_header(str(chest["reference"]))
    for key in ("space", "dimension", "kinds", "encoding"):
        assert ours[key] == theirs[key], key
    assert {k for k in ours if k.startswith("Segmentation_")} == {k for k in theirs if k.startswith("Segmentation_")}
    ref_keys = set(_segment_fields(theirs)[0])
    assert set(_SEGMENT_FORMATS) == ref_keys  # the reference file itself follows the formats checked here
    for header in (theirs, ours):
        for fields in _segment_fields(header).values():
            assert set(fields) == ref_keys
            for key, pattern in _SEGMENT_FORMATS.items():
                assert re.fullmatch(pattern, fields[key]), (key, fields[key])
    for key in ("Segmentation_ContainedRepresentationNames", "Segmentation_MasterRepresentation",
                "Segmentation_ReferenceImageExtentOffset"):
        assert ours[key] == theirs[key], key
    assert "Segmentation.Status:" in _segment_fields(ours)[0]["Tags"]
    assert "TerminologyEntry:" in _segment_fields(ours)[0]["Tags"]
    # same reference geometry (IJK -> RAS matrix and extent) as Slicer wrote for this image
    ref_geo = _conversion_parameters(theirs["Segmentation_ConversionParameters"])["Reference image geometry"]
    our_geo = _conversion_parameters(ours["Segmentation_ConversionParameters"])["Reference image geometry"]
    np.testing.assert_allclose([float(v) for v in our_geo.split(";") if v], [float(v) for v in ref_geo.split(";") if v],
                               atol=1e-6)


def test_real_case_round_trip_geometry(chest):
    ref_img = sitk.ReadImage(str(chest["image"]))
    for name in ("CTChest4.seg.nrrd", "CTChest4_seg.nii.gz"):
        _assert_same_geometry(sitk.ReadImage(str(chest["folder"] / name)), ref_img)
    _assert_same_geometry(sitk.ReadImage(str(chest["reference"])), ref_img)  # and Slicer's own file agrees
    ours = nrrd.read_header(str(chest["folder"] / "CTChest4.seg.nrrd"))
    theirs = nrrd.read_header(str(chest["reference"]))
    np.testing.assert_allclose(ours["space directions"], theirs["space directions"], atol=1e-6)
    np.testing.assert_allclose(ours["space origin"], theirs["space origin"], atol=1e-6)
    seg = slicerio.read_segmentation(str(chest["folder"] / "CTChest4.seg.nrrd"))
    ref = slicerio.read_segmentation(str(chest["reference"]))
    for name in ("right lung", "left lung"):
        np.testing.assert_array_equal(slicerio.segment_mask(seg, name), slicerio.segment_mask(ref, name))
    # the right lung lies on the patient's right: negative L (LPS x) for its mesh, as for its voxels
    right, left = (pv.read(str(chest["folder"] / f)) for f in ("CTChest4_1_right_lung.vtk", "CTChest4_2_left_lung.vtk"))
    assert right.center[0] < left.center[0]
    manifest = json.loads((chest["folder"] / "export_manifest.json").read_text())
    for mesh, segment in zip((right, left), manifest["segments"]):  # light smoothing keeps the volume
        assert mesh.volume / 1000 == pytest.approx(segment["volume_ml"], rel=0.03)


# ------------------------------------------------------------------------------------------ the script
def _script_constants(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            value = node.value
            if isinstance(value, ast.Call):  # Path("...")
                value = value.args[0]
            out[node.targets[0].id] = ast.literal_eval(value)
    return out


def test_loader_script_names_existing_files(multi_export, phantom):
    script = multi_export / "load_in_slicer.py"
    consts = _script_constants(script)
    assert Path(consts["IMAGE"]) == phantom["image"].resolve()
    assert (Path(consts["FOLDER"]) / consts["IMAGE_RELATIVE"]).resolve() == phantom["image"].resolve()
    assert Path(consts["FOLDER"]) == multi_export.resolve()
    for key in ("SEGMENTATION", "COLOR_TABLE", "MASK_NIFTI"):
        assert (multi_export / consts[key]).is_file(), key
    assert [m[:2] for m in consts["MODELS"]] == [("tumor", 1), ("nodule", 2)]
    for _, _, _, vtk_file, stl_file in consts["MODELS"]:
        assert (multi_export / vtk_file).is_file() and (multi_export / stl_file).is_file()
    assert consts["EMPTY_SEGMENTS"] == []
    text = script.read_text()
    for call in ("slicer.util.loadVolume", "slicer.util.loadSegmentation", "slicer.util.loadModel"):
        assert call in text


def _run_script(script: Path, file_attr: str | None = None) -> mock.MagicMock:
    """Run a loader script against a stand-in ``slicer`` module; return it (its calls are recorded)."""
    slicer = mock.MagicMock()
    namespace = {"__name__": "__main__"} | ({"__file__": file_attr} if file_attr else {})
    with mock.patch.dict(sys.modules, {"slicer": slicer}):
        exec(compile(script.read_text(), str(script), "exec"), namespace)
    return slicer


def test_loader_script_runs_and_follows_a_moved_folder(multi_export, phantom, tmp_path):
    slicer = _run_script(multi_export / "load_in_slicer.py")  # as exec(open(...).read()) in Slicer's console
    slicer.util.loadVolume.assert_called_once_with(str(phantom["image"].resolve()))
    slicer.util.loadSegmentation.assert_called_once_with(str(multi_export.resolve() / "ph_001.seg.nrrd"))
    assert [c.args[0] for c in slicer.util.loadModel.call_args_list] == [
        str(multi_export.resolve() / "ph_001_1_tumor.vtk"), str(multi_export.resolve() / "ph_001_2_nodule.vtk")]
    moved = tmp_path / "elsewhere" / "ph_001"
    shutil.copytree(multi_export, moved)
    slicer = _run_script(moved / "load_in_slicer.py", file_attr=str(moved / "load_in_slicer.py"))
    slicer.util.loadSegmentation.assert_called_once_with(str(moved.resolve() / "ph_001.seg.nrrd"))


# -------------------------------------------------------------------------------------------- empty
def test_empty_mask_exports_without_mesh_and_says_so(phantom, tmp_path, caplog):
    empty = _write(np.zeros(SHAPE, np.uint8), tmp_path / "ph_001_empty.nii.gz", like=phantom["ref"])
    with caplog.at_level(logging.WARNING, logger="monai_pipeline.export"):
        folder = export_slicer(phantom["image"], empty, tmp_path / "out")
    assert "is empty: no mesh written" in caplog.text
    assert not list(folder.glob("*.stl")) and not list(folder.glob("*.vtk"))
    seg = slicerio.read_segmentation(str(folder / "ph_001.seg.nrrd"))
    assert [(s["name"], s["labelValue"], s["extent"]) for s in seg["segments"]] == [("tumor", 1, [0, -1, 0, -1, 0, -1])]
    consts = _script_constants(folder / "load_in_slicer.py")
    assert consts["MODELS"] == [] and consts["EMPTY_SEGMENTS"] == ["'tumor' (label 1)"]
    assert "EMPTY" in (folder / "README.txt").read_text()
    slicer = _run_script(folder / "load_in_slicer.py")
    slicer.util.loadSegmentation.assert_called_once()
    slicer.util.loadModel.assert_not_called()


def test_default_segments():
    labels = np.zeros((4, 4, 4), np.uint8)
    assert [(s.label, s.name) for s in segmentation.slicer_segments(labels)] == [(1, "tumor")]
    assert [(s.label, s.name) for s in segmentation.slicer_segments(labels, {2: "lung"})] == [(2, "lung")]
    labels[0, 0, 0], labels[1, 1, 1] = 1, 3
    segments = segmentation.slicer_segments(labels)
    assert [(s.label, s.name, s.voxels) for s in segments] == [(1, "Segment_1", 1), (3, "Segment_3", 1)]
    assert len({s.color for s in segments}) == 2


def test_labels_above_255_keep_their_values(phantom, tmp_path):
    big = _write(phantom["labels"].astype(np.uint16) * 150, tmp_path / "big.nii.gz", like=phantom["ref"])  # 150, 300
    folder = export_slicer(phantom["image"], big, tmp_path / "out", case_id="big")
    seg = slicerio.read_segmentation(str(folder / "big.seg.nrrd"))
    assert [s["labelValue"] for s in seg["segments"]] == [150, 300]
    np.testing.assert_array_equal(seg["voxels"], phantom["labels"].astype(np.uint16) * 150)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "big_seg.nii.gz"))).T,
                                  phantom["labels"].astype(np.uint16) * 150)


def test_named_label_missing_from_mask_is_an_empty_segment(phantom, tmp_path):
    folder = export_slicer(phantom["image"], phantom["binary"], tmp_path, names=["1=tumor", "3=edema"], case_id="c")
    seg = slicerio.read_segmentation(str(folder / "c.seg.nrrd"), skip_voxels=True)
    assert [(s["name"], s["labelValue"]) for s in seg["segments"]] == [("tumor", 1), ("edema", 3)]
    assert seg["segments"][0]["extent"] == seg["segments"][1]["extent"] != [0, -1, 0, -1, 0, -1]
    assert not list(folder.glob("c_3_*"))


# ------------------------------------------------------------------------------------ replace / atomic
def test_rerun_replaces_the_folder_only_when_complete(phantom, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = export_slicer(phantom["image"], phantom["multi"], out, names={1: "tumor", 2: "nodule"})
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_mesh", broken)
    with pytest.raises(OSError):
        export_slicer(phantom["image"], phantom["binary"], out)
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # the old export is untouched
    assert [p.name for p in out.iterdir()] == ["ph_001"]  # no temporary folder left
    monkeypatch.undo()
    (out / ".tmp-deadbeef-ph_001").mkdir()  # left by a killed run
    second = export_slicer(phantom["image"], phantom["binary"], out)
    assert second == first and not (second / "ph_001_2_nodule.stl").exists()  # replaced, no stale mesh
    assert [p.name for p in out.iterdir()] == ["ph_001"]


def test_a_failed_first_export_leaves_nothing(phantom, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_seg_nrrd", broken)
    with pytest.raises(OSError):
        export_slicer(phantom["image"], phantom["multi"], tmp_path / "new_out")
    assert not (tmp_path / "new_out").exists()


def test_unsafe_output_locations_are_refused(phantom, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    case_dir = tmp_path / "out" / "ph_001"
    case_dir.mkdir(parents=True)
    (case_dir / "export_manifest.json").write_text("{}")  # looks like an earlier export...
    inside = shutil.copy(phantom["image"], case_dir / "ph_001.nii.gz")  # ...but holds the input image
    for args, text in (([str(phantom["image"]), str(phantom["multi"]), str(tmp_path / "a_file")], "is not a folder"),
                       ([str(inside), str(phantom["multi"]), str(tmp_path / "out")], "inside the case folder")):
        code = cli.main(["export-slicer", "--image", args[0], "--mask", args[1], "--out", args[2]])
        err = capsys.readouterr().err
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in case_dir.iterdir()) == ["export_manifest.json", "ph_001.nii.gz"]


def test_a_foreign_folder_is_not_replaced(phantom, tmp_path):
    (tmp_path / "ph_001").mkdir()
    (tmp_path / "ph_001" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by export-slicer"):
        export_slicer(phantom["image"], phantom["multi"], tmp_path)
    assert (tmp_path / "ph_001" / "notes.txt").read_text() == "mine"


def test_segment_names_parse():
    assert parse_segment_names(["1=tumor", "2=right lung"]) == {1: "tumor", 2: "right lung"}
    assert parse_segment_names(["nodule"]) == {1: "nodule"}
    for bad in (["0=bg"], ["x=tumor"], ["1=a", "1=b"], ["1="], ["tumor", "lung"]):
        with pytest.raises(DataError, match="--names"):
            parse_segment_names(bad)


# ---------------------------------------------------------------------------------- command line
def _bad_cases(phantom, tmp: Path) -> list[tuple[str, list[str], str, str]]:
    """(id, CLI args, file the message must name, text it must contain)."""
    img, ref = phantom["image"], phantom["ref"]
    shifted = _write(phantom["labels"], tmp / "shifted.nii.gz", like=ref, origin=tuple(np.add(ORIGIN, (5.0, 0, 0))))
    spaced = _write(phantom["labels"], tmp / "spaced.nii.gz", like=ref, spacing=(0.8, 1.1, 3.0))
    cropped = _write(phantom["labels"][:, :, :-1], tmp / "cropped.nii.gz", spacing=SPACING, origin=ref.GetOrigin(),
                     direction=ref.GetDirection())
    half = _write(phantom["labels"] * 0.5, tmp / "half.nii.gz", like=ref)
    garbage = tmp / "garbage.nii.gz"
    garbage.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    layers = sitk.GetImageFromArray(np.stack([phantom["labels"].T] * 2, axis=-1), isVector=True)  # 2 layers
    layers.CopyInformation(ref)
    layered = tmp / "layered.seg.nrrd"
    sitk.WriteImage(layers, str(layered))
    negative = _write(phantom["labels"].astype(np.int16) * -1, tmp / "negative.nii.gz", like=ref)
    return [
        ("origin mismatch", ["--image", str(img), "--mask", str(shifted)], str(shifted), "origin (RAS)"),
        ("spacing mismatch", ["--image", str(img), "--mask", str(spaced)], str(spaced), "spacing"),
        ("shape mismatch", ["--image", str(img), "--mask", str(cropped)], str(cropped), "shape"),
        ("missing mask", ["--image", str(img), "--mask", str(tmp / "nope.nii.gz")], str(tmp / "nope.nii.gz"),
         "file not found"),
        ("missing image", ["--image", str(tmp / "gone.nii.gz"), "--mask", str(phantom["multi"])],
         str(tmp / "gone.nii.gz"), "file not found"),
        ("float mask 0.5", ["--image", str(img), "--mask", str(half)], str(half), "fractional values [0.5"),
        ("unreadable mask", ["--image", str(img), "--mask", str(garbage)], str(garbage), "gzip"),
        ("layered seg.nrrd", ["--image", str(img), "--mask", str(layered)], str(layered), "2 values per voxel"),
        ("negative labels", ["--image", str(img), "--mask", str(negative)], str(negative), "negative label values"),
        ("bad names", ["--image", str(img), "--mask", str(phantom["multi"]), "--names", "0=x"], "--names", "label"),
        ("odd case id", ["--image", str(img), "--mask", str(phantom["multi"]), "--case-id", "../up"], "case ID", "../up"),
    ]


def test_bad_input_exit_2_one_line_nothing_written(phantom, tmp_path, capsys):
    for name, args, named, text in _bad_cases(phantom, tmp_path):
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code = cli.main(["export-slicer", *args, "--out", str(out)])
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2, (name, err)
        assert len(errors) == 1 and named in errors[0] and text in errors[0], (name, err)
        assert "Traceback" not in err, name
        assert not out.exists(), name


def test_bad_input_through_the_console_script(phantom, tmp_path):
    """The installed command, in a fresh process: geometry mismatch -> exit 2, one error line naming both files."""
    shifted = _write(phantom["labels"], tmp_path / "shifted.nii.gz", like=phantom["ref"],
                     origin=tuple(np.add(ORIGIN, (0, 0, 4.0))))
    out = tmp_path / "out"
    proc = run_cmd(["monai-pipeline", "export-slicer", "--image", str(phantom["image"]), "--mask", str(shifted),
                    "--out", str(out)], cwd=tmp_path, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and str(shifted) in errors[0] and str(phantom["image"]) in errors[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_folders_export_every_case(phantom, tmp_path, capsys):
    images, masks = tmp_path / "imagesTs", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for case in ("ph_001", "ph_002"):
        shutil.copy(phantom["image"], images / f"{case}.nii.gz")
        shutil.copy(phantom["multi"], masks / f"{case}_seg.nii.gz")
    shutil.copy(phantom["image"], images / "ph_003.nii.gz")  # an image without a mask is skipped
    (masks / "metrics.csv").write_text("not a volume\n")
    out = tmp_path / "slicer"
    assert cli.main(["export-slicer", "--image", str(images), "--mask", str(masks), "--out", str(out),
                     "--names", "1=tumor", "2=nodule"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ph_001", "ph_002"]
    assert "slicer folder:" in capsys.readouterr().out
    # a mask without its image: nothing is written, not even the cases that pair
    shutil.copy(phantom["multi"], masks / "ph_009_seg.nii.gz")
    out2 = tmp_path / "slicer2"
    assert cli.main(["export-slicer", "--image", str(images), "--mask", str(masks), "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "ph_009_seg.nii.gz: no image for case ph_009" in err and not out2.exists()
