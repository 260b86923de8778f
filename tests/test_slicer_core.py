"""What we write for 3D Slicer, read by Slicer's OWN code: the ``slicer-core`` wheel (Slicer's MRML, storage
nodes and module logics without Qt) in ``.venv-slicer`` (``scripts/setup_slicer_env.sh``).

Our writers produce an oblique, left-handed, anisotropic phantom (CT as NIfTI, NRRD, MHA) and its
``export-slicer`` folder, plus the same export of Slicer's own ``CTChest4.nrrd`` (LPS, flipped axes) with the
lungs of its Slicer-written ``Segmentation.seg.nrrd``; ``tests/slicer_probe.py`` reads every file once, in one
subprocess, with the readers Slicer uses (volumes logic / archetype storage node, segmentation storage node,
models logic, markups JSON storage node) and reports what Slicer sees in RAS. Negative cases (a volume with
a flipped axis, a mesh whose header claims RAS, files Slicer cannot read) show the checks can fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import slicerio

from conftest import ROOT, shared
from monai_pipeline.io.images import ImageProperties, lps_to_ras, read_properties, write_image, write_mask_like
from monai_pipeline.io.markups import write_line, write_points
from monai_pipeline.io.terminology import KNOWN_SEGMENTS
from monai_pipeline.slicer.export import export_slicer
from monai_pipeline.slicer.segmentation import SLICER_SMOOTHING

SLICER_PYTHON = ROOT / ".venv-slicer" / "bin" / "python"
PROBE = Path(__file__).resolve().parent / "slicer_probe.py"
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/"
                  "markups-schema-v1.0.3.json#")

SHAPE, SPACING = (40, 32, 20), (0.8, 1.1, 2.5)
ORIGIN_LPS = (60.0, 80.0, -100.0)  # far from x = y = 0, so an LPS/RAS mix-up moves things by > 100 mm
LESIONS = [((12, 10, 7), (5, 4, 3)), ((28, 22, 13), (4, 3, 2))]  # (centre, radii) in voxels; label = index + 1
TOL_MM = 1e-3


def _direction_lps() -> np.ndarray:
    """Oblique, left-handed direction cosines (columns): 30 deg about z, 20 deg about x, then k flipped."""
    a, b = np.radians(30), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx @ np.diag([1.0, 1.0, -1.0])


def _props(direction: np.ndarray, dtype: str = "16-bit signed integer") -> ImageProperties:
    return ImageProperties(shape=SHAPE, spacing=SPACING, origin=ORIGIN_LPS,
                           direction=tuple(tuple(float(v) for v in row) for row in direction), dtype=dtype)


def _lesions() -> np.ndarray:
    grid = np.indices(SHAPE)
    labels = np.zeros(SHAPE, np.uint8)
    for value, (centre, radii) in enumerate(LESIONS, start=1):
        labels[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0] = value
    return labels


def _markups(path: Path, kind: str, system: str, points: list[tuple[str, list[float]]]) -> Path:
    """A markups file written by hand after Slicer's schema (markups-schema-v1.0.3): one markup, ``kind``
    ("Fiducial" or "Line"), control points given in ``system`` ("LPS" or "RAS") mm."""
    doc = {"@schema": MARKUPS_SCHEMA, "markups": [{
        "type": kind, "coordinateSystem": system, "coordinateUnits": "mm",
        "controlPoints": [{"id": str(n), "label": label, "position": list(p), "positionStatus": "defined"}
                          for n, (label, p) in enumerate(points, start=1)]}]}
    path.write_text(json.dumps(doc, indent=2))
    return path


def _flip_header_space(src: Path, dest: Path) -> Path:
    """A copy of a mesh file whose header claims the other space (``SPACE=LPS`` <-> ``SPACE=RAS``): what a
    writer mixing up LPS and RAS produces. The coordinates are untouched."""
    data = src.read_bytes()
    swap = {b"SPACE=LPS": b"SPACE=RAS", b"SPACE=RAS": b"SPACE=LPS"}
    tag = next((t for t in swap if t in data), None)
    dest.write_bytes(data.replace(tag, swap[tag]) if tag else data)
    return dest


@pytest.fixture(scope="module")
def slicer_python() -> Path:
    """The Python of .venv-slicer, or skip saying why it cannot be used."""
    if not SLICER_PYTHON.exists():
        pytest.skip(f"{SLICER_PYTHON} is absent: run scripts/setup_slicer_env.sh (installs slicer-core into it)")
    proc = subprocess.run([str(SLICER_PYTHON), "-c", "import slicer; slicer.vtkMRMLScene()"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"{SLICER_PYTHON} cannot import slicer-core ({proc.stderr.strip().splitlines()[-1:]}): "
                    "rerun scripts/setup_slicer_env.sh")
    return SLICER_PYTHON


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Every file to read, written by our writers (and the real CTChest4 data): ``{key: (path, kind)}`` plus
    the phantom's arrays and grids."""
    root = tmp_path_factory.mktemp("slicer_core")
    props = _props(_direction_lps())
    labels = _lesions()
    ct = (np.random.default_rng(0).normal(-700, 30, SHAPE) + 900 * (labels > 0)).astype(np.int16)
    image = write_image(ct, props, root / "ph_001.nii.gz")
    out: dict = {"ct": ct, "labels": labels, "props": props, "paths": {
        "source_nii": (image, "volume"),
        "ct_nrrd": (write_image(ct, props, root / "ph_001.nrrd"), "volume"),
        "ct_mha": (write_image(ct, props, root / "ph_001.mha"), "volume"),
        # negative: the i axis flipped (a wrong geometry that a careless writer could produce)
        "ct_wrong_nrrd": (write_image(ct, _props(_direction_lps() @ np.diag([-1.0, 1, 1])), root / "wrong.nrrd"),
                          "volume"),
    }}
    mask = write_mask_like(labels, image, root / "ph_001_seg.nii.gz")
    folder = export_slicer(image, mask, root / "export", names={1: "tumor", 2: "nodule"})
    out["folder"] = folder
    paths = out["paths"]
    paths["mask_nii"] = (folder / "ph_001_seg.nii.gz", "labelmap")
    paths["seg"] = (folder / "ph_001.seg.nrrd", "segmentation")
    paths["colors"] = (folder / "ph_001_colors.ctbl", "colortable")
    for label, stem in ((1, "ph_001_1_tumor"), (2, "ph_001_2_nodule")):
        for ext in ("vtk", "stl"):
            paths[f"mesh{label}_{ext}"] = (folder / f"{stem}.{ext}", "model")
    paths["mesh1_claims_ras"] = (_flip_header_space(folder / "ph_001_1_tumor.vtk", root / "claims_ras.vtk"), "model")

    p = [("P-1", [10.5, -20.25, 30.0]), ("P-2", [-4.0, 6.0, -8.0])]
    paths["fid_lps"] = (_markups(root / "fid_lps.mrk.json", "Fiducial", "LPS", p), "markups")
    paths["fid_ras"] = (_markups(root / "fid_ras.mrk.json", "Fiducial", "RAS", p), "markups")
    line = [("start", [1.0, 2.0, 3.0]), ("end", [4.0, 6.0, 15.0])]  # 3-4-12: 13 mm
    paths["line_lps"] = (_markups(root / "line_lps.mrk.json", "Line", "LPS", line), "markups")
    paths["line_ras"] = (_markups(root / "line_ras.mrk.json", "Line", "RAS", line), "markups")
    out["markup_points"], out["line_points"] = p, line
    # our own writer (monai_pipeline.io.markups): points given in LPS, stored in LPS or in RAS; a line
    lps = np.array([q for _, q in p])
    paths["our_fid_lps"] = (write_points(root / "our_fid_lps.mrk.json", lps, [n for n, _ in p], "LPS"), "markups")
    paths["our_fid_ras"] = (write_points(root / "our_fid_ras.mrk.json", lps, [n for n, _ in p], "RAS"), "markups")
    paths["our_line"] = (write_line(root / "our_line.mrk.json", "nodule 1 long axis", *[q for _, q in line]), "markups")

    # files Slicer cannot read: each must be reported as such, and the probe must go on
    (root / "garbage.nrrd").write_text("NRRD0004\nthis is not a header\n")
    paths["missing_model"] = (root / "missing.vtk", "model")
    paths["garbage_volume"] = (root / "garbage.nrrd", "volume")
    paths["garbage_seg"] = (root / "garbage.nrrd", "segmentation")

    if (ROOT.parent / "shared" / "data" / "ct_chest_slicerio").exists():
        chest = shared("ct_chest_slicerio", "CTChest4.nrrd")
        reference = shared("ct_chest_slicerio", "Segmentation.seg.nrrd")
        ref_seg = slicerio.read_segmentation(str(reference))
        lungs = (slicerio.segment_mask(ref_seg, "right lung").astype(np.uint8)
                 + 2 * slicerio.segment_mask(ref_seg, "left lung").astype(np.uint8))
        chest_mask = write_mask_like(lungs, chest, root / "CTChest4_seg.nrrd")
        chest_folder = export_slicer(chest, chest_mask, root / "chest", names={1: "right lung", 2: "left lung"})
        paths["chest_ct"] = (chest, "volume")
        paths["chest_reference_seg"] = (reference, "segmentation")
        paths["chest_seg"] = (chest_folder / "CTChest4.seg.nrrd", "segmentation")
        paths["chest_mask_nii"] = (chest_folder / "CTChest4_seg.nii.gz", "labelmap")
        paths["chest_right_lung_vtk"] = (chest_folder / "CTChest4_1_right_lung.vtk", "model")
        paths["chest_left_lung_stl"] = (chest_folder / "CTChest4_2_left_lung.stl", "model")
        out["chest"] = {"image": chest, "lungs": lungs}
    return out


