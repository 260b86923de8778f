"""The brain MRI 2D bundle: slice-folder and volume loaders, per-patient Dice, and the bundle through
``python -m monai.bundle`` on phantom slices and volumes (and real LGG / BraTS files where present)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BRAIN_BUNDLE, BRAIN_TINY, CFG_EVAL, CFG_INFER, CFG_TRAIN, VENV_BIN, bundle, run_cmd, shared, \
    train_bundle_copy
from monai_pipeline.errors import DataError
from monai_pipeline.data.datasets import brain_datalist, image_datalist, lgg_datalist
from monai_pipeline.io.slices import read_slice
from monai_pipeline.evaluation.metrics import patient_dice, slice_scores
from monai_pipeline.evaluation.run import score_slice_folders
from test_io_masks import assert_same_geometry


@pytest.fixture(scope="session")
def brain_slices(tmp_path_factory) -> Path:
    """6 phantom patients of 12 slices (64 x 64 RGB TIFF + 0/255 masks) in the LGG layout."""
    from monai_pipeline.app.synthetic import write_brain_slices

    return write_brain_slices(tmp_path_factory.mktemp("lgg") / "lgg", num_patients=6, seed=1)


@pytest.fixture(scope="session")
def brain_volumes(tmp_path_factory) -> Path:
    """6 training and 2 test phantom volumes (FLAIR + T1c), half of them stored in RAS, half in LPS order."""
    from monai_pipeline.app.synthetic import write_brain_volumes

    out = tmp_path_factory.mktemp("bv") / "brain_volumes"
    write_brain_volumes(out, num_train=6, num_test=2, seed=2)
    return out


@pytest.fixture(scope="session")
def brain_trained(tmp_path_factory, brain_slices) -> Path:
    """A brain bundle copy trained for 3 epochs on the phantom slices."""
    return train_bundle_copy(BRAIN_BUNDLE, tmp_path_factory.mktemp("brain") / "brain", brain_slices, 3, BRAIN_TINY)


def _tif(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# ------------------------------------------------------------------------------------------- loaders
def test_real_lgg_layout_reads_per_patient(tmp_path):
    root = shared("lgg_kaggle_3m")
    stated = _lgg_source_table(root / "SOURCE.md")  # the data grows: the counts follow its own record
    assert len(stated) >= 35
    items = lgg_datalist(root)
    assert {d["case_id"]: len(d["image"]) for d in items} == {k: v[0] for k, v in stated.items()}
    first = next(d for d in items if d["case_id"] == "TCGA_CS_4942_19970222")
    assert [Path(f).name for f in first["image"][:3]] == [f"TCGA_CS_4942_19970222_{n}.tif" for n in (1, 2, 3)]
    assert all(Path(lab).name == Path(img).name.replace(".tif", "_mask.tif") for img, lab in zip(first["image"], first["label"]))
    assert read_slice(first["image"][0]).shape == (256, 256, 3)
    tumour = {d["case_id"]: sum(int(read_slice(lab, mask=True).any()) for lab in d["label"]) for d in items}
    assert tumour == {k: v[1] for k, v in stated.items()}  # slices with tumour, patient by patient


def _lgg_source_table(source: Path) -> dict[str, tuple[int, int]]:
    """``{patient folder: (slices, slices with tumour)}`` from the patient tables of the dataset's SOURCE.md."""
    rows = {}
    for line in source.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("TCGA_") and cells[2].isdigit() and cells[3].isdigit():
            rows[cells[0]] = (int(cells[2]), int(cells[3]))
    return rows


def test_splits_are_by_patient(brain_slices):
    parts = {s: brain_datalist(brain_slices, s, val_fraction=0.2, test_fraction=0.34, seed=4) for s in ("train", "val", "test")}
    ids = {s: {d["patient"] for d in v} for s, v in parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert set().union(*ids.values()) == {f"BRAINPH_{i:03d}" for i in range(6)} and all(ids.values())
    folds = [brain_datalist(brain_slices, "val", split_mode="kfold", num_folds=3, fold=k) for k in range(3)]
    assert sorted(d["patient"] for f in folds for d in f) == sorted(f"BRAINPH_{i:03d}" for i in range(6))
    # the same seed gives the same split; a volume dataset is split the same way
    assert brain_datalist(brain_slices, "val", seed=7) == brain_datalist(brain_slices, "val", seed=7)


def test_volume_dataset_lists_modalities(brain_volumes):
    items = brain_datalist(brain_volumes, "all")
    assert len(items) == 6 and all(len(d["image"]) == 2 for d in items)
    assert Path(items[0]["image"][0]).name == "brainph_000_flair.nii.gz"
    test = brain_datalist(brain_volumes, "test")
    assert [Path(d["image"][1]).name for d in test] == ["brainph_100_t1c.nii.gz", "brainph_101_t1c.nii.gz"]


BAD_SLICE_CASES = {
    "image without mask": (lambda f: f.with_name(f.name.replace(".tif", "_mask.tif")).unlink(), "image without its mask"),
    "mask without image": (lambda f: f.unlink(), "mask without its image"),
    "mask of another size": (lambda f: _tif(f.with_name(f.name.replace(".tif", "_mask.tif")), np.zeros((32, 64), np.uint8)),
                             "differs from image"),
    "mask values 0/128": (lambda f: _tif(f.with_name(f.name.replace(".tif", "_mask.tif")), np.full((64, 64), 128, np.uint8)),
                          "mask values must be 0/255 or 0/1"),
    "truncated image": (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "not a readable image"),
    "text file named .tif": (lambda f: f.write_text("not an image"), "not a readable image"),
    "empty image file": (lambda f: f.write_bytes(b""), "file is empty"),
    "colour mask": (lambda f: _tif(f.with_name(f.name.replace(".tif", "_mask.tif")),
                                   np.stack([np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8),
                                             np.zeros((64, 64), np.uint8)], -1)), "one channel"),
    "badly named slice": (lambda f: shutil.copy(f, f.with_name("scan.tif")), "slice name must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_SLICE_CASES))
def test_bad_slice_folders_are_refused_naming_the_file(brain_slices, tmp_path, case):
    root = tmp_path / "lgg"
    shutil.copytree(brain_slices, root)
    target = root / "BRAINPH_002" / "BRAINPH_002_7.tif"
    damage, message = BAD_SLICE_CASES[case]
    damage(target)
    with pytest.raises(DataError, match=message) as err:
        brain_datalist(root, "train")
    assert "BRAINPH_002" in str(err.value)


def test_volume_that_is_not_3d_is_refused(brain_volumes, tmp_path):
    root = tmp_path / "vols"
    shutil.copytree(brain_volumes, root)
    flair = root / "imagesTr" / "brainph_003_flair.nii.gz"
    img = nib.load(str(flair))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 0], img.affine), str(flair))
    with pytest.raises(DataError, match="brainph_003_flair.nii.gz: expected a 3D volume"):
        brain_datalist(root, "train")


