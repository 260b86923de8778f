"""Export stage: masks land exactly on their source image (shape, spacing, origin, direction), atomically."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared
from monai_pipeline.engine.inference import SaveMaskd
from monai_pipeline.io.naming import mask_path
from monai_pipeline.io.images import write_mask_like
from monai_pipeline.io.images import write_nifti
from monai_pipeline.app.synthetic import PhantomSpec, make_phantom


def assert_same_geometry(source: Path, mask: Path, tol: float = 1e-4) -> None:
    """SimpleITK and nibabel both see the mask on the source's voxel grid (within ``tol`` mm)."""
    a, b = sitk.ReadImage(str(source)), sitk.ReadImage(str(mask))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=tol)
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=tol)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=tol)
    assert b.GetPixelID() == sitk.sitkUInt8
    # world position of the far corner voxel, which magnifies any direction or spacing error
    corner = [s - 1 for s in a.GetSize()]
    np.testing.assert_allclose(b.TransformIndexToPhysicalPoint(corner), a.TransformIndexToPhysicalPoint(corner), atol=tol)
    if str(mask).endswith((".nii", ".nii.gz")):
        m = nib.load(str(mask))
        assert int(m.header["qform_code"]) == 1 and int(m.header["sform_code"]) == 1
        np.testing.assert_allclose(m.header.get_qform(), m.header.get_sform(), atol=tol)
        if str(source).endswith((".nii", ".nii.gz")):
            np.testing.assert_allclose(m.affine, nib.load(str(source)).affine, atol=tol)


@pytest.mark.parametrize("direction", ["identity", "rotated", "flipped"])
def test_mask_geometry_on_phantoms(tmp_path, direction):
    img, lab, aff = make_phantom(7, PhantomSpec((40, 36, 12), (0.7, 0.7, 2.5)), n_tumours=2, direction=direction)
    if direction == "rotated":
        assert not np.allclose(np.abs(aff[:3, :3]) > 1e-6, np.eye(3, dtype=bool))  # truly non axis-aligned
    src = write_nifti(img, aff, tmp_path / "ct.nii.gz")
    out = write_mask_like(lab, src, tmp_path / "out" / "ct_seg.nii.gz")
    assert_same_geometry(src, out)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), lab)  # same voxel order as MONAI/nibabel
    out_nrrd = write_mask_like(lab[None], src, tmp_path / "out" / "ct_seg.nrrd")  # channel-first input too
    assert_same_geometry(src, out_nrrd)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp")]


def test_shape_mismatch_refused_and_nothing_written(tmp_path):
    img, lab, aff = make_phantom(1, PhantomSpec((20, 20, 8), (1.0, 1.0, 2.0)))
    src = write_nifti(img, aff, tmp_path / "ct.nii.gz")
    with pytest.raises(ValueError, match="mask shape"):
        write_mask_like(lab[:, :, :-1], src, tmp_path / "out" / "bad.nii.gz")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_failed_write_keeps_old_file(tmp_path, monkeypatch, ext):
    import nibabel as nib

    img, lab, aff = make_phantom(2, PhantomSpec((20, 20, 8), (1.0, 1.0, 2.0)))
    src = write_nifti(img, aff, tmp_path / "ct.nii.gz")
    dest = write_mask_like(lab, src, tmp_path / f"m{ext}")
    before = dest.read_bytes()

    def broken(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    # NIfTI is written by nibabel, NRRD/MHA by SimpleITK: break the writer this format goes through
    monkeypatch.setattr(nib, "save", broken)
    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mask_like(1 - lab, src, dest)
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_mask_path_stays_in_output_dir(tmp_path):
    assert mask_path("/data/lung_001.nii.gz", tmp_path) == tmp_path / "lung_001_seg.nii.gz"
    assert mask_path("/data/../../etc/x.nrrd", tmp_path, ext=".nrrd").parent == tmp_path
    assert mask_path("/data/lung_1.nii.gz", tmp_path, postfix="../../escape").parent == tmp_path


def test_savemaskd_uses_source_file(tmp_path):
    import torch
    from monai.data import MetaTensor

    img, lab, aff = make_phantom(4, PhantomSpec((24, 24, 10), (0.8, 0.8, 2.0)), direction="rotated")
    src = write_nifti(img, aff, tmp_path / "case_9.nii.gz")
    item = {"image": MetaTensor(torch.zeros(1, 24, 24, 10), meta={"filename_or_obj": str(src)}),
            "pred": torch.from_numpy(lab[None].astype(np.float32))}
    out = SaveMaskd("pred", output_dir=tmp_path / "masks")(item)
    dest = tmp_path / "masks" / "case_9_seg.nii.gz"
    assert out["saved_masks"] == [str(dest)]
    assert_same_geometry(src, dest)


def test_real_lidc_crop_geometry(tmp_path):
    root = shared("lidc_nodules")
    src = root / "LIDC-IDRI-0001_1_image.nii.gz"
    label = np.asarray(nib.load(str(root / "LIDC-IDRI-0001_1_nodule_mask.nii.gz")).dataobj)
    out = write_mask_like(label, src, tmp_path / "lidc_seg.nii.gz")
    assert_same_geometry(src, out)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), label)


def test_real_slicer_nrrd_geometry(tmp_path):
    src = shared("ct_chest_slicerio", "CTChest4.nrrd")
    ref = sitk.ReadImage(str(src))
    assert not np.allclose(ref.GetDirection(), np.eye(3).ravel())  # flipped axes: a real test of direction
    mask = (sitk.GetArrayFromImage(ref) > -300).astype(np.uint8).transpose()  # (i, j, k) like MONAI
    for ext in (".nii.gz", ".nrrd"):
        out = write_mask_like(mask, src, tmp_path / f"chest_seg{ext}")
        assert_same_geometry(src, out, tol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).transpose(), mask)