@pytest.fixture(scope="module")
def slicer(slicer_python, files, tmp_path_factory) -> dict:
    """What Slicer's readers report for every file (one probe subprocess): ``{key: result}`` plus "_slicer"."""
    python = slicer_python
    keys = list(files["paths"])
    request = [{"path": str(files["paths"][k][0]), "kind": files["paths"][k][1]} for k in keys]
    for item in request:
        if item["kind"] == "volume":
            item["threshold"] = -200.0  # phantom lesions are ~ +200 HU, the rest ~ -700 HU
    request[keys.index("seg")]["closed_surface"] = True
    listing = tmp_path_factory.mktemp("probe") / "files.json"
    listing.write_text(json.dumps(request))
    proc = subprocess.run([str(python), str(PROBE), str(listing)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"slicer_probe.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert [r["path"] for r in report["results"]] == [r["path"] for r in request]
    return {"_slicer": report["slicer"], **dict(zip(keys, report["results"]))}


def _ok(result: dict) -> dict:
    assert result["ok"], f"Slicer could not read {result['path']} as {result['kind']}: {result['error']}"
    assert "ERROR" not in result.get("vtk_messages", ""), f"Slicer logged errors reading {result['path']}:\n" \
                                                          f"{result['vtk_messages']}"
    return result


def _same_matrix(a, b, tol: float = TOL_MM) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), atol=tol))


