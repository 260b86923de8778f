"""Speed options keep the output: exact geometry, and the same mask (or Dice within 0.01) as the slow path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_pipeline.io import write_nifti


def _preprocess(select_fn):
    from monai import transforms as T

    return T.Compose([
        T.LoadImaged("image", image_only=True), T.EnsureChannelFirstd("image"),
        T.Orientationd("image", axcodes="RAS", labels=None), T.Spacingd("image", (4.0, 4.0, 5.0), mode="bilinear"),
        T.CropForegroundd("image", source_key="image", select_fn=select_fn, margin=4, allow_smaller=True),
        T.ScaleIntensityRanged("image", -1000, 500, 0.0, 1.0, clip=True), T.EnsureTyped("image"),
    ])


def _fake_logits(x):
    """Two-class logits on the network grid: a ball of tumour (smooth edge) off-centre."""
    from monai.data import MetaTensor

    g = torch.from_numpy(np.indices(x.shape[1:]).astype(np.float32))
    centre = torch.tensor(x.shape[1:], dtype=torch.float32).view(3, 1, 1, 1) * torch.tensor([0.4, 0.6, 0.5]).view(3, 1, 1, 1)
    logit = (5.0 - ((g - centre) ** 2).sum(0).sqrt()) / 1.5
    return MetaTensor(torch.stack([torch.zeros_like(logit), logit]), affine=x.affine, meta=x.meta)


def _compare_with_invertd(path):
    from monai import transforms as T

    from monai_pipeline.transforms import BodyRegion, ResampleToSourced

    pre = _preprocess(BodyRegion())
    d = pre({"image": str(path)})
    d["pred"] = _fake_logits(d["image"])
    slow = T.Compose([T.Activationsd("pred", softmax=True),
                      T.Invertd("pred", pre, "image", nearest_interp=False, to_tensor=True),
                      T.AsDiscreted("pred", argmax=True)])(dict(d))["pred"]
    fast = ResampleToSourced("pred")(dict(d))["pred"]
    return np.asarray(slow[0]) > 0, np.asarray(fast[0])


@pytest.mark.parametrize("direction", ["identity", "flipped", "rotated"])
def test_resample_to_source_equals_invertd(tmp_path, direction):
    """The fast inversion gives the very mask Activationsd -> Invertd -> AsDiscreted gives, on any voxel order."""
    from monai_pipeline.synthetic import PhantomSpec, make_phantom

    img, _, aff = make_phantom(7, PhantomSpec((60, 56, 28), (2.1, 1.9, 3.0)), n_tumours=0, direction=direction)
    write_nifti(img, aff, tmp_path / "ct.nii.gz")
    slow, fast = _compare_with_invertd(tmp_path / "ct.nii.gz")
    assert fast.shape == img.shape and fast.dtype == np.uint8 and fast.sum() > 50
    assert np.array_equal(slow, fast > 0)


def test_resample_to_source_on_slicer_nrrd():
    """An LPS NRRD with flipped axes, as 3D Slicer writes it."""
    from conftest import shared

    slow, fast = _compare_with_invertd(shared("ct_chest_slicerio", "CTChest4.nrrd"))
    assert fast.sum() > 10 and np.array_equal(slow, fast > 0)


def test_resample_to_source_refuses_a_rotated_network_grid():
    from monai.data import MetaTensor

    from monai_pipeline.transforms import ResampleToSourced

    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    image = MetaTensor(torch.zeros(1, 8, 8, 8), meta={"original_affine": np.eye(4), "spatial_shape": (8, 8, 8),
                                                      "filename_or_obj": "ct.nii.gz"})
    pred = MetaTensor(torch.zeros(2, 8, 8, 8), affine=torch.as_tensor(rot))
    with pytest.raises(ValueError, match="ct.nii.gz.*rotated"):
        ResampleToSourced("pred")({"image": image, "pred": pred})


@pytest.mark.parametrize("direction", ["identity", "rotated"])
def test_lung_region_keeps_every_tumour_and_crops_more_than_the_body(tmp_path, direction):
    from monai_pipeline.synthetic import PhantomSpec, make_phantom
    from monai_pipeline.transforms import BodyRegion, LungRegion

    img, label, aff = make_phantom(5, PhantomSpec((96, 96, 48), (3.0, 3.0, 4.0)), n_tumours=3, direction=direction)
    write_nifti(img, aff, tmp_path / "ct.nii.gz")
    write_nifti(label, aff, tmp_path / "label.nii.gz")
    from monai import transforms as T

    sizes = {}
    for name, fn in (("body", BodyRegion()), ("lungs", LungRegion())):
        chain = T.Compose([T.LoadImaged(["image", "label"], image_only=True), T.EnsureChannelFirstd(["image", "label"]),
                           T.CropForegroundd(["image", "label"], source_key="image", select_fn=fn, margin=4,
                                             allow_smaller=True)])
        d = chain({"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
        assert int(d["label"].sum()) == int(label.sum())  # no tumour voxel cropped away
        sizes[name] = d["image"].numel()
    assert sizes["lungs"] < 0.9 * sizes["body"]


def test_lung_region_falls_back_to_the_body_without_lungs():
    from monai.data import MetaTensor

    from monai_pipeline.transforms import LungRegion

    x = torch.full((1, 30, 30, 20), -1000.0)
    x[:, 5:25, 5:25, :] = 40.0  # soft tissue only, no air inside
    mask = LungRegion()(MetaTensor(x, affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))))
    assert torch.equal(mask, x > -500)


def test_lung_region_is_the_body_region_when_asked_or_below_air():
    from monai.data import MetaTensor

    from monai_pipeline.transforms import LungRegion

    x = MetaTensor(torch.full((1, 8, 8, 8), -900.0), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    assert LungRegion(threshold_hu=-2000)(x).all()  # keep the whole volume (LIDC crops)
    assert not LungRegion(lungs=False)(x).any()
