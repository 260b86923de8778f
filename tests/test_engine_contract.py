"""Every model carries its contract: ``model.contract.json`` beside ``model.pt``, written with the weights and read
back by inference (CLI, Python API, plain ``python -m monai.bundle run``), evaluation and ``ckpt_export``.

One lung model is trained with non-default spacing and patch size (conftest.TINY) and one brain model with
non-default channels; inference without overrides must give the masks of an inference that repeats the training
overrides, an override that contradicts the contract is refused, and a model without a contract runs with the
bundle's settings after one warning.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BRAIN_BUNDLE, CFG_INFER, LUNG_BUNDLE, TINY, VENV_BIN, bundle, run_cmd

CLI = str(VENV_BIN / "monai-pipeline")
TINY_SETTINGS = {TINY[i].lstrip("-"): json.loads(TINY[i + 1]) for i in range(0, len(TINY), 2)}
RUNTIME = {"num_workers": 0, "sw_batch_size": 2}  # not part of a model: given to every run alike
OTHER_GRID = {"pixdim": [3.0, 3.0, 4.0], "patch_size": [32, 32, 16]}  # not the model's spacing


class _Records(logging.Handler):
    """Log records of the package (MONAI's bundle run replaces the root logger's handlers, where caplog hangs)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "_Records":
        logging.getLogger("monai_pipeline").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("monai_pipeline").removeHandler(self)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*_seg.nii.gz"))}


def _infer(model_dir: Path, images, out: Path, bundle_name: str = "lung", **overrides):
    """One inference through the Python API's path (monai_pipeline.app.bundles.run_bundle); the finished workflow."""
    from monai_pipeline.app.bundles import run_bundle

    return run_bundle(bundle_name, "inference", datalist=images, ckpt_dir=str(model_dir), output_dir=str(out),
                      **overrides)


@pytest.fixture(scope="module")
def lung_model(tmp_path_factory, tiny_msd) -> Path:
    """The lung bundle trained for 1 epoch through the Python API with TINY's spacing and patch size."""
    from monai_pipeline import train

    work = tmp_path_factory.mktemp("contract_lung")
    return train(tiny_msd, epochs=1, val_interval=1, val_fraction=0.34, ckpt_dir=str(work / "models"),
                 output_dir=str(work / "train"), **TINY_SETTINGS)


# ------------------------------------------------------------------------------------------- the file
def test_contract_beside_model_matches_weights_and_model_loads_strictly(lung_model):
    from ignite.engine import Engine
    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointLoader

    from monai_pipeline.data.validate import read_model_contract
    from monai_pipeline.engine import SCHEMA_VERSION, file_sha256
    from monai_pipeline.engine.contract import REQUIRED_FIELDS

    weights, path = lung_model / "model.pt", lung_model / "model.contract.json"
    data = read_model_contract(path, SCHEMA_VERSION, REQUIRED_FIELDS)  # JSON, every field, schema, binding values
    assert data["schema"] == SCHEMA_VERSION
    assert data["weights"] == {"file": "model.pt", "sha256": file_sha256(weights), "bytes": weights.stat().st_size}
    assert set(data["binding"]) == {"pixdim", "orientation", "hu_window", "num_classes", "network_def", "labels"}
    # the training window and the region cropped around the lungs: defaults, not binding
    assert sorted(data["defaults"]) == ["body_threshold_hu", "crop_lungs", "patch_size"]
    settings = data["settings"]
    assert settings["pixdim"] == TINY_SETTINGS["pixdim"] and settings["patch_size"] == TINY_SETTINGS["patch_size"]
    assert settings["orientation"] == "RAS" and settings["hu_window"] == [-1000, 500]
    assert settings["network_def"]["_target_"] == "monai.networks.nets.unet.UNet"
    assert settings["network_def"]["out_channels"] == settings["num_classes"] == 2  # references resolved
    assert settings["labels"] == [{"value": 0, "name": "background"}, {"value": 1, "name": "tumour"}]
    meta = json.loads((LUNG_BUNDLE / "configs" / "metadata.json").read_text())
    assert data["bundle"] == {"name": meta["name"], "version": meta["version"]}
    assert set(data["software"]) >= {"python", "torch", "monai", "monai_pipeline"} and data["created"]
    assert "git_revision" in data

    # model.pt is the network's plain state dict, as MONAI's (and MONAI Label's) strict CheckpointLoader wants
    parser = ConfigParser()
    parser.read_config(str(LUNG_BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(LUNG_BUNDLE), "ckpt_dir": str(lung_model)})
    net = parser.get_parsed_content("network_def")
    CheckpointLoader(load_path=str(weights), load_dict={"model": net}, strict=True, map_location="cpu")(
        Engine(lambda engine, batch: None))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert set(state) == set(net.state_dict())