def _corners(ijk_to_ras, extent) -> np.ndarray:
    """The 8 corner voxel centres (RAS, sorted rows) of the grid ``extent`` ([i0, i1, j0, j1, k0, k1])."""
    m = np.asarray(ijk_to_ras, dtype=float)
    pts = np.array([[i, j, k, 1.0] for i in extent[0:2] for j in extent[2:4] for k in extent[4:6]])
    ras = (m @ pts.T).T[:, :3]
    return ras[np.lexsort(np.round(ras, 2).T[::-1])]


def _same_lattice(m_a, extent_a, m_b, extent_b, tol: float = TOL_MM) -> bool:
    """Two grids hold the same voxel centres in RAS: axes equal up to their sign (an axis may be indexed the
    other way round) and the same corners. Slicer's volume reader re-indexes left-handed grids."""
    a, b = np.asarray(m_a, dtype=float), np.asarray(m_b, dtype=float)
    axes = all(np.allclose(a[:3, n], b[:3, n], atol=tol) or np.allclose(a[:3, n], -b[:3, n], atol=tol) for n in range(3))
    return axes and bool(np.allclose(_corners(a, extent_a), _corners(b, extent_b), atol=tol))


def _full(dims) -> list[int]:
    return [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1]


def _voxel_bounds(selected: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS bounds [xmin, xmax, ...] of the voxel centres where ``selected`` ((i, j, k) array) holds."""
    ijk = np.argwhere(selected)
    corners = np.array([[x, y, z, 1.0] for x in (ijk[:, 0].min(), ijk[:, 0].max())
                        for y in (ijk[:, 1].min(), ijk[:, 1].max()) for z in (ijk[:, 2].min(), ijk[:, 2].max())])
    ras = (affine @ corners.T).T[:, :3]
    return np.column_stack([ras.min(0), ras.max(0)]).ravel()


def _box_overlap(a: list[float], b: list[float]) -> float:
    """Volume of the intersection of RAS boxes ``a`` and ``b`` ([xmin, xmax, ...]) over the smaller box's volume."""
    a, b = np.asarray(a).reshape(3, 2), np.asarray(b).reshape(3, 2)
    inter = np.clip(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0, None).prod()
    return float(inter / min(np.ptp(a, axis=1).prod(), np.ptp(b, axis=1).prod()))


def _inside(inner: list[float], outer: list[float], tol: float) -> bool:
    i, o = np.asarray(inner).reshape(3, 2), np.asarray(outer).reshape(3, 2)
    return bool((i[:, 0] >= o[:, 0] - tol).all() and (i[:, 1] <= o[:, 1] + tol).all())


# ------------------------------------------------------------------------------------------------ volumes
def test_ct_written_as_nrrd_and_mha_is_the_source_in_slicer(slicer, files):
    source = _ok(slicer["source_nii"])
    expected = files["props"].affine  # our intended voxel -> RAS matrix (left-handed: k flipped)
    assert source["node_class"] == "vtkMRMLScalarVolumeNode"
    assert source["storage_node_class"] == "vtkMRMLVolumeArchetypeStorageNode"
    assert source["dimensions"] == list(SHAPE)
    assert _same_lattice(source["ijk_to_ras"], _full(SHAPE), expected, _full(SHAPE)), source["ijk_to_ras"]
    # Slicer's volume reader makes a left-handed grid right-handed by indexing k the other way round
    flipped_k = expected @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, SHAPE[2] - 1], [0, 0, 0, 1.0]])
    assert np.linalg.det(expected[:3, :3]) < 0 < np.linalg.det(np.asarray(source["ijk_to_ras"])[:3, :3])
    assert _same_matrix(source["ijk_to_ras"], flipped_k)
    assert source["scalar_range"] == [float(files["ct"].min()), float(files["ct"].max())]
    # the bright lesions are where our voxels put them, in RAS (the data was re-indexed with the matrix)
    lesions = _voxel_bounds(files["labels"] > 0, expected)
    for key in ("source_nii", "ct_nrrd", "ct_mha"):
        ours = _ok(slicer[key])
        assert ours["dimensions"] == source["dimensions"]
        assert _same_matrix(ours["ijk_to_ras"], source["ijk_to_ras"]), (key, ours["ijk_to_ras"])
        assert _same_matrix(ours["ras_bounds"], source["ras_bounds"]), (key, ours["ras_bounds"])
        assert ours["scalar_range"] == source["scalar_range"]
        assert ours["above_threshold"]["voxels"] == int((files["labels"] > 0).sum())
        np.testing.assert_allclose(ours["above_threshold"]["ras_bounds"], lesions, atol=TOL_MM, err_msg=key)