def test_inference_list_refuses_mixed_kinds_and_can_skip_bad_slices(brain_slices, brain_volumes, tmp_path):
    slices = sorted((brain_slices / "BRAINPH_000").glob("*[0-9].tif"))[:3]
    volume = brain_volumes / "imagesTs" / "brainph_100_flair.nii.gz"
    with pytest.raises(DataError, match="mixes 2D slice images and 3D volumes"):
        image_datalist([*map(str, slices), str(volume)], slices=True)
    bad = tmp_path / "BROKEN_1.tif"
    bad.write_bytes(slices[0].read_bytes()[:300])
    with pytest.raises(DataError, match="BROKEN_1.tif"):
        image_datalist([str(bad), *map(str, slices)], slices=True)
    items = image_datalist([str(bad), *map(str, slices)], slices=True, skip_bad=True)
    assert [Path(d["image"][0]).name for d in items] == [p.name for p in slices]


# -------------------------------------------------------------------------------------- transforms
def test_slices_and_volumes_reach_the_network_alike(tmp_path):
    """One phantom written as TIFF slices, as an LPS volume and as an RAS volume gives the same input."""
    from monai.transforms import Compose, Orientationd

    from monai_pipeline.app.synthetic import _flip_ij, make_brain_phantom
    from monai_pipeline.transforms import BrainNormalized, LoadBrainImaged

    ph = make_brain_phantom(5, (48, 40, 6))
    flair = ph["flair"].round().astype(np.uint8)
    for k in range(6):
        _tif(tmp_path / "P" / f"P_{k + 1}.tif", np.ascontiguousarray(flair[:, :, k].T))
    nib.save(nib.Nifti1Image(flair.astype(np.float32), ph["affine"]), str(tmp_path / "lps.nii.gz"))
    nib.save(nib.Nifti1Image(flair[::-1, ::-1].astype(np.float32), _flip_ij(ph["affine"], flair.shape)),
             str(tmp_path / "ras.nii.gz"))
    chain = Compose([LoadBrainImaged("image"), Orientationd("image", axcodes="LPS"), BrainNormalized("image")])
    stack = chain({"image": [str(tmp_path / "P" / f"P_{k + 1}.tif") for k in range(6)]})["image"]
    for name in ("lps.nii.gz", "ras.nii.gz"):
        vol = chain({"image": str(tmp_path / name)})["image"]
        assert vol.shape == stack.shape == (1, 48, 40, 6)
        torch.testing.assert_close(vol.as_tensor(), stack.as_tensor(), atol=1e-4, rtol=1e-4)


def test_keep_components_acts_on_the_patients_stack_in_3d_and_keeps_labels_and_metadata():
    """``KeepComponentsd``: on a ``(1, H, W, S)`` label map (a patient's stacked slices) the rules connect across
    slices and through corners (26 neighbours); ``largest`` keeps one component, ``over10`` those with >= 10 % of
    its voxels; kept voxels keep their labels, the dtype and the MetaTensor's affine stay; on a ``(1, H, W)`` slice
    the rule is 2D (8 neighbours); ``all`` changes nothing; a bad rule or a map of two channels is refused."""
    from monai.data import MetaTensor

    from monai_pipeline.data import STACK_COMPONENT_RULES, check_component_rule
    from monai_pipeline.errors import DataError
    from monai_pipeline.transforms import KeepComponentsd

    m = np.zeros((1, 8, 8, 6), np.int64)
    m[0, 1:4, 1:4, 1:4] = 1                 # 27 voxels over three slices
    m[0, 2, 2, 2] = 2                      # another label inside it
    m[0, 4, 4, 4] = 1                      # touches the block at a corner only, one slice further: the same component
    m[0, 6:8, 6:8, 0] = 1                  # 4 voxels: 4/28 >= 10 %
    m[0, 7, 0, 5] = 1                      # 1 voxel: under 10 %
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    pred = MetaTensor(torch.as_tensor(m), affine=affine)
    largest = KeepComponentsd("pred", "largest")({"pred": pred})["pred"]
    assert isinstance(largest, MetaTensor) and torch.equal(largest.affine, affine) and largest.dtype == torch.int64
    expected = m.copy()
    expected[0, 6:8, 6:8, 0] = expected[0, 7, 0, 5] = 0
    assert np.array_equal(largest.numpy(), expected)  # the block, its label 2 and the corner voxel
    over10 = KeepComponentsd("pred", "over10")({"pred": pred})["pred"]
    expected[0, 6:8, 6:8, 0] = 1
    assert np.array_equal(over10.numpy(), expected)
    assert KeepComponentsd("pred")({"pred": pred})["pred"] is pred
    plain = KeepComponentsd("pred", "largest")({"pred": torch.as_tensor(m, dtype=torch.uint8)})["pred"]
    assert type(plain) is torch.Tensor and plain.dtype == torch.uint8 and int(plain.sum()) == 29
    kept = KeepComponentsd("pred", "largest")({"pred": m.astype(np.uint8)})["pred"]  # an array stays an array
    assert isinstance(kept, np.ndarray) and kept.dtype == np.uint8 and int(kept.sum()) == 29
    slice_ = np.zeros((1, 6, 6), np.uint8)
    slice_[0, 0:2, 0:2] = 1
    slice_[0, 2, 2] = 1                    # a corner neighbour in 2D: joins the square
    slice_[0, 5, 5] = 1
    assert int(KeepComponentsd("pred", "largest")({"pred": slice_})["pred"].sum()) == 5
    with pytest.raises(DataError, match="unknown component rule 'biggest' .keep_components.: give one of all, over10, "
                                        "largest, centre$"):
        KeepComponentsd("pred", "biggest")
    assert check_component_rule("centre") == "centre"  # the nodule bundle's crops
    assert STACK_COMPONENT_RULES == ("all", "over10", "largest")
    refused = (r"component rule 'centre' \(keep_components\) is not offered here \(it is for a crop centred on its "
               r"lesion\): give one of all, over10, largest$")
    with pytest.raises(DataError, match=refused):
        check_component_rule("centre", STACK_COMPONENT_RULES)
    with pytest.raises(DataError, match="unknown component rule 'biggest' .*: give one of all, largest$"):
        check_component_rule("biggest", ["all", "largest"])
    with pytest.raises(DataError, match=r"unknown component rule \['all'\]"):
        check_component_rule(["all"])
    for bad in (["all", "middle"], [], ["all", "all"], "all,largest"):
        with pytest.raises(ValueError, match="offered component rules"):
            check_component_rule("all", bad)
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 6\).*argmax"):
        KeepComponentsd("pred", "largest")({"pred": torch.zeros(2, 8, 8, 6)})


