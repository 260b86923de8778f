"""Speed options keep the output: exact geometry, and the same mask (or Dice within 0.01) as the slow path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_pipeline.io.images import write_nifti


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
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom

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
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom
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


# ------------------------------------------------------------------ PrecisionInferer and the bundle's switches
def test_precision_inferer_resolves_and_returns_float32():
    from monai.inferers import SimpleInferer

    from monai_pipeline.engine.precision import PrecisionInferer, cpu_bf16_supported, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_bf16_supported() else "fp32")
    assert resolve_precision("auto", "cuda") == "fp16" and resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", "cpu")
    # how a mask folder's settings record holds it: auto with what it resolved to here, explicit ones as given
    from monai_pipeline.engine.precision import precision_setting

    assert precision_setting("auto", "cpu") == f"auto ({resolve_precision('auto', 'cpu')})"
    assert precision_setting("auto", "cuda") == "auto (fp16)" and precision_setting("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        precision_setting("int8", "cpu")
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.rand(2, 1, 8, 8, 8)
    ref = net(x)
    out = PrecisionInferer(SimpleInferer(), "bf16", channels_last=True)(x, net)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == ref.shape
    assert torch.allclose(out, ref, atol=0.05) and not torch.equal(out, ref)  # bf16 was really used
    assert net.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(PrecisionInferer(SimpleInferer(), "fp32", channels_last=False)(x, net), net(x))
    net2d = torch.nn.Conv2d(3, 2, 3, padding=1)  # 2D networks (the brain bundle) take channels_last
    x2d = torch.rand(2, 3, 16, 16)
    out = PrecisionInferer(SimpleInferer(), "fp32", channels_last=True)(x2d, net2d)
    assert net2d.weight.is_contiguous(memory_format=torch.channels_last) and out.is_contiguous()
    assert torch.allclose(out, net2d(x2d.contiguous()), atol=1e-5)


@pytest.fixture(scope="module")
def segmenting(tmp_path_factory, tiny_msd):
    """A bundle copy trained long enough on the tiny phantoms to segment them (validation Dice 0.54).

    Trained in float32, which is bit-reproducible on the CPU: bf16 autocast training is not (run to run it
    gave different models, and once, on a fresh clone, one that had not learnt, mean Dice 0.03)."""
    import shutil

    from conftest import CFG_TRAIN, LUNG_BUNDLE, TINY, bundle, run_cmd

    root = tmp_path_factory.mktemp("segmenting") / "lung"
    shutil.copytree(LUNG_BUNDLE, root)
    run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--dataset_dir", str(tiny_msd), "--epochs", "80",
                   "--val_interval", "20", "--val_fraction", "0.34", "--learning_rate", "0.005",
                   "--early_stop_patience", "100", "--train_precision", "fp32", *TINY), cwd=root)
    return root


# every speed option off: float32, default layout, body crop, Invertd
SLOW_PATH = {"precision": "fp32", "channels_last": "False", "crop_lungs": "False", "fast_resample": "False"}
DEFAULTS = {"precision": "auto", "channels_last": "True", "crop_lungs": "True", "fast_resample": "True"}


def _all_phantoms(tiny_msd) -> list[dict]:
    """All 8 labelled phantoms (6 training, 2 test): a switch's effect is measured on more than the 2
    validation cases, so one case's noise does not decide."""
    pairs = [(p, tiny_msd / "labelsTr" / p.name) for p in sorted((tiny_msd / "imagesTr").glob("*.nii.gz"))]
    pairs += [(p, tiny_msd / "labelsTs" / p.name) for p in sorted((tiny_msd / "imagesTs").glob("*.nii.gz"))]
    return [{"image": str(i), "label": str(lab)} for i, lab in pairs]


def _evaluate(root, tiny_msd, out, options: dict) -> dict:
    import json

    from conftest import CFG_EVAL, TINY, bundle, run_cmd

    overrides = [a for k, v in options.items() for a in (f"--{k}", v)]
    run_cmd(bundle("run", "--config_file", CFG_EVAL, "--data",
                   json.dumps(_all_phantoms(tiny_msd)), "--output_dir", str(out), *overrides, *TINY), cwd=root)
    return _cases(out)


def _cases(out) -> dict:
    import json

    return {r["case_id"]: r for r in json.loads((out / "metrics.json").read_text())["cases"]}


@pytest.mark.parametrize("option", ["precision=bf16", "channels_last=True", "crop_lungs=True", "fast_resample=True",
                                    "defaults"])
def test_speed_option_keeps_geometry_and_dice(segmenting, tiny_msd, tmp_path, option):
    """Each switch of the lung bundle (and all defaults together) against every switch off, on the 8 phantoms
    with a model that does segment them: masks in the source geometry; mean Dice over the 8 within 0.01
    for precision, layout and resampling (layout and resampling: each case within 0.01 too; bf16 moves a
    few voxels of these 4 mm phantoms' small tumours, about 0.01 of one case's Dice). The lung crop
    changes what the network sees (window placement, context at the crop's edge), which moves single cases
    either way: for it, and for the defaults that include it, the mean is no more than 0.01 worse."""
    from test_io_masks import assert_same_geometry

    slow_dir = segmenting / "eval_slow"
    if not (slow_dir / "metrics.json").is_file():
        _evaluate(segmenting, tiny_msd, slow_dir, SLOW_PATH)
    slow = _cases(slow_dir)
    options = DEFAULTS if option == "defaults" else {**SLOW_PATH, **dict([option.split("=")])}
    fast = _evaluate(segmenting, tiny_msd, tmp_path / "eval", options)
    assert set(fast) == set(slow) and len(slow) == 8
    slow_mean = np.mean([r["dice"] for r in slow.values()])
    fast_mean = np.mean([r["dice"] for r in fast.values()])
    assert slow_mean > 0.3  # the comparison means something
    name = option.split("=")[0]
    if name in ("channels_last", "fast_resample"):  # the same arithmetic up to summation order: each case
        for case, row in slow.items():
            assert abs(fast[case]["dice"] - row["dice"]) <= 0.01, (case, option, fast[case]["dice"], row["dice"])
    if name in ("precision", "channels_last", "fast_resample"):
        assert abs(fast_mean - slow_mean) <= 0.01, (option, fast_mean, slow_mean)
    else:
        assert fast_mean >= slow_mean - 0.01, (option, fast_mean, slow_mean)
    for item in _all_phantoms(tiny_msd):
        name = item["image"].rsplit("/", 1)[-1].replace(".nii.gz", "")
        assert_same_geometry(item["image"], tmp_path / "eval" / "predictions" / f"{name}_seg.nii.gz")