def test_a_wrong_geometry_is_caught(slicer, files):
    """Negative: a volume whose i axis is flipped is another grid, with other bounds and lesions elsewhere."""
    wrong, source = _ok(slicer["ct_wrong_nrrd"]), slicer["source_nii"]
    assert not _same_lattice(wrong["ijk_to_ras"], _full(SHAPE), source["ijk_to_ras"], _full(SHAPE), tol=1.0)
    assert not _same_matrix(wrong["ras_bounds"], source["ras_bounds"], tol=1.0)
    lesions = _voxel_bounds(files["labels"] > 0, files["props"].affine)
    assert not np.allclose(wrong["above_threshold"]["ras_bounds"], lesions, atol=1.0)


def test_labelmap_nifti_has_the_source_geometry_and_labels(slicer, files):
    mask, source = _ok(slicer["mask_nii"]), slicer["source_nii"]
    assert mask["node_class"] == "vtkMRMLLabelMapVolumeNode"
    assert mask["dimensions"] == source["dimensions"]
    assert _same_matrix(mask["ijk_to_ras"], source["ijk_to_ras"])
    values = sorted(int(v) for v in np.unique(files["labels"]) if v)
    assert sorted(int(v) for v in mask["labels"]) == values == [1, 2]
    for v in values:
        assert mask["labels"][str(v)]["voxels"] == int((files["labels"] == v).sum())
        np.testing.assert_allclose(mask["labels"][str(v)]["ras_bounds"],
                                   _voxel_bounds(files["labels"] == v, files["props"].affine), atol=TOL_MM)