def test_normalisation_is_per_slice_and_channel():
    from monai_pipeline.transforms import BrainNormalized

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 32, 32, 3)
    x[:, 8:24, 8:24] = torch.rand(2, 16, 16, 3, generator=g) * torch.tensor([10.0, 200.0]).reshape(2, 1, 1, 1) + 5
    out = BrainNormalized("image")({"image": x})["image"]
    fg = out[:, 8:24, 8:24]
    torch.testing.assert_close(fg.mean(dim=(1, 2)), torch.zeros(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(fg.std(dim=(1, 2), unbiased=False), torch.ones(2, 3), atol=1e-4, rtol=0)
    assert float(out[:, :8].abs().max()) == 0.0  # background stays 0
    alone = BrainNormalized("image")({"image": x[..., 1]})["image"]  # one slice alone: same result
    torch.testing.assert_close(alone, out[..., 1])


def test_volume_normalisation_pools_the_slices_of_each_channel(caplog):
    """zscore_volume: one mean and std per channel over the head pixels of every slice, so a brighter slice stays
    brighter; slices with too little head stay 0; a lone slice is z-scored on its own, with a warning naming it."""
    from monai.data import MetaTensor

    from monai_pipeline.transforms import BrainNormalized

    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 32, 32, 4)
    x[:, 8:24, 8:24, :3] = torch.rand(2, 16, 16, 3, generator=g) + torch.tensor([1.0, 2.0, 4.0]) * torch.tensor(
        [1.0, 50.0]).reshape(2, 1, 1, 1)
    x[:, 0, 0, 3] = 7.0  # slice 3: one head pixel, below min_pixels
    out = BrainNormalized("image", mode="zscore_volume")({"image": x})["image"]
    fg = out[:, 8:24, 8:24, :3]
    torch.testing.assert_close(fg.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(fg.std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    means = fg.mean(dim=(1, 2))                                 # (channel, slice): the slices keep their order
    assert bool((means[:, 0] < means[:, 1]).all() and (means[:, 1] < means[:, 2]).all())
    assert float(out[..., 3].abs().max()) == 0.0 and float(out[:, :8].abs().max()) == 0.0
    assert "its own volume" not in caplog.text                 # a stack: no warning
    lone = MetaTensor(x[..., 1], meta={"filename_or_obj": "TCGA_XX_0000_1.tif"})
    alone = BrainNormalized("image", mode="zscore_volume")({"image": lone})["image"]
    torch.testing.assert_close(alone.as_tensor(), BrainNormalized("image")({"image": x[..., 1]})["image"])
    assert "TCGA_XX_0000_1.tif: one slice normalised as its own volume" in caplog.text
    with pytest.raises(ValueError, match="zscore_volume"):
        BrainNormalized("image", mode="volume")



def test_slice_context_stacks_neighbours_as_channel_blocks():
    """SliceContextd: block j of slice n is slice n + j - k, the nearest slice standing in at the stack's ends;
    a lone slice is its own neighbour; meta and spatial shape stay; k = 0 changes nothing."""
    from monai.data import MetaTensor

    from monai_pipeline.transforms import SliceContextd

    x = MetaTensor(torch.arange(5.0).reshape(1, 1, 1, 5).repeat(2, 3, 4, 1) + torch.tensor([0.0, 10.0]).reshape(
        2, 1, 1, 1), affine=torch.eye(4) * 3)  # channel c of slice n holds 10 c + n
    out = SliceContextd("image", context=1)({"image": x})["image"]
    assert out.shape == (6, 3, 4, 5) and torch.equal(out.affine, x.affine)
    assert out[:, 0, 0, 0].tolist() == [0, 10, 0, 10, 1, 11]  # slice 0: (slice 0 again, itself, slice 1)
    assert out[:, 0, 0, 2].tolist() == [1, 11, 2, 12, 3, 13]
    assert out[:, 0, 0, 4].tolist() == [3, 13, 4, 14, 4, 14]
    two = SliceContextd("image", context=2)({"image": x})["image"]
    assert two.shape == (10, 3, 4, 5) and two[::2, 0, 0, 1].tolist() == [0, 0, 1, 2, 3]
    lone = SliceContextd("image", context=1)({"image": x[..., 2]})["image"]
    assert lone.shape == (6, 3, 4) and lone[:, 0, 0].tolist() == [2, 12] * 3
    assert SliceContextd("image", context=0)({"image": x})["image"] is x
    with pytest.raises(ValueError, match="context"):
        SliceContextd("image", context=-1)


def test_flair_copies_follow_the_channel_blocks_of_slice_context():
    """With neighbours as channel blocks, one draw per sequence replaces that sequence in every block."""
    from monai_pipeline.transforms import RandCopyChanneld

    x = torch.arange(9.0).reshape(9, 1, 1).repeat(1, 2, 2)  # 3 blocks (slices) of (T1, FLAIR, T1c)
    t = RandCopyChanneld("image", source=1, prob=1.0, block=3)
    assert t({"image": x})["image"][:, 0, 0].tolist() == [1, 1, 1, 4, 4, 4, 7, 7, 7]
    t = RandCopyChanneld("image", source=1, prob=0.5, block=3)
    t.set_random_state(3)
    for _ in range(20):
        out = t({"image": x})["image"][:, 0, 0].reshape(3, 3) - torch.tensor([0.0, 3.0, 6.0]).reshape(3, 1)
        assert (out == out[0]).all() and out[0, 1] == 1  # the same sequences copied in every block
    with pytest.raises(ValueError, match="blocks of 4"):
        RandCopyChanneld("image", source=1, block=4)({"image": x})


def _train_augmentations(kind: type, **overrides) -> list:
    """The brain bundle's training augmentations of class ``kind`` with ``overrides`` (disabled ones left out)."""
    from monai_pipeline.app.bundles import resolve

    (chain,) = resolve("brain", "train", ["train#random_transforms"], **overrides)
    return [c for c in chain if isinstance(c, kind)]


def test_flair_copies_replace_other_channels_at_the_rate_asked():
    """RandCopyChanneld: each non-FLAIR channel becomes a FLAIR copy with probability ``prob``, independently;
    FLAIR and the meta data stay; the train config enables it only with ``flair_copy_prob`` > 0 and several
    channels."""
    from monai.data import MetaTensor

    from monai_pipeline.transforms import RandCopyChanneld

    t = RandCopyChanneld("image", source=1, prob=0.25)
    t.set_random_state(0)
    x = MetaTensor(torch.arange(3.0).reshape(3, 1, 1, 1).repeat(1, 4, 4, 2), affine=torch.eye(4) * 2)
    outs = [t({"image": x})["image"] for _ in range(2000)]
    copied = torch.stack([(o[:, 0, 0, 0] == 1.0) for o in outs]).float().mean(0)
    assert abs(copied[0] - 0.25) < 0.03 and abs(copied[2] - 0.25) < 0.03 and copied[1] == 1.0
    assert all(torch.equal(o.affine, x.affine) for o in outs[:5]) and torch.equal(x[:, 0, 0, 0], torch.arange(3.0))
    with pytest.raises(ValueError, match="source channel 3"):
        RandCopyChanneld("image", source=3)({"image": x})

    def enabled(**kw):
        return [c.channel_prob for c in _train_augmentations(RandCopyChanneld, **kw)]

    assert enabled() == [] and enabled(flair_copy_prob=0.2) == []  # the default: FLAIR alone, nothing to copy
    assert enabled(flair_copy_prob=0.2, channels=[0, 1, 2]) == [0.2] and enabled(channels=[0, 1, 2]) == []


def test_contrast_augmentation_is_the_shipped_recipes_and_follows_its_settings():
    """``contrast_prob`` > 0 adds a random gamma (``contrast_gamma``, on the image's own range) to the training
    augmentation: by default 0.3 on gammas 0.7-1.5, the ``cvaug`` recipe the shipped model trained with; at 0 the
    chain is the one the ``cv25d`` models (0.8.x) trained with (no extra random draw)."""
    import torch
    from monai.transforms import RandAdjustContrastd

    (default,) = _train_augmentations(RandAdjustContrastd)
    assert default.prob == 0.3 and default.adjuster.gamma == (0.7, 1.5)
    assert _train_augmentations(RandAdjustContrastd, contrast_prob=0) == []
    (t,) = _train_augmentations(RandAdjustContrastd, contrast_prob=0.3, contrast_gamma=[0.5, 0.6])
    assert t.prob == 0.3 and t.adjuster.gamma == (0.5, 0.6)
    t.set_random_state(0)
    t.prob = 1.0
    x = torch.linspace(-2.0, 3.0, 60).reshape(3, 4, 5)
    y = t({"image": x})["image"]
    assert y.min() == x.min() and abs(float(y.max() - x.max())) < 1e-5  # the range stays
    assert (y[(x > x.min()) & (x < x.max())] > x[(x > x.min()) & (x < x.max())]).all()  # gamma < 1 brightens


def test_train_precision_reaches_the_trainers_inferer_only():
    """``train_precision`` wraps the trainer's forward pass (default auto: bf16 where native, the shipped model's recipe);
    validation and inference keep their own inferer."""
    from monai_pipeline.app.bundles import resolve
    from monai_pipeline.engine.precision import PrecisionInferer, resolve_precision

    (default,) = resolve("brain", "train", ["train#inferer"])
    assert isinstance(default, PrecisionInferer) and default.requested == "auto" and default.channels_last
    assert default.precision == resolve_precision("auto", "cpu", training=True)  # bf16 on this CPU if native
    trainer, validator = resolve("brain", "train", ["train#inferer", "validate#inferer"], train_precision="bf16",
                                 channels_last=False)
    assert trainer.precision == "bf16" and not trainer.channels_last and not trainer.verify
    assert not isinstance(validator, PrecisionInferer)

# -------------------------------------------------------------------------------------------- metrics
def test_per_patient_dice_hand_checked(tmp_path):
    """Patient A: slice 1 pred 4 px / label 4 px / overlap 2; slice 2 pred 0 / label 2; slice 3 both empty.
    Slice Dice: 2*2/8 = 0.5, 0, 1 (both empty). Patient Dice = 2*2 / (4+4 + 0+2 + 0) = 0.4 (not the slice mean).
    Patient B: every slice empty in both: Dice 1."""
    z = np.zeros((4, 6), np.uint8)
    p1, g1, g2 = z.copy(), z.copy(), z.copy()
    p1[0, 0:4] = 1
    g1[0, 2:6] = 1
    g2[3, 0:2] = 1
    rows = slice_scores([p1, z, z], [g1, g2, z])
    assert [r["dice"] for r in rows] == [0.5, 0.0, 1.0]
    assert [r["iou"] for r in rows] == [2 / 6, 0.0, 1.0]
    assert [r["both_empty"] for r in rows] == [False, False, True]
    assert patient_dice(rows) == pytest.approx(0.4)
    # the same through files: predicted PNGs against an LGG-layout label folder, and through the CLI
    (tmp_path / "pred").mkdir()
    for k, (p, g) in enumerate([(p1, g1), (z, g2), (z, z)], start=1):
        for patient, pred, label in (("PATA", p, g), ("PATB", z, z)):
            _tif(tmp_path / "labels" / patient / f"{patient}_{k}.tif", np.zeros((4, 6, 3), np.uint8))
            _tif(tmp_path / "labels" / patient / f"{patient}_{k}_mask.tif", label * 255)
            Image.fromarray(pred * 255).save(tmp_path / "pred" / f"{patient}_{k}_mask.png")
    slices, patients = score_slice_folders(tmp_path / "pred", tmp_path / "labels")
    assert {p["patient"]: p["dice"] for p in patients} == {"PATA": pytest.approx(0.4), "PATB": 1.0}
    assert len(slices) == 6
    proc = run_cmd([str(VENV_BIN / "monai-pipeline"), "evaluate", "--pred", str(tmp_path / "pred"), "--label",
                    str(tmp_path / "labels"), "--out", str(tmp_path / "out")], cwd=tmp_path)
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["mean_patient_dice"] == pytest.approx(0.7) and summary["mean_slice_dice_tumour_slices"] == pytest.approx(0.25)
    assert "PATA" in proc.stdout and (tmp_path / "out" / "slice_metrics.csv").read_text().count("\n") == 7
    (tmp_path / "pred" / "PATC_1_mask.png").write_bytes((tmp_path / "pred" / "PATB_1_mask.png").read_bytes())
    proc = run_cmd([str(VENV_BIN / "monai-pipeline"), "evaluate", "--pred", str(tmp_path / "pred"), "--label",
                    str(tmp_path / "labels")], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "PATC_1_mask.png: no label mask" in proc.stderr


def test_threshold_foreground_is_the_argmax_at_one_half_and_the_lever_elsewhere():
    """``ThresholdForegroundd``: two-class probabilities ``(2, *spatial)`` to a ``(1, *spatial)`` label map, 1 where
    the foreground probability is above the threshold (as scripts/select_lgg_levers.py scores it); at 0.5 the
    argmax's masks; the MetaTensor's metadata and the dtype stay, an array stays an array; a threshold outside (0, 1)
    (here and in ``ResampleToSourced``, which the lung bundles' inference uses) or a map without two channels is
    refused."""
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from monai_pipeline.errors import DataError
    from monai_pipeline.transforms import ResampleToSourced, ThresholdForegroundd

    gen = torch.Generator().manual_seed(0)
    prob = torch.randn(2, 32, 24, 5, generator=gen).mul(3).softmax(0)
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    pred = MetaTensor(prob, affine=affine)
    half = ThresholdForegroundd("pred")({"pred": pred})["pred"]
    argmax = AsDiscreted("pred", argmax=True)({"pred": pred})["pred"]
    assert isinstance(half, MetaTensor) and torch.equal(half.affine, affine) and half.shape == (1, 32, 24, 5)
    assert half.dtype == argmax.dtype and torch.equal(half.as_tensor(), argmax.as_tensor())
    tie = ThresholdForegroundd("pred")({"pred": torch.full((2, 3, 3), 0.5)})["pred"]
    assert not tie.any()  # an exact tie is background, as the argmax makes it
    low = ThresholdForegroundd("pred", 0.3)({"pred": pred})["pred"]
    assert torch.equal(low[0].bool(), prob[1] > 0.3) and low.sum() > half.sum()  # more foreground, as asked
    arr = ThresholdForegroundd("pred", 0.7)({"pred": prob.numpy()})["pred"]
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and np.array_equal(arr[0] > 0, prob[1].numpy() > 0.7)
    for bad in (0, 1, 1.5, -0.1, "half", True, None):
        with pytest.raises(DataError, match=r"threshold .* \(prob_threshold\): give a number between 0 and 1"):
            ThresholdForegroundd("pred", bad)
        if bad is not None:  # None: ResampleToSourced returns the probability itself
            with pytest.raises(DataError, match=r"threshold .* \(ResampleToSourced threshold\): give a number between "
                                                r"0 and 1, such as 0.5 \(the argmax\)$"):
                ResampleToSourced("pred", "image", threshold=bad)
    with pytest.raises(ValueError, match=r"shape \(1, 32, 24, 5\).*softmax"):
        ThresholdForegroundd("pred")({"pred": half})


def test_brain_postprocessing_applies_the_levers_in_the_benchmarks_order():
    """inference.json and evaluate.json turn the network's output into a mask as scripts/select_lgg_levers.py
    scores it: softmax (of the flips' mean), back onto the slice's grid (Invertd, linear), the threshold, then the
    component rule; multi_gpu_inference.json runs inference.json's checks (threshold and rule included) too, the rule
    among ``STACK_COMPONENT_RULES`` (no ``centre``)."""
    from monai_pipeline.data import STACK_COMPONENT_RULES

    cfg = BRAIN_BUNDLE / "configs"
    for name in ("inference.json", "evaluate.json"):
        chain = json.loads((cfg / name).read_text())["postprocessing"]["transforms"]
        targets = [t["_target_"].rsplit(".", 1)[-1] for t in chain]
        assert targets[:4] == ["Activationsd", "Invertd", "ThresholdForegroundd", "KeepComponentsd"], (name, targets)
        assert chain[0]["softmax"] and not chain[1]["nearest_interp"] and chain[2]["threshold"] == "@prob_threshold"
    inference = json.loads((cfg / "inference.json").read_text())
    evaluate = json.loads((cfg / "evaluate.json").read_text())["initialize"]
    multi = json.loads((cfg / "multi_gpu_inference.json").read_text())["initialize"]
    rules = f"$monai_pipeline.data.check_component_rule(@keep_components, {list(STACK_COMPONENT_RULES)!r})"  # no centre
    assert {rules, "$monai_pipeline.data.check_foreground_threshold(@prob_threshold)"} <= set(inference["input_checks"])
    assert inference["initialize"][1] == evaluate[1] == "$@input_checks"  # one list, run by every workflow
    assert multi == ["$@device", *inference["initialize"]]


def _evaluate_scoring_its_masks(root: Path, data: Path, name: str, *options: str) -> Path:
    """Run evaluate.json on the trained bundle ``root`` into ``root/name`` with ``options``; MONAI's per-patient Dice
    must equal ours on the PNG masks it wrote. Returns the output folder."""
    run_cmd(bundle("run", "--config_file", CFG_EVAL, "--dataset_dir", str(data), "--val_fraction", "0.34", *options,
                   "--output_dir", name, *BRAIN_TINY), cwd=root)
    out = root / name
    raw = (out / "val_mean_dice_raw.csv").read_text().splitlines()
    _, patients = score_slice_folders(out / "predictions", data)
    assert {p["patient"]: p["dice"] for p in patients} == pytest.approx(
        {Path(r.split(",")[0]).parent.name: float(r.split(",")[-1]) for r in raw[1:]}, abs=1e-5)
    return out


# ---------------------------------------------------------------------------------------------- bundle
def test_bundle_trains_and_evaluates_per_patient_on_slices(brain_trained, brain_slices):
    log = (brain_trained / "train.log").read_text()
    assert "Epoch: 3/3" in log and "val_mean_dice" in log
    assert (brain_trained / "models" / "model.pt").is_file()
    run_cmd(bundle("run", "--config_file", CFG_EVAL, "--dataset_dir", str(brain_slices), "--val_fraction", "0.34",
                   *BRAIN_TINY), cwd=brain_trained)
    out = brain_trained / "eval"
    raw = (out / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 1 + 2 and (out / "val_mean_iou_raw.csv").is_file()  # two validation patients
    monai_dice = {Path(r.split(",")[0]).parent.name: float(r.split(",")[-1]) for r in raw[1:]}
    # MONAI's MeanDice on the stacked slices equals our per-patient Dice of the written PNG masks
    _, patients = score_slice_folders(out / "predictions", brain_slices)
    assert {p["patient"]: p["dice"] for p in patients} == pytest.approx(monai_dice, abs=1e-5)
    for png in sorted((out / "predictions").glob("*_mask.png"))[:4]:
        arr = np.asarray(Image.open(png))
        assert arr.shape == (64, 64) and set(np.unique(arr)) <= {0, 255}
        assert (out / "predictions" / png.name.replace("_mask", "_overlay")).is_file()

    # --keep_components largest: each patient's stacked prediction is the largest 26-connected component of the
    # plain one, and MONAI's Dice is still that of the written masks
    from scipy import ndimage

    from monai_pipeline.data.masks import largest_component

    largest = _evaluate_scoring_its_masks(brain_trained, brain_slices, "eval_largest", "--keep_components", "largest")
    specks = 0
    for patient in monai_dice:
        files = sorted((largest / "predictions").glob(f"{patient}_*_mask.png"), key=lambda f: int(f.stem.split("_")[-2]))
        kept = np.stack([np.asarray(Image.open(f)) > 0 for f in files], -1)
        plain = np.stack([np.asarray(Image.open(out / "predictions" / f.name)) > 0 for f in files], -1)
        assert kept.any() and np.array_equal(kept, largest_component(plain, full_connectivity=True))
        specks += ndimage.label(plain, np.ones((3, 3, 3)))[1] > 1
    assert specks  # the 3-epoch model scatters specks on some patient: the rule had something to remove

    # --prob_threshold 0.2: the plain masks grow, and MONAI's Dice is still that of the written masks
    low = _evaluate_scoring_its_masks(brain_trained, brain_slices, "eval_low", "--prob_threshold", "0.2")
    grown = 0
    for f in sorted((out / "predictions").glob("*_mask.png")):
        plain, lower = (np.asarray(Image.open(run / "predictions" / f.name)) > 0 for run in (out, low))
        assert not (plain & ~lower).any(), f.name
        grown += int((lower & ~plain).sum())
    assert grown


def test_slice_inference_keeps_each_size_and_skips_a_bad_slice(brain_trained, brain_slices, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((brain_slices / "BRAINPH_004").glob("BRAINPH_004_[3-5].tif")):
        shutil.copy(f, src / f.name)
    big = np.asarray(Image.open(src / "BRAINPH_004_3.tif").resize((80, 72)))  # another size: 80 wide, 72 high
    Image.fromarray(big).save(src / "OTHER_1.png")
    (src / "BROKEN_1.tif").write_bytes((src / "BRAINPH_004_4.tif").read_bytes()[:200])
    out = tmp_path / "out"
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", str(src), "--output_dir", str(out),
                          *BRAIN_TINY), cwd=brain_trained)
    assert "BROKEN_1.tif" in proc.stdout + proc.stderr and "skipped 1 unusable input" in proc.stdout + proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["BRAINPH_004_3_mask.png", "BRAINPH_004_4_mask.png", "BRAINPH_004_5_mask.png",
                            "OTHER_1_mask.png", "BRAINPH_004_3_overlay.png", "BRAINPH_004_4_overlay.png",
                            "BRAINPH_004_5_overlay.png", "OTHER_1_overlay.png"])
    assert np.asarray(Image.open(out / "OTHER_1_mask.png")).shape == (72, 80)
    assert np.asarray(Image.open(out / "OTHER_1_overlay.png")).shape == (72, 80, 3)


def test_cli_infer_with_brain_bundle(brain_trained, brain_slices, tmp_path):
    images = [str(p) for p in sorted((brain_slices / "BRAINPH_005").glob("BRAINPH_005_[12].tif"))]
    proc = run_cmd([str(VENV_BIN / "monai-pipeline"), "infer", "--bundle", "brain", "--images", *images,
                    "--ckpt-dir", str(brain_trained / "models"), "--output-dir", str(tmp_path / "o"),
                    "--set", "image_size=[64,64]", "--set", "num_workers=0"], cwd=tmp_path)
    assert "2 mask(s) written" in proc.stdout  # the defaults' context slices stack them: one case, two masks
    assert (tmp_path / "o" / "BRAINPH_005_1_mask.png").is_file()
    from monai_pipeline.app.api import segment

    result = segment(images, brain_trained / "models", tmp_path / "api", "brain", image_size=[64, 64], num_workers=0)
    assert [p.name for p in result.masks] == ["BRAINPH_005_1_mask.png", "BRAINPH_005_2_mask.png"]
    assert result.summary["written"] == 1 and result.summary["mask_files"] == {"written": 2, "done": 0, "failed": 0}


def test_torchrun_two_processes_give_the_single_process_slice_masks(brain_trained, brain_slices, tmp_path,
                                                                    monkeypatch):
    """The brain bundle's multi_gpu_inference.json: two gloo ranks share the cases (with the defaults' context
    slices, each patient's slices are one case), same masks as one process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads per process in both runs
    src = tmp_path / "in"
    src.mkdir()
    for patient in ("BRAINPH_004", "BRAINPH_005"):
        for f in sorted((brain_slices / patient).glob(f"{patient}_[1-2].tif")):
            shutil.copy(f, src / f.name)
    sets = ["--set", "image_size=[64,64]", "--set", "num_workers=0"]
    common = ["infer", "--bundle", "brain", "--images", str(src), "--ckpt-dir", str(brain_trained / "models")]
    run_cmd([str(VENV_BIN / "monai-pipeline"), *common, "--output-dir", str(tmp_path / "single"), *sets], cwd=tmp_path)
    proc = run_cmd([str(VENV_BIN / "torchrun"), "--nproc_per_node=2", "-m", "monai_pipeline", *common,
                    "--distributed", "--output-dir", str(tmp_path / "multi"), *sets], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "rank 0:" in log and "rank 1:" in log, log[-3000:]
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "multi").iterdir())
    assert sum(n.endswith("_mask.png") for n in names) == 4
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("single", "multi"))
        assert np.array_equal(a, b), name


def test_volumes_train_and_infer_in_source_geometry(brain_volumes, tmp_path):
    root = tmp_path / "brain"
    shutil.copytree(BRAIN_BUNDLE, root)
    common = ["--dataset_dir", str(brain_volumes), "--channels", "[0,1]", *BRAIN_TINY]
    run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--epochs", "1", "--val_interval", "1", *common), cwd=root)
    run_cmd(bundle("run", "--config_file", CFG_INFER, "--output_dir", str(tmp_path / "out"), *common), cwd=root)
    for case in ("brainph_100", "brainph_101"):  # one stored in LPS, one in RAS voxel order
        mask = tmp_path / "out" / f"{case}_flair_mask.nii.gz"
        assert_same_geometry(brain_volumes / "imagesTs" / f"{case}_flair.nii.gz", mask)



def test_slice_context_trains_and_infers_from_the_contract(brain_slices, tmp_path):
    """``context_slices`` 1: the network takes 3 slices' channels and the contract binds it. Inference reads it
    from there, stacks each patient's slice files (the neighbours the model was trained with) and writes the
    masks evaluation writes for the same patient; a rerun finds them done; a patient whose slices differ in size
    is refused naming the slice; a run that asks for another context is refused."""
    root = tmp_path / "brain"
    shutil.copytree(BRAIN_BUNDLE, root)
    common = ["--dataset_dir", str(brain_slices), "--val_fraction", "0.34", *BRAIN_TINY]
    run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--epochs", "1", "--val_interval", "1", "--context_slices", "1",
                   *common), cwd=root)
    contract = json.loads((root / "models" / "model.contract.json").read_text())
    assert contract["settings"]["context_slices"] == 1 and "context_slices" in contract["binding"]
    assert contract["settings"]["network_def"]["in_channels"] == 3
    run_cmd(bundle("run", "--config_file", CFG_EVAL, *common), cwd=root)
    evaluated = sorted((root / "eval" / "predictions").glob("*_mask.png"))
    patient = evaluated[0].name.rsplit("_", 2)[0]
    src = brain_slices / patient
    out = tmp_path / "out"
    run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", str(src), "--output_dir", str(out),
                   *BRAIN_TINY), cwd=root)
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == len(list(src.glob(f"{patient}_*[0-9].tif"))) > 3
    for m in masks:
        assert np.array_equal(np.asarray(Image.open(m)), np.asarray(Image.open(root / "eval" / "predictions" / m.name)))
    again = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", str(src), "--output_dir", str(out),
                           *BRAIN_TINY), cwd=root)
    assert "1 of 1 case(s) already have a complete mask" in again.stdout + again.stderr

    odd = tmp_path / "odd"
    shutil.copytree(src, odd)
    small = sorted(odd.glob(f"{patient}_*[0-9].tif"))[2]
    Image.open(small).resize((40, 40)).save(small)
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", str(odd), "--output_dir",
                          str(tmp_path / "odd_out"), *BRAIN_TINY), cwd=root, check=False)
    assert proc.returncode != 0 and f"{small}: its size 40 x 40 differs" in proc.stdout + proc.stderr
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", str(src), "--output_dir",
                          str(tmp_path / "refused"), "--context_slices", "0", *BRAIN_TINY), cwd=root, check=False)
    assert proc.returncode != 0 and "context_slices 0 given" in proc.stdout + proc.stderr
    for folder in ("odd_out", "refused"):
        assert not (tmp_path / folder).exists() or not any((tmp_path / folder).iterdir())

def test_keep_components_in_inference_takes_each_patient_whole_without_slice_context(brain_slices, tmp_path):
    """A model that reads each slice alone (``context_slices`` 0) still gets the component rule over the whole
    patient, as evaluate.json and the lever benchmark apply it: with ``keep_components`` other than ``all``,
    inference stacks each patient's slices, so its masks are the largest 3D component of the plain run's (per
    patient). A lower ``prob_threshold`` grows the masks, and the default threshold again into that folder remakes
    them all (the recorded settings changed), then skips them (the same settings). An unknown rule or a threshold
    outside (0, 1) stops the run with one ``error:`` line before anything is written."""
    from scipy import ndimage

    from monai_pipeline.data.masks import largest_component

    root = tmp_path / "brain"
    shutil.copytree(BRAIN_BUNDLE, root, ignore=shutil.ignore_patterns("eval", "data", "checkpoint_*", "*.ts"))
    run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--epochs", "2", "--val_interval", "2", "--context_slices", "0",
                   "--dataset_dir", str(brain_slices), "--val_fraction", "0.34", *BRAIN_TINY), cwd=root)
    assert json.loads((root / "models" / "model.contract.json").read_text())["settings"]["context_slices"] == 0
    patients = sorted(q for q in brain_slices.iterdir() if q.is_dir())
    n_slices = sum(1 for q in patients for f in q.glob("*.tif") if not f.stem.endswith("_mask"))
    for rule, cases in (("all", n_slices), ("largest", len(patients))):  # each slice alone; each patient one stack
        proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                              str(tmp_path / rule), "--keep_components", rule, *BRAIN_TINY), cwd=root)
        assert f"inference summary: {cases} written, 0 skipped as done, 0 failed" in proc.stdout + proc.stderr
    # --prob_threshold 0.2: each slice alone still; every plain mask's pixel stays and some pixels join
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                          str(tmp_path / "low"), "--prob_threshold", "0.2", *BRAIN_TINY), cwd=root)
    assert f"inference summary: {n_slices} written, 0 skipped as done, 0 failed" in proc.stdout + proc.stderr
    grown = 0
    for f in sorted((tmp_path / "all").glob("*_mask.png")):
        plain, low = (np.asarray(Image.open(tmp_path / run / f.name)) > 0 for run in ("all", "low"))
        assert not (plain & ~low).any(), f.name
        grown += int((low & ~plain).sum())
    assert grown  # a 2-epoch model has pixels with a tumour probability between 0.2 and 0.5
    for folder in patients:
        names = sorted((f.stem for f in folder.glob("*.tif") if not f.stem.endswith("_mask")),
                       key=lambda n: int(n.rsplit("_", 1)[1]))
        plain, kept = (np.stack([np.asarray(Image.open(tmp_path / rule / f"{n}_mask.png")) > 0 for n in names], -1)
                       for rule in ("all", "largest"))
        assert np.array_equal(kept, largest_component(plain, full_connectivity=True)), folder.name
    # the default threshold again into the low-threshold folder: every mask is made again, as the plain run's
    for again, (written, skipped) in enumerate(((n_slices, 0), (0, n_slices))):
        proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                              str(tmp_path / "low"), *BRAIN_TINY), cwd=root)
        log = proc.stdout + proc.stderr
        assert f"inference summary: {written} written, {skipped} skipped as done, 0 failed" in log
        assert ("prob_threshold: 0.2 -> 0.5" in log) == (again == 0)
    for f in sorted((tmp_path / "all").glob("*_mask.png")):
        assert (f.read_bytes() == (tmp_path / "low" / f.name).read_bytes()), f.name
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                          str(tmp_path / "bad"), "--keep_components", "biggest", *BRAIN_TINY), cwd=root, check=False)
    assert proc.returncode != 0 and "error: unknown component rule 'biggest' (keep_components)" in proc.stdout + proc.stderr
    assert not (tmp_path / "bad").exists()
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                          str(tmp_path / "bad"), "--prob_threshold", "1.5", *BRAIN_TINY), cwd=root, check=False)
    assert proc.returncode != 0 and "error: foreground probability threshold 1.5 (prob_threshold)" in proc.stdout + proc.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.monai-pipeline.settings.json").exists()
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                          str(tmp_path / "bad"), "--keep_components", "centre", *BRAIN_TINY), cwd=root, check=False)
    refused = ("error: component rule 'centre' (keep_components) is not offered here (it is for a crop centred on "
               "its lesion): give one of all, over10, largest")
    assert proc.returncode != 0 and refused in proc.stdout + proc.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.monai-pipeline.settings.json").exists()


def test_brain_inference_with_levers_writes_what_select_lgg_levers_scores(brain_slices, tmp_path, monkeypatch):
    """The bundle's inference with the three levers (flip, threshold 0.4, over10) writes, patient by patient, the
    masks scripts/select_lgg_levers.py scores for that variant: ``keep_components(probabilities(...) > 0.4, rule)``
    on the slices' own grid. The model's ``image_size`` (48) is not the slices' (64), so ``Invertd`` resamples the
    probabilities before the threshold in both."""
    from monai_pipeline.app.delineate import CropSegmenter
    from monai_pipeline.data.masks import keep_components

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from select_lgg_levers import probabilities, reference

    small = [a if a != "[64,64]" else "[48,48]" for a in BRAIN_TINY]
    root = tmp_path / "brain"
    shutil.copytree(BRAIN_BUNDLE, root, ignore=shutil.ignore_patterns("eval", "data", "checkpoint_*", "*.ts"))
    run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--epochs", "2", "--val_interval", "2", "--dataset_dir",
                   str(brain_slices), "--val_fraction", "0.34", *small), cwd=root)
    assert json.loads((root / "models" / "model.contract.json").read_text())["settings"]["image_size"] == [48, 48]
    levers = ["--tta_flips", "[[0]]", "--prob_threshold", "0.4", "--keep_components", "over10"]
    run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(brain_slices), "--output_dir",
                   str(tmp_path / "out"), *levers, "--num_workers", "0"), cwd=root)
    model = CropSegmenter(str(root), root / "models")
    foreground = 0
    for item in brain_datalist(brain_slices, "all", validate=False):
        expected = keep_components(probabilities([model], item, [[0]]) > 0.4, "over10")
        # the written PNGs read as the script reads its reference masks (LoadBrainImaged: its axis order)
        written = reference({"label": [str(tmp_path / "out" / f"{Path(f).stem}_mask.png") for f in item["image"]]})
        assert written.shape == expected.shape and np.array_equal(written, expected), Path(item["image"][0]).parent.name
        foreground += int(expected.sum())
    assert foreground  # a 2-epoch model marks some pixels: the comparison is not of empty masks


def test_real_brats_volume_through_the_slice_model(brain_trained, tmp_path):
    """A real BraTS volume (240 x 240 x 155, float32 labels) cut into slices by a model trained on slices:
    the mask keeps the volume's geometry and the evaluate workflow scores it against label > 0."""
    case = shared("brats2015", "brats_2013_pat0005_1")
    flair, t1c = case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"
    items = json.dumps([{"image": [str(flair), str(flair), str(t1c)], "label": str(case / "OTMultiClass.nii.gz")}])
    out = tmp_path / "brats"
    run_cmd(bundle("run", "--config_file", CFG_EVAL, "--eval_datalist", items, "--output_dir", str(out),
                   *BRAIN_TINY), cwd=brain_trained)
    mask = out / "predictions" / "Flair_subtrMeanDivStd_mask.nii.gz"
    assert_same_geometry(flair, mask)
    raw = (out / "val_mean_dice_raw.csv").read_text().splitlines()
    dice_monai = float(raw[1].split(",")[-1])
    p = np.asarray(nib.load(str(mask)).dataobj) > 0
    g = np.asarray(nib.load(str(case / "OTMultiClass.nii.gz")).dataobj) > 0
    expected = 2 * np.logical_and(p, g).sum() / (p.sum() + g.sum())
    assert dice_monai == pytest.approx(expected, abs=1e-5)


def test_cli_infer_uses_the_shipped_model_by_default(tmp_path):
    """``monai-pipeline infer --bundle brain`` without --ckpt-dir segments with the weights the bundle ships (its
    models/, the bundle's own ckpt_dir default), taking channels [1] and 256 x 256 from their contract."""
    from PIL import Image

    patient = shared("lgg_kaggle_3m", "TCGA_HT_7874_19950902")
    if not (BRAIN_BUNDLE / "models" / "model.pt").is_file():
        raise AssertionError(f"{BRAIN_BUNDLE}/models/model.pt is missing: the brain bundle ships its weights")
    image = patient / "TCGA_HT_7874_19950902_12.tif"  # a slice with tumour
    proc = run_cmd([str(VENV_BIN / "monai-pipeline"), "infer", "--bundle", "brain", "--images", str(image),
                    "--output-dir", str(tmp_path), "--set", "num_workers=0"], cwd=tmp_path)
    assert "channels=[1]" in proc.stdout + proc.stderr  # the contract's channels, logged as used
    mask = np.asarray(Image.open(tmp_path / f"{image.stem}_mask.png")) > 0
    truth = np.asarray(Image.open(patient / f"{image.stem}_mask.tif")) > 0
    assert truth.any() and 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.5
