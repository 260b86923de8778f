"""The I/O layer: one properties object carries geometry through every format; NIfTI codes are right the
first time; folders are built aside and swapped whole; the inference path reads a source once for its voxels."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import staged_folder
from monai_pipeline.io.images import ImageProperties, read_image, read_properties, write_image, write_nifti
from monai_pipeline.io.naming import pair_folders


def _oblique_affine() -> np.ndarray:
    a, b = np.radians(20), np.radians(7)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.8, 0.9, 2.5])
    aff[:3, 3] = [-120.5, 33.25, -40.0]
    return aff


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_properties_survive_every_format(tmp_path, ext):
    arr = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    props = ImageProperties.from_affine(_oblique_affine(), arr.shape)
    dest = write_image(arr, props, tmp_path / f"x{ext}")
    back, got = read_image(dest)
    np.testing.assert_array_equal(back, arr)
    assert got.same_grid(props), got.difference(props)
    np.testing.assert_allclose(got.affine, _oblique_affine(), atol=1e-4)
    assert read_properties(dest).same_grid(props)
    # SimpleITK sees the same LPS geometry the properties hold
    itk = sitk.ReadImage(str(dest))
    np.testing.assert_allclose(itk.GetOrigin(), props.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(itk.GetDirection(), (3, 3)), props.direction, atol=1e-5)


def test_nifti_written_with_both_codes_first_time(tmp_path):
    props = ImageProperties.from_affine(_oblique_affine(), (6, 5, 4))
    dest = write_image(np.zeros((6, 5, 4), np.uint8), props, tmp_path / "m.nii.gz")
    hdr = nib.load(str(dest)).header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), hdr.get_sform(), atol=1e-4)


def test_same_grid_has_one_tolerance():
    props = ImageProperties.from_affine(_oblique_affine(), (6, 5, 4))
    near, far = _oblique_affine(), _oblique_affine()
    near[0, 3] += 5e-4
    far[0, 3] += 5e-3
    assert props.same_grid(ImageProperties.from_affine(near, (6, 5, 4)))
    assert not props.same_grid(ImageProperties.from_affine(far, (6, 5, 4)))
    assert "origin (RAS)" in props.difference(ImageProperties.from_affine(far, (6, 5, 4)), "image")
    assert not props.same_grid(ImageProperties.from_affine(_oblique_affine(), (6, 5, 3)))


def test_inference_validation_reads_a_nifti_source_once(tmp_path, monkeypatch):
    """On the inference path a .nii.gz is not decompressed by validation (the loader reads it next); a
    truncated one is still refused by name; the training path still reads every stream to its end."""
    from monai_pipeline.data import validate
    from monai_pipeline.engine.inference import pending

    reads = []
    real = validate._gzip_payload_size
    monkeypatch.setattr(validate, "_gzip_payload_size", lambda p: reads.append(p.name) or real(p))
    (tmp_path / "in").mkdir()
    write_nifti(np.full((12, 10, 6), -500, np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "in" / "ct.nii.gz")
    items = pending(tmp_path / "in", tmp_path / "out")
    assert [d["case_id"] for d in items] == ["ct"] and reads == []

    bad = tmp_path / "bad" / "cut.nii.gz"
    write_nifti(np.arange(40 * 40 * 20, dtype=np.int16).reshape(40, 40, 20), np.eye(4), bad)
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(DataError, match="cut.nii.gz: corrupted or truncated gzip stream"):
        pending([str(bad)], tmp_path / "out", skip_bad=False)
    assert reads == ["cut.nii.gz"]

    train = tmp_path / "train.nii.gz"
    write_nifti(np.zeros((8, 8, 4), np.int16), np.eye(4), train)
    validate.image_info(train)
    assert reads[-1] == "train.nii.gz"


def test_mask_goes_where_pending_said(tmp_path):
    """The mask path is computed once, by pending(); it travels in the loaded image's metadata to SaveMaskd,
    which writes there with the validated geometry."""
    import torch
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    from monai_pipeline.engine.inference import InferenceDataset, SaveMaskd, pending

    (tmp_path / "in").mkdir()
    src = write_nifti(np.zeros((12, 10, 6), np.int16), _oblique_affine(), tmp_path / "in" / "ct.nii.gz")
    todo = pending(tmp_path / "in", tmp_path / "out", postfix="tumour", ext=".nrrd")
    assert [d["output_path"] for d in todo] == [str(tmp_path / "out" / "ct_tumour.nrrd")]
    item = InferenceDataset(todo, [LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])[0]
    assert item["image"].meta["output_path"] == str(tmp_path / "out" / "ct_tumour.nrrd")
    pred = torch.zeros(1, 12, 10, 6, dtype=torch.uint8)
    pred[0, 3:6, 3:6, 2:4] = 1
    SaveMaskd(output_dir=tmp_path / "elsewhere", output_postfix="x")({"image": item["image"], "pred": pred})
    arr, props = read_image(tmp_path / "out" / "ct_tumour.nrrd")
    assert arr.sum() == 18 and props.same_grid(read_properties(src))
    assert not (tmp_path / "elsewhere").exists()


def test_staged_folder_swaps_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out" / "case"
    with staged_folder(final, lock=tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with staged_folder(final, lock=tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed half way")
    assert (final / "a.txt").read_text() == "one"
    assert [p.name for p in final.parent.iterdir()] == ["case"]
    # a first build that fails leaves no empty parent behind
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "new" / "case") as tmp:
            raise RuntimeError("no")
    assert not (tmp_path / "new").exists()


def test_pair_folders_both_ways(tmp_path):
    for folder, names in (("masks", ["a_seg.nii.gz", "b_seg.nii.gz"]), ("labels", ["a.nii.gz", "b.nii.gz"]),
                          ("images", ["a.nii.gz", "b.nii.gz", "c.nii.gz"])):
        for n in names:
            write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / folder / n)
    pairs = pair_folders(tmp_path / "masks", {"label": tmp_path / "labels", "image": tmp_path / "images"})
    assert [(p["case_id"], p["mask"].endswith("a_seg.nii.gz")) for p in pairs] == [("a", True), ("b", False)]
    assert len(pair_folders(tmp_path / "masks", {"image": tmp_path / "images"}, unmasked="skip")) == 2
    with pytest.raises(DataError, match="no partner for case"):
        pair_folders(tmp_path / "masks", {"label": tmp_path / "images"})
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "masks" / "d_seg.nii.gz")
    with pytest.raises(DataError, match="d_seg.nii.gz: no image for case d"):  # export: a mask needs its image
        pair_folders(tmp_path / "masks", {"image": tmp_path / "images"}, unmasked="skip")
    with pytest.raises(DataError, match="no partner for case.*d"):  # evaluation: every case both ways
        pair_folders(tmp_path / "masks", {"label": tmp_path / "labels"})


def test_orthonormal_snaps_storage_noise_but_keeps_a_shear():
    """NIfTI keeps its matrix in float32: the snapped direction is orthonormal again, a real shear stays."""
    from scipy.spatial.transform import Rotation

    from monai_pipeline.io.images import ImageProperties

    rot = Rotation.from_euler("xyz", [9, -4, 21], degrees=True).as_matrix()
    exact = ImageProperties(shape=(40, 30, 20), spacing=(0.9, 0.8, 2.5), origin=(-101.3, 55.1, -240.7),
                            direction=tuple(map(tuple, rot)))
    noisy = ImageProperties.from_affine(exact.affine.astype(np.float32).astype(float), exact.shape)
    d = np.asarray(noisy.direction)
    assert np.abs(d.T @ d - np.eye(3)).max() > 1e-9  # float32 storage leaves it off orthonormal
    snapped = np.asarray(noisy.orthonormal().direction)
    assert np.abs(snapped.T @ snapped - np.eye(3)).max() < 1e-12
    assert np.abs(snapped - rot).max() < 1e-6 and noisy.orthonormal().same_grid(exact)
    shear = ImageProperties(shape=(4, 4, 4), spacing=(1, 1, 1), origin=(0, 0, 0),
                            direction=((1, 0.01, 0), (0, 1, 0), (0, 0, 1)))
    assert shear.orthonormal() is shear