# ---------------------------------------------------------------------------------------- segmentation
def test_seg_nrrd_segments_in_slicer(slicer, files):
    seg, source = _ok(slicer["seg"]), slicer["source_nii"]
    assert seg["storage_node_class"] == "vtkMRMLSegmentationStorageNode"
    assert seg["source_representation"] == "Binary labelmap"
    got = [(s["id"], s["name"], s["label_value"], s["layer"]) for s in seg["segments"]]
    assert got == [("Segment_1", "tumor", 1, 0), ("Segment_2", "nodule", 2, 0)]
    assert float(seg["smoothing_factor"]) == pytest.approx(SLICER_SMOOTHING)
    assert "^108369006^Neoplasm" in seg["segments"][0]["terminology"]  # SNOMED CT, as Slicer shows it
    for s in seg["segments"]:
        np.testing.assert_allclose(s["color"], KNOWN_SEGMENTS[s["name"]][0], atol=1e-5)
        assert s["voxels"] == int((files["labels"] == s["label_value"]).sum()) > 0
        # each segment sits where its voxels are on the source grid (voxel-centre bounds, RAS), and where
        # Slicer's volume reader puts the same label of the NIfTI mask
        expected = _voxel_bounds(files["labels"] == s["label_value"], files["props"].affine)
        np.testing.assert_allclose(s["ras_bounds"], expected, atol=TOL_MM)
        np.testing.assert_allclose(s["ras_bounds"], slicer["mask_nii"]["labels"][str(s["label_value"])]["ras_bounds"],
                                   atol=TOL_MM)
    # geometry: the segmentation's grid (reference geometry, full extent) is the source volume's grid in RAS;
    # its labelmap keeps the file's (left-handed) indexing, the volume reader re-indexes k
    ref = seg["reference_image_geometry"]
    assert _same_lattice(ref["ijk_to_ras"], ref["extent"], source["ijk_to_ras"], _full(source["dimensions"]))
    assert _same_matrix(seg["geometry"]["ijk_to_ras"], files["props"].affine), seg["geometry"]
    assert _same_matrix(seg["geometry"]["ijk_to_ras"], ref["ijk_to_ras"])


