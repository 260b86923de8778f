"""Data stage: dataset.json reading and its errors, file checks, patient-level splits, the LIDC reader."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from monai_pipeline.data.datasets import image_datalist, lidc_datalist, lidc_split, msd_datalist, read_dataset_json
from monai_pipeline.data.splits import kfold_split, split_train_val
from monai_pipeline.data.validate import check_pair, image_info
from monai_pipeline.errors import DataError
from monai_pipeline.io.naming import patient_id
from monai_pipeline.io.images import write_nifti


@pytest.fixture()
def ds(tiny_msd, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    dest = tmp_path / "ds"
    shutil.copytree(tiny_msd, dest)
    return dest


def _edit_json(ds: Path, fn) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    fn(meta)
    (ds / "dataset.json").write_text(json.dumps(meta))


def test_read_dataset_json(tiny_msd):
    meta = read_dataset_json(tiny_msd)
    assert len(meta["training"]) == 6 and len(meta["test"]) == 2
    assert meta["labels"] == {"0": "background", "1": "cancer"} and meta["modality"] == {"0": "CT"}
    for item in meta["training"]:
        assert Path(item["image"]).is_absolute() and Path(item["label"]).is_file()
        assert item["case_id"] == Path(item["image"]).name.removesuffix(".nii.gz")


def test_bom_and_crlf_accepted(ds):
    text = (ds / "dataset.json").read_text().replace("\n", "\r\n")
    (ds / "dataset.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(read_dataset_json(ds)["training"]) == 6


@pytest.mark.parametrize(
    "breaker, message",
    [
        (lambda ds: (ds / "dataset.json").unlink(), "not found"),
        (lambda ds: (ds / "dataset.json").write_text('{"training": [}'), "invalid JSON at line 1"),
        (lambda ds: (ds / "dataset.json").write_text("[1, 2]"), "top level must be a JSON object"),
        (lambda ds: _edit_json(ds, lambda m: m.pop("training")), "missing key 'training'"),
        (lambda ds: _edit_json(ds, lambda m: m.update(training=[])), "'training' list is empty"),
        (lambda ds: _edit_json(ds, lambda m: m.update(training="x")), "'training' must be a list"),
        (lambda ds: _edit_json(ds, lambda m: m["training"][0].pop("label")), "training[0] must be an object"),
        (lambda ds: _edit_json(ds, lambda m: m["training"].append(m["training"][0])), "listed twice"),
        (lambda ds: _edit_json(ds, lambda m: m["training"][1].update(image="../outside.nii.gz")), "outside the dataset"),
        (lambda ds: _edit_json(ds, lambda m: m["training"][1].update(image="/etc/passwd")), "absolute path"),
        (lambda ds: (ds / "labelsTr" / "lung_002.nii.gz").unlink(), "missing file"),
    ],
)
def test_bad_dataset_json(ds, breaker, message):
    breaker(ds)
    with pytest.raises(DataError) as err:
        msd_datalist(ds, split="all")
    assert message in str(err.value)
    assert "dataset.json" in str(err.value) or str(ds) in str(err.value)


def test_symlink_outside_dataset_refused(ds, tmp_path):
    outside = tmp_path / "elsewhere.nii.gz"
    shutil.copy(ds / "imagesTr" / "lung_000.nii.gz", outside)
    link = ds / "imagesTr" / "linked.nii.gz"
    os.symlink(outside, link)
    _edit_json(ds, lambda m: m["training"][0].update(image="./imagesTr/linked.nii.gz"))
    with pytest.raises(DataError, match="outside the dataset"):
        read_dataset_json(ds)


def test_truncated_and_corrupt_gzip(ds):
    img = ds / "imagesTr" / "lung_001.nii.gz"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"lung_001\.nii\.gz: .*(truncated|corrupt|readable)"):
        msd_datalist(ds, split="all")
    img.write_bytes(data[:-30] + bytes(30))  # damaged tail: CRC / length check fails
    with pytest.raises(DataError, match=r"lung_001\.nii\.gz"):
        image_info(img)


def test_uncompressed_truncated(tmp_path):
    path = tmp_path / "vol.nii"
    write_nifti(np.zeros((10, 10, 10), np.int16), np.eye(4), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="its header needs"):
        image_info(path)


def test_not_3d_and_empty_and_unknown(tmp_path):
    write_nifti(np.zeros((10, 10), np.int16), np.eye(4), tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match="expected a 3D volume"):
        image_info(tmp_path / "flat.nii.gz")
    write_nifti(np.zeros((10, 10, 10, 3), np.int16), np.eye(4), tmp_path / "four.nii.gz")
    with pytest.raises(DataError, match="expected a 3D volume"):
        image_info(tmp_path / "four.nii.gz")
    write_nifti(np.zeros((10, 10, 10, 1), np.int16), np.eye(4), tmp_path / "single.nii.gz")
    assert image_info(tmp_path / "single.nii.gz").shape[:3] == (10, 10, 10)  # trailing singleton is fine
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        image_info(tmp_path / "empty.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown image type"):
        image_info(tmp_path / "notes.txt")
    (tmp_path / "fake.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(DataError, match="fake.nii.gz"):
        image_info(tmp_path / "fake.nii.gz")


def test_pair_shape_and_geometry_mismatch(tmp_path):
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    write_nifti(np.zeros((20, 20, 8), np.int16), aff, tmp_path / "img.nii.gz")
    write_nifti(np.zeros((20, 20, 9), np.uint8), aff, tmp_path / "bad_shape.nii.gz")
    shifted = aff.copy()
    shifted[0, 3] = 1.0
    write_nifti(np.zeros((20, 20, 8), np.uint8), shifted, tmp_path / "bad_geom.nii.gz")
    with pytest.raises(DataError, match="bad_shape.nii.gz: label shape"):
        check_pair(tmp_path / "img.nii.gz", tmp_path / "bad_shape.nii.gz")
    with pytest.raises(DataError, match="bad_geom.nii.gz: label geometry"):
        check_pair(tmp_path / "img.nii.gz", tmp_path / "bad_geom.nii.gz")


def test_zero_spacing_refused(tmp_path):
    path = tmp_path / "z.nii"
    write_nifti(np.zeros((5, 5, 5), np.int16), np.eye(4), path)
    raw = bytearray(path.read_bytes())
    raw[84:88] = np.float32(0.0).tobytes()  # pixdim[2] (the j spacing) on disk = 0; nibabel would "fix" it to 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="spacing"):
        image_info(path)


def test_random_split_is_fixed_and_by_patient():
    items = [{"image": f"/d/LIDC-IDRI-{p:04d}_{k}_image.nii.gz"} for p in range(20) for k in range(1 + p % 3)]
    for d in items:
        d["patient"] = patient_id(d["image"])
    train, val = split_train_val(items, 0.25, seed=1)
    again_train, again_val = split_train_val(items, 0.25, seed=1)
    assert train == again_train and val == again_val
    assert len(train) + len(val) == len(items)
    assert not {d["patient"] for d in train} & {d["patient"] for d in val}
    assert len({d["patient"] for d in val}) == 5
    assert split_train_val(items, 0.25, seed=2)[1] != val


def test_kfold_partitions_patients():
    items = [{"image": f"/d/case_{i:03d}.nii.gz", "patient": f"p{i // 2}"} for i in range(30)]
    seen = []
    for fold in range(5):
        train, val = kfold_split(items, 5, fold, seed=0)
        assert not {d["patient"] for d in train} & {d["patient"] for d in val}
        seen += [d["image"] for d in val]
    assert sorted(seen) == sorted(d["image"] for d in items)  # every case validated exactly once
    with pytest.raises(ValueError):
        kfold_split(items, 5, 5)


def test_msd_split_modes(ds):
    train, val = msd_datalist(ds, "train"), msd_datalist(ds, "val")
    assert len(train) + len(val) == 6 and len(val) >= 1
    assert not {d["image"] for d in train} & {d["image"] for d in val}
    with pytest.raises(DataError, match="'validation' list"):
        msd_datalist(ds, "val", split_mode="provided")
    _edit_json(ds, lambda m: m.update(validation=m["training"][:2]))
    with pytest.raises(DataError, match="both 'training' and 'validation'"):
        msd_datalist(ds, "val", split_mode="provided")
    _edit_json(ds, lambda m: m.update(validation=m["training"][:2], training=m["training"][2:]))
    assert len(msd_datalist(ds, "train", split_mode="provided")) == 4
    assert len(msd_datalist(ds, "val", split_mode="provided")) == 2
    folds = [msd_datalist(ds, "val", split_mode="kfold", num_folds=2, fold=f) for f in range(2)]
    assert sum(len(f) for f in folds) == 4
    test = msd_datalist(ds, "test")
    assert len(test) == 2 and "label" not in test[0]


def test_image_datalist(tiny_msd, tmp_path):
    folder = tiny_msd / "imagesTs"
    items = image_datalist(folder)
    assert [d["case_id"] for d in items] == ["lung_100", "lung_101"]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(d["image"] for d in items) + "\n")
    assert image_datalist(lst) == items
    rel = tiny_msd / "relative_list.txt"  # relative entries are read against the list's own folder
    rel.write_text("imagesTs/lung_100.nii.gz\n")
    try:
        assert image_datalist(rel)[0]["image"] == items[0]["image"]
    finally:
        rel.unlink()
    with pytest.raises(DataError, match="also used by"):
        image_datalist([items[0]["image"], items[0]["image"]])
    with pytest.raises(DataError, match="file not found"):
        image_datalist([str(tmp_path / "missing.nii.gz")])


def test_patient_ids():
    assert patient_id("/x/LIDC-IDRI-0042_3_image.nii.gz") == "LIDC-IDRI-0042"
    assert patient_id("/x/lung_001.nii.gz") == "lung_001"
    assert patient_id("TCGA_CS_4941_19960909_12.tif") == "TCGA_CS_4941"


def test_lidc_reader_real_data():
    root = shared("lidc_nodules")
    items = lidc_datalist(root, validate=False)
    assert len(items) == 885
    assert len({d["patient"] for d in items}) == 496
    assert all(d["patient"].startswith("LIDC-IDRI-") and d["patient"] in d["image"] for d in items)
    validate_some = items[:25]
    from monai_pipeline.data.validate import validate_datalist

    validate_datalist(validate_some)
    parts = {s: lidc_split(root, s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == 885
    patients = {s: {d["patient"] for d in v} for s, v in parts.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert 0.15 < len(patients["test"]) / 496 < 0.25 and 0.05 < len(patients["val"]) / 496 < 0.15


def test_largest_component_face_or_full_connectivity():
    from monai_pipeline.data.masks import largest_component

    m = np.zeros((6, 6), np.uint8)
    m[0:2, 0:2] = 1  # 4 pixels
    m[2:5, 2:4] = 1  # 6 pixels, touching the first block at one corner only
    m[5, 5] = 7  # one pixel, non-zero counts as foreground
    face = largest_component(m)
    assert face.dtype == bool and face.sum() == 6 and face[2:5, 2:4].all()
    full = largest_component(m, full_connectivity=True)
    assert full.sum() == 10 and not full[5, 5]  # the corner joins the two blocks; the far pixel stays apart
    assert not largest_component(np.zeros((3, 3, 3))).any()
    single = np.zeros((4, 4, 4), bool)
    single[1:3, 1:3, 1:3] = True
    assert np.array_equal(largest_component(single), single)


def test_large_components_keeps_those_over_a_fraction_of_the_largest():
    from monai_pipeline.data.masks import large_components, largest_component

    m = np.zeros((12, 12, 12), np.uint8)
    m[0:5, 0:5, 0:4] = 1  # 100 voxels: the largest
    m[7:10, 7:10, 7:10] = 2  # 27 voxels: over 10 % of it, under 30 %
    m[11, 0, 11] = 1  # 1 voxel: a speck
    m[5, 5, 4] = 1  # touches the largest at a corner only
    kept = large_components(m, 0.1)
    assert kept.dtype == bool and kept.sum() == 127 and kept[8, 8, 8] and not kept[11, 0, 11] and not kept[5, 5, 4]
    assert large_components(m, 0.1, full_connectivity=True).sum() == 128  # the corner voxel joins the largest
    assert large_components(m, 0.3).sum() == 100
    assert np.array_equal(large_components(m, 0.0), m != 0)
    assert np.array_equal(large_components(m, 1.0), largest_component(m))
    assert not large_components(np.zeros((3, 3)), 0.1).any()
    assert large_components(np.zeros((0, 4)), 0.1).shape == largest_component(np.zeros((0, 4))).shape == (0, 4)
    edge = np.zeros((30, 30), bool)
    edge[:10, :10] = True  # 100 pixels
    edge[20, 0:10] = True  # 10 pixels: exactly 10 % of the largest, kept
    edge[25, 0:9] = True  # 9 pixels: under, dropped
    edge[20:30, 20:30] = True  # 100 pixels: as large as the largest
    assert large_components(edge, 0.1).sum() == 210
    assert large_components(edge, 1.0).sum() == 200 and largest_component(edge).sum() == 100  # a tie keeps both
    with pytest.raises(ValueError, match="min_fraction"):
        large_components(m, 1.5)