# ------------------------------------------------------------------------------------------- inference
def test_inference_without_overrides_uses_the_models_settings(lung_model, tiny_msd, tmp_path):
    # a plain MONAI bundle run, from a copy of the bundle, given only the model folder
    root = tmp_path / "lung"
    shutil.copytree(LUNG_BUNDLE, root)
    run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(tiny_msd), "--ckpt_dir", str(lung_model),
                   "--output_dir", str(tmp_path / "plain"), "--num_workers", "0", "--sw_batch_size", "2"), cwd=root)
    images = str(tiny_msd / "imagesTs")
    _infer(lung_model, images, tmp_path / "repeated", **TINY_SETTINGS)  # the training overrides given again
    forced = _infer(lung_model, images, tmp_path / "forced", contract_override=True, **OTHER_GRID, **RUNTIME)
    assert forced.parser.get_parsed_content("pixdim") == OTHER_GRID["pixdim"]

    plain, repeated, other = (_masks(tmp_path / d) for d in ("plain", "repeated", "forced"))
    assert list(plain) == ["lung_100_seg.nii.gz", "lung_101_seg.nii.gz"]
    for name in plain:
        assert np.array_equal(plain[name], repeated[name]), name  # voxel for voxel
    assert any(not np.array_equal(plain[n], other[n]) for n in plain)  # the settings matter: this test can fail


def test_contradicting_override_is_refused_in_one_line_and_a_larger_window_is_not(lung_model, tiny_msd, tmp_path):
    out = tmp_path / "masks"
    proc = run_cmd([CLI, "infer", "--images", str(tiny_msd / "imagesTs"), "--ckpt-dir", str(lung_model),
                    "--output-dir", str(out), "--set", "pixdim=[3,3,4]"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "pixdim [3, 3, 4] given" in errors[0] and "[4.0, 4.0, 5.0]" in errors[0]
    assert str(lung_model / "model.contract.json") in errors[0] and "contract_override" in errors[0]
    assert not out.exists() or not any(out.iterdir())

    larger = _infer(lung_model, str(tiny_msd / "imagesTs"), tmp_path / "larger", patch_size=[48, 48, 32], **RUNTIME)
    assert tuple(larger.parser.get_parsed_content("sw_inferer").roi_size) == (48, 48, 32)
    assert larger.parser.get_parsed_content("pixdim") == TINY_SETTINGS["pixdim"]
    assert len(_masks(tmp_path / "larger")) == 2


def test_evaluation_uses_the_contract(lung_model, tiny_msd, tmp_path):
    from monai_pipeline.app.bundles import run_bundle

    flow = run_bundle("lung", "evaluate", dataset_dir=str(tiny_msd), ckpt_dir=str(lung_model), val_fraction=0.34,
                      output_dir=str(tmp_path / "eval"), **RUNTIME)
    assert flow.parser.get_parsed_content("pixdim") == TINY_SETTINGS["pixdim"]
    assert (tmp_path / "eval" / "val_mean_dice_raw.csv").is_file()


def test_model_without_contract_runs_with_bundle_settings_after_one_warning(lung_model, tmp_path):
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom
    from monai_pipeline.io.images import write_nifti

    old = tmp_path / "old_models"
    old.mkdir()
    shutil.copy(lung_model / "model.pt", old / "model.pt")  # a model saved before contracts
    img, _, aff = make_phantom(7, PhantomSpec((24, 24, 12), (6.0, 6.0, 8.0)))
    image = str(write_nifti(img, aff, tmp_path / "small.nii.gz"))
    with _Records() as log:
        flow = _infer(old, [image], tmp_path / "masks", **RUNTIME)
    contract_warnings = [m for m in log.warnings() if "contract" in m]
    assert len(contract_warnings) == 1 and "has no contract" in contract_warnings[0], log.warnings()
    assert flow.parser.get_parsed_content("pixdim") == [1.5, 1.5, 2.0]  # the bundle's own defaults
    assert flow.parser.get_parsed_content("patch_size") == [96, 96, 64]
    assert (tmp_path / "masks" / "small_seg.nii.gz").is_file()


def test_network_comes_from_the_contract_in_export_and_a_wholesale_override_must_match(tmp_path):
    """A model whose network differs from the bundle's default: ckpt_export builds the contract's network (a strict
    load of its weights), and a network_def replaced whole that is not the model's is refused."""
    from monai.bundle import ConfigParser, ckpt_export
    from monai.networks.nets import UNet

    from monai_pipeline.engine import check_contract, contract_network, new_contract, read_contract, write_contract
    from monai_pipeline.errors import DataError

    small = functools.partial(UNet, spatial_dims=3, in_channels=1, out_channels=2, channels=[4, 8, 16],
                              strides=[2, 2], num_res_units=1)
    net = contract_network(None, small)
    models = tmp_path / "models"
    models.mkdir()
    torch.save(net.state_dict(), models / "model.pt")
    settings = {"binding": {"pixdim": [2.0, 2.0, 2.0], "network_def": net}, "defaults": {"patch_size": [32, 32, 32]}}
    write_contract(models / "model.pt", new_contract(settings, LUNG_BUNDLE))

    ts = models / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(models / "model.pt"),
                meta_file=str(LUNG_BUNDLE / "configs" / "metadata.json"),
                config_file=str(LUNG_BUNDLE / "configs" / "inference.json"), bundle_root=str(LUNG_BUNDLE),
                ckpt_dir=str(models))
    exported = torch.jit.load(str(ts), map_location="cpu").eval()
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(exported(x).numpy(), net.eval()(x).numpy(), rtol=1e-4, atol=1e-5)

    parser = ConfigParser()
    parser.read_config(str(LUNG_BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(LUNG_BUNDLE), "ckpt_dir": str(models),
                   "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                   "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2}})
    with pytest.raises(DataError, match=r"network_def UNet \(a component of its own\) given, the model's contract has "
                                        r"UNet\(.*num_res_units=1"):
        check_contract(read_contract(models), parser.get_parsed_content("contract_settings"), LUNG_BUNDLE)
    parser["network_def#num_res_units"] = 1  # the same network written whole: accepted
    parser.parse(reset=True)
    check_contract(read_contract(models), parser.get_parsed_content("contract_settings"), LUNG_BUNDLE)