# ------------------------------------------------------------------------------------------------ meshes
@pytest.mark.parametrize("label", [1, 2])
@pytest.mark.parametrize("ext", ["vtk", "stl"])
def test_meshes_lie_on_their_lesions_in_slicer(slicer, label, ext):
    mesh, source = _ok(slicer[f"mesh{label}_{ext}"]), slicer["source_nii"]
    segment = slicer["seg"]["segments"][label - 1]
    assert mesh["node_class"] == "vtkMRMLModelNode" and mesh["coordinate_system"] == "LPS"
    assert mesh["points"] > 50
    assert _inside(mesh["ras_bounds"], source["ras_bounds"], tol=0.0), (mesh["ras_bounds"], source["ras_bounds"])
    assert _box_overlap(mesh["ras_bounds"], segment["ras_bounds"]) > 0.8, (mesh["ras_bounds"], segment["ras_bounds"])
    # its box is centred on the lesion to within half a voxel diagonal (mm); the voxel-centre box of an
    # oblique lesion is larger than the surface's, but both are centred on it
    centre = lambda b: np.asarray(b).reshape(3, 2).mean(axis=1)  # noqa: E731
    assert np.linalg.norm(centre(mesh["ras_bounds"]) - centre(segment["ras_bounds"])) < 0.5 * np.linalg.norm(SPACING)


@pytest.mark.parametrize("label", [1, 2])
def test_meshes_match_slicers_own_closed_surface(slicer, label):
    """Slicer's labelmap -> closed surface conversion of our .seg.nrrd (its stored parameters) and our mesh
    files as Slicer loads them have the same RAS bounds to within 1 mm."""
    surface = slicer["seg"]["segments"][label - 1]["closed_surface"]
    assert surface["points"] > 50
    for ext in ("vtk", "stl"):
        np.testing.assert_allclose(slicer[f"mesh{label}_{ext}"]["ras_bounds"], surface["ras_bounds"], atol=1.0)


def test_colour_table_reads_with_our_names_and_colours(slicer):
    table = _ok(slicer["colors"])
    assert table["storage_node_class"] == "vtkMRMLColorTableStorageNode"
    got = {c["value"]: c for c in table["colors"]}
    assert sorted(got) == [0, 1, 2] and got[0]["name"] == "background"
    for s in slicer["seg"]["segments"]:
        assert got[s["label_value"]]["name"] == s["name"]
        np.testing.assert_allclose(got[s["label_value"]]["rgba"][:3], s["color"], atol=1 / 255)
        assert got[s["label_value"]]["rgba"][3] == 1.0


def test_a_mesh_flipped_between_lps_and_ras_is_caught(slicer):
    """Negative: the tumour mesh's header claiming RAS makes Slicer put it elsewhere: the checks above fail."""
    flipped = _ok(slicer["mesh1_claims_ras"])
    assert flipped["coordinate_system"] == "RAS"  # Slicer honours the header
    assert flipped["points"] == slicer["mesh1_vtk"]["points"]
    assert _box_overlap(flipped["ras_bounds"], slicer["seg"]["segments"][0]["ras_bounds"]) == 0.0
    assert not _inside(flipped["ras_bounds"], slicer["source_nii"]["ras_bounds"], tol=0.0)


# ------------------------------------------------------------------------------- real Slicer-written data
def _chest(slicer) -> None:
    if "chest_ct" not in slicer:
        shared("ct_chest_slicerio", "CTChest4.nrrd")  # skips saying the real data is absent


def test_real_chest_ct_and_its_slicer_segmentation(slicer, files):
    _chest(slicer)
    ct, reference = _ok(slicer["chest_ct"]), _ok(slicer["chest_reference_seg"])
    # our reader's geometry of Slicer's flipped-axis LPS NRRD is the one Slicer's reader gives
    assert _same_matrix(ct["ijk_to_ras"], lps_to_ras(read_properties(files["chest"]["image"]).lps_affine))
    assert _same_matrix(reference["geometry"]["ijk_to_ras"], ct["ijk_to_ras"])
    names = [s["name"] for s in reference["segments"]]
    assert "right lung" in names and "left lung" in names
    ref_seg = slicerio.read_segmentation(str(slicer["chest_reference_seg"]["path"]))
    assert [(s["name"], s["labelValue"]) for s in ref_seg["segments"]] == \
        [(s["name"], s["label_value"]) for s in reference["segments"]]


def test_real_chest_export_reads_in_slicer_like_slicers_own(slicer, files):
    _chest(slicer)
    ct, reference, ours = slicer["chest_ct"], slicer["chest_reference_seg"], _ok(slicer["chest_seg"])
    assert _same_matrix(ours["geometry"]["ijk_to_ras"], ct["ijk_to_ras"])
    ref = {s["name"]: s for s in reference["segments"]}
    for s, value in zip(ours["segments"], (1, 2)):
        assert s["label_value"] == value
        assert s["voxels"] == ref[s["name"]]["voxels"] == int((files["chest"]["lungs"] == value).sum())
        np.testing.assert_allclose(s["ras_bounds"], ref[s["name"]]["ras_bounds"], atol=TOL_MM)
    mask = _ok(slicer["chest_mask_nii"])
    assert _same_matrix(mask["ijk_to_ras"], ct["ijk_to_ras"])
    assert {v: mask["labels"][v]["voxels"] for v in mask["labels"]} == \
        {"1": ref["right lung"]["voxels"], "2": ref["left lung"]["voxels"]}
    for value, name in (("1", "right lung"), ("2", "left lung")):
        np.testing.assert_allclose(mask["labels"][value]["ras_bounds"], ref[name]["ras_bounds"], atol=TOL_MM)
    for key, name in (("chest_right_lung_vtk", "right lung"), ("chest_left_lung_stl", "left lung")):
        mesh = _ok(slicer[key])
        # the lungs reach the last 10 mm slice: the smoothed surface's cap may pass the volume's outer face
        # by a little (1.3 mm seen); allow half a slice
        assert _inside(mesh["ras_bounds"], ct["ras_bounds"], tol=5.0), (mesh["ras_bounds"], ct["ras_bounds"])
        assert _box_overlap(mesh["ras_bounds"], ref[name]["ras_bounds"]) > 0.8, (name, mesh["ras_bounds"])
        other = ref["left lung" if name == "right lung" else "right lung"]
        assert _box_overlap(mesh["ras_bounds"], other["ras_bounds"]) < 0.2  # right and left not swapped


# ------------------------------------------------------------------------------------------------ markups
def test_markups_json_fiducials_and_lines_lps_and_ras(slicer, files):
    """Hand-written markups files (Slicer's schema v1.0.3) in LPS and RAS: Slicer converts LPS to RAS.
    Our own writer's files are checked in the next test."""
    to_ras = np.array([-1.0, -1.0, 1.0])
    for key, cls, given, factor in (("fid_lps", "vtkMRMLMarkupsFiducialNode", files["markup_points"], to_ras),
                                    ("fid_ras", "vtkMRMLMarkupsFiducialNode", files["markup_points"], 1.0),
                                    ("line_lps", "vtkMRMLMarkupsLineNode", files["line_points"], to_ras),
                                    ("line_ras", "vtkMRMLMarkupsLineNode", files["line_points"], 1.0)):
        r = _ok(slicer[key])
        assert r["node_class"] == cls and r["storage_node_class"] == "vtkMRMLMarkupsJsonStorageNode"
        assert r["labels"] == [label for label, _ in given]
        np.testing.assert_allclose(r["control_points_ras"], np.array([p for _, p in given]) * factor, atol=1e-9)
        if cls == "vtkMRMLMarkupsLineNode":
            assert r["line_length"] == pytest.approx(13.0, abs=1e-9)
    # negative: the LPS file is not read as if it were RAS
    assert not np.allclose(slicer["fid_lps"]["control_points_ras"], slicer["fid_ras"]["control_points_ras"])