def test_a_contract_of_other_weights_is_refused(lung_model, tmp_path):
    from monai_pipeline.engine import read_contract
    from monai_pipeline.errors import DataError

    models = tmp_path / "models"
    shutil.copytree(lung_model, models, ignore=shutil.ignore_patterns("checkpoint_*"))
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, models / "model.pt")  # other weights, the old contract left beside them
    with pytest.raises(DataError, match="describes other weights"):
        read_contract(models)


# ------------------------------------------------------------------------------------------- brain
def test_brain_contract_records_channels_and_inference_uses_them(tmp_path):
    from monai_pipeline import train
    from monai_pipeline.app.synthetic import write_brain_slices

    data = write_brain_slices(tmp_path / "lgg", num_patients=3, seed=4, num_slices=4)
    models = train(data, bundle="brain", epochs=1, val_interval=1, val_fraction=0.34, ckpt_dir=str(tmp_path / "models"),
                   output_dir=str(tmp_path / "train"), channels=[0, 2], image_size=[64, 64], num_workers=0,
                   num_samples=2, context_slices=0)  # each slice alone: the channels are the input (context: below)
    contract = json.loads((models / "model.contract.json").read_text())
    assert contract["settings"]["channels"] == [0, 2] and "channels" in contract["binding"]
    assert contract["settings"]["image_size"] == [64, 64] and contract["settings"]["network_def"]["in_channels"] == 2
    assert contract["inputs"]["image"]["modality"] == "MR"  # what the channels hold, from the metadata
    # ... but the channels are the model's own, not the metadata's default FLAIR channel
    assert contract["inputs"]["image"]["num_channels"] == 2
    assert contract["inputs"]["image"]["channel_def"] == {"0": "channel 0 of the source", "1": "channel 2 of the source"}

    images = [str(p) for p in sorted((data / "BRAINPH_002").glob("BRAINPH_002_[12].tif"))]
    plain = _infer(models, images, tmp_path / "plain", "brain", num_workers=0)
    assert plain.parser.get_parsed_content("channels") == [0, 2]
    _infer(models, images, tmp_path / "repeated", "brain", num_workers=0, channels=[0, 2], image_size=[64, 64])
    from PIL import Image

    names = sorted(p.name for p in (tmp_path / "plain").glob("*_mask.png"))
    assert len(names) == 2
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("plain", "repeated"))
        assert np.array_equal(a, b), name


def test_contract_inputs_describe_context_slices_channel_by_channel():
    """With ``context_slices`` k each input channel is one source channel of one slice offset, in the order
    ``SliceContextd`` stacks them (blocks of slices n - k .. n + k); a network whose in_channels fits neither
    is described by channel number."""
    from monai.networks.nets import UNet

    from monai_pipeline.engine.contract import contract_network, new_contract

    def settings(in_channels, **binding):
        net = contract_network(None, functools.partial(UNet, spatial_dims=2, in_channels=in_channels, out_channels=2,
                                                       channels=(4, 8), strides=(2,)))
        return {"binding": {**binding, "network_def": net}, "defaults": {}}

    image = new_contract(settings(6, channels=[0, 2], context_slices=1), BRAIN_BUNDLE)["inputs"]["image"]
    assert image["num_channels"] == 6 and list(image["channel_def"].values()) == [
        f"channel {c} of the source, slice offset {o}" for o in ("-1", "+0", "+1") for c in (0, 2)]
    image = new_contract(settings(5, channels=[1], context_slices=1), BRAIN_BUNDLE)["inputs"]["image"]
    assert image["num_channels"] == 5 and image["channel_def"] == {str(i): f"input channel {i}" for i in range(5)}