def test_our_markups_writer_reads_in_slicer(slicer, files):
    """``write_points`` (stored in LPS or RAS) and ``write_line`` (LPS): Slicer places every point at the LPS
    position we gave, seen in its RAS scene, and measures the line as we do."""
    from monai_pipeline.io.markups import read_points

    to_ras = np.array([-1.0, -1.0, 1.0])
    given = np.array([q for _, q in files["markup_points"]])
    for key in ("our_fid_lps", "our_fid_ras"):
        r = _ok(slicer[key])
        assert r["node_class"] == "vtkMRMLMarkupsFiducialNode"
        assert r["labels"] == [n for n, _ in files["markup_points"]]
        np.testing.assert_allclose(r["control_points_ras"], given * to_ras, atol=1e-3)
        np.testing.assert_allclose(read_points(files["paths"][key][0]).lps, given, atol=1e-3)  # and back in
    r = _ok(slicer["our_line"])
    assert r["node_class"] == "vtkMRMLMarkupsLineNode"
    np.testing.assert_allclose(r["control_points_ras"], np.array([q for _, q in files["line_points"]]) * to_ras, atol=1e-3)
    assert r["line_length"] == pytest.approx(13.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------ failures
def test_unreadable_files_are_reported_per_file(slicer):
    for key in ("missing_model", "garbage_volume", "garbage_seg"):
        r = slicer[key]
        assert r["ok"] is False and r["error"], r
    assert "not found" in slicer["missing_model"]["error"]
    assert "Could not create IO object" in slicer["garbage_volume"]["error"] or "nrrd" in slicer["garbage_volume"]["error"]
    # Slicer's segmentation storage node lets ITK's NRRD exception escape: the process aborts (SIGABRT);
    # the probe reports it for that file and reads the rest in a new worker
    assert "crashed" in slicer["garbage_seg"]["error"] and "NrrdImageIO" in slicer["garbage_seg"]["error"]
    assert _ok(slicer["line_ras"])  # files after a failure were still read


# ------------------------------------------------------------------------------------------ loader script
def _loader_calls(folder: Path) -> set[str]:
    return set(re.findall(r"slicer\.util\.(\w+)\(", (folder / "load_in_slicer.py").read_text()))


def test_loader_script_calls_exist_in_slicers_util(slicer, files):
    calls = _loader_calls(files["folder"])
    assert {"loadVolume", "loadSegmentation", "loadColorTable", "loadModel"} <= calls
    missing = calls - set(slicer["_slicer"]["slicer_util_functions"])
    assert not missing, f"load_in_slicer.py calls slicer.util functions Slicer does not have: {sorted(missing)}"


def test_loader_script_runs_against_slicer_core(slicer):
    # slicer-core ships slicer.util, but not slicer.app: loadVolume, loadSegmentation, loadColorTable and
    # loadModel all go through slicer.util.loadNodeFromFile -> slicer.app.coreIOManager().loadNodes(...)
    # (qSlicerCoreIOManager, a Qt class of the Slicer application, which slicer-core leaves out), and
    # setSliceViewerLayers needs slicer.mrmlScene and slicer.app.layoutManager(). So the script cannot run
    # here; the probe reads the same files with the module logics those Qt readers call.
    if not slicer["_slicer"]["slicer_app"]:
        pytest.skip("slicer-core has slicer.util but no slicer.app: slicer.util.loadVolume/loadSegmentation/"
                    "loadColorTable/loadModel call slicer.app.coreIOManager() (qSlicerCoreIOManager, Qt), which "
                    "slicer-core does not include")
    pytest.fail("this slicer-core offers slicer.app: run load_in_slicer.py against its scene here and check the "
                "scene's nodes")
