"""The lung bundle through the real ``python -m monai.bundle`` entry point, on tiny synthetic phantoms.

One session-scoped training run (conftest.trained) provides the model that evaluate, inference, export and resume reuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import (CFG_EVAL, CFG_INFER, CFG_MULTI_GPU_TRAIN, CFG_TRAIN, LUNG_BUNDLE, ROOT, TINY, VENV_BIN, bundle,
                      run_cmd, shared)
from test_io_masks import assert_same_geometry


def test_train_writes_model_checkpoint_and_logs(trained):
    assert (trained / "models" / "model.pt").is_file()
    assert (trained / "models" / "checkpoint_epoch=2.pt").is_file()
    assert list((trained / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    log = (trained / "train.log").read_text()
    assert "Epoch: 2/2" in log and "val_mean_dice" in log
    ckpt = torch.load(trained / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "lr_scheduler", "trainer"}
    assert ckpt["trainer"]["iteration"] == 2 * ckpt["trainer"]["epoch_length"]  # two full epochs


def test_resume_continues_from_latest_checkpoint(trained, tiny_msd, tmp_path):
    root = tmp_path / "lung"
    shutil.copytree(trained, root)
    proc = run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--dataset_dir", str(tiny_msd), "--epochs", "3",
                          "--val_interval", "1", "--val_fraction", "0.34", "--resume", "True", *TINY), cwd=root)
    log = proc.stdout + proc.stderr
    assert "Epoch: 3/3" in log
    assert "Epoch: 1/3" not in log and "Epoch: 2/3" not in log  # epochs 1-2 came from the checkpoint
    assert (root / "models" / "checkpoint_epoch=3.pt").is_file()
    ckpt = torch.load(root / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3 * ckpt["trainer"]["epoch_length"]
    assert ckpt["lr_scheduler"]["T_max"] == 3  # the cosine horizon follows the new epoch count


def test_evaluate_writes_per_case_metrics(trained, tiny_msd):
    run_cmd(bundle("run", "--config_file", CFG_EVAL, "--dataset_dir", str(tiny_msd), "--val_fraction", "0.34",
                   *TINY), cwd=trained)
    raw = (trained / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[0].startswith("filename") and len(raw) == 1 + 2  # two validation phantoms
    preds = sorted((trained / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 2
    for pred, row in zip(preds, sorted(raw[1:])):
        source = tiny_msd / "imagesTr" / pred.name.replace("_seg", "")
        assert_same_geometry(source, pred)
        # the reported Dice is that of the saved mask against the label file as it is on disk
        p = np.asarray(nib.load(str(pred)).dataobj) > 0
        g = np.asarray(nib.load(str(source).replace("imagesTr", "labelsTr")).dataobj) > 0
        expected = 2 * (p & g).sum() / (p.sum() + g.sum()) if (p.sum() + g.sum()) else None
        if expected is not None and g.sum():
            assert abs(float(row.split(",")[-1]) - expected) < 1e-4
    # and the same files as `monai-pipeline evaluate --images`, with the same Dice as MONAI's MeanDice
    ours = json.loads((trained / "eval" / "metrics.json").read_text())["cases"]
    monai_dice = {r.split(",")[0].split("/")[-1].replace(".nii.gz", ""): float(r.split(",")[-1]) for r in raw[1:]}
    for row in ours:
        if row["volume_label_ml"] > 0:
            assert abs(row["dice"] - monai_dice[row["case_id"]]) < 1e-4
    for name in ("metrics.csv", "lesions.csv", "detection.json", "presence.json", "burden.csv"):
        assert (trained / "eval" / name).is_file(), name


def test_inference_masks_in_source_geometry(trained, tiny_msd, tmp_path):
    out = tmp_path / "masks"
    run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(tiny_msd), "--output_dir", str(out),
                   *TINY), cwd=trained)
    sources = sorted((tiny_msd / "imagesTs").glob("*.nii.gz"))
    directions = set()
    for src in sources:
        mask = out / src.name.replace(".nii.gz", "_seg.nii.gz")
        assert_same_geometry(src, mask)
        assert set(np.unique(np.asarray(nib.load(str(mask)).dataobj))) <= {0, 1}
        directions.add(tuple(np.round(nib.load(str(src)).affine[:3, :3].ravel(), 3)))
    assert len(directions) == len(sources)  # the test phantoms really differ in orientation
    # the settings that made them, beside the folder: precision "auto" with what it resolved to on this machine
    from monai_pipeline.engine.inference import settings_path
    from monai_pipeline.engine.precision import resolve_precision

    record = json.loads(settings_path(out).read_text())
    assert record["precision"] == f"auto ({resolve_precision('auto', 'cpu')})" and record["keep_components"] == "all"
    assert record["verify_precision"] is True  # auto verifies its reduced-precision outputs unless told otherwise
    # --keep_components: the plain masks after the rule, on their own grid (the spacing from the mask's header)
    from monai_pipeline.data.masks import keep_components

    # (the tiny model's masks may hold one component, so this checks the chain and the geometry; what the rules
    # remove is tested on maps built for it above and on the real nodule crops: test_docs.py, slow)
    for rule in ("largest", "centre"):
        run_cmd(bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(tiny_msd), "--output_dir",
                       str(tmp_path / rule), "--keep_components", rule, *TINY), cwd=trained)
        for src in sources:
            name = src.name.replace(".nii.gz", "_seg.nii.gz")
            plain, kept = (nib.load(str(folder / name)) for folder in (out, tmp_path / rule))
            assert_same_geometry(src, tmp_path / rule / name)
            expected = keep_components(np.asarray(plain.dataobj), rule, plain.header.get_zooms()[:3])
            assert np.array_equal(np.asarray(kept.dataobj) > 0, expected), (rule, name)


def test_centre_component_rule_keeps_the_lesion_at_the_crop_centre_by_its_spacing():
    """``keep_components="centre"`` (the nodule bundle's lever, as scripts/select_lidc_levers.py scores it): the
    26-connected component holding the centre voxel; else the nearest within 5 mm, measured with the voxel
    spacing of the MetaTensor's affine; else nothing. The other rules are unchanged on the same map."""
    from monai.data import MetaTensor

    from monai_pipeline.data.masks import component_at, keep_components
    from monai_pipeline.transforms import KeepComponentsd

    m = np.zeros((21, 21, 9), np.uint8)  # centre voxel (10, 10, 4)
    m[8:13, 8:13, 3:6] = 1  # the nodule at the centre: 75 voxels
    m[0:6, 0:6, 0:9] = 1  # a larger blob in a corner: 324 voxels
    m[18, 18, 8] = 1
    spacing = [0.7, 0.7, 1.25]
    aff = torch.diag(torch.tensor([-0.7, -0.7, 1.25, 1.0]))  # flipped axes: the spacing is the columns' length
    out = KeepComponentsd("pred", "centre")({"pred": MetaTensor(torch.as_tensor(m)[None], affine=aff)})["pred"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, aff) and out.dtype == torch.uint8
    assert int(out.sum()) == 75 and out[0, 10, 10, 4] == 1 and out[0, 0, 0, 0] == 0
    assert int(keep_components(m, "largest").sum()) == 324 and int(keep_components(m, "over10").sum()) == 399
    # the centre voxel off the nodule: the nearest component within 5 mm, by the spacing
    off = m.copy()
    off[8:13, 8:13, 3:6] = 0
    off[10, 14:17, 4] = 1  # 4 voxels from the centre along j: 2.8 mm at 0.7 mm, 10 mm at 2.5 mm
    assert int(component_at(off, (10, 10, 4), spacing).sum()) == 3
    assert not component_at(off, (10, 10, 4), [2.5, 2.5, 2.5]).any()  # too far: nothing, not the largest blob
    assert int(keep_components(off, "centre", spacing).sum()) == 3
    # an array has no affine: 1 mm per voxel
    assert int(KeepComponentsd("pred", "centre")({"pred": off[None]})["pred"].sum()) == 3
    assert not component_at(np.zeros((5, 5, 5)), (2, 2, 2)).any()


def test_lung_and_nodule_postprocessing_apply_the_component_rule_on_the_source_grid():
    """Both CT bundles keep components after the mask is back on the source grid (either path of fast_resample),
    before it is saved or scored; every run checks the rule first; the rule is part of the recorded settings."""
    from conftest import NODULE_BUNDLE

    for root in (LUNG_BUNDLE, NODULE_BUNDLE):
        cfg = root / "configs"
        inference = json.loads((cfg / "inference.json").read_text())
        targets = [t["_target_"].rsplit(".", 1)[-1] for t in inference["postprocessing"]["transforms"]]
        assert targets == ["ResampleToSourced", "Activationsd", "Invertd", "AsDiscreted", "KeepComponentsd",
                           "SaveMaskd"], targets
        evaluate = json.loads((cfg / "evaluate.json").read_text())
        targets = [t["_target_"].rsplit(".", 1)[-1] for t in evaluate["postprocessing"]["transforms"]]
        assert targets == ["ResampleToSourced", "Activationsd", "Invertd", "AsDiscreted", "KeepComponentsd",
                           "AsDiscreted", "SaveMaskd"], targets
        assert inference["keep_components"] == "all"
        assert inference["mask_settings"]["keep_components"] == "@keep_components"
        # one list of input checks, in inference.json, that every workflow's initialize runs (no copies)
        assert "$monai_pipeline.data.check_component_rule(@keep_components)" in inference["input_checks"]
        multi = json.loads((cfg / "multi_gpu_inference.json").read_text())["initialize"]
        assert inference["initialize"][1] == evaluate["initialize"][1] == "$@input_checks"
        assert multi == ["$@device", *inference["initialize"]]


def test_every_workflow_runs_the_input_checks_before_writing(trained, tiny_msd, tmp_path, monkeypatch):
    """inference.json's ``input_checks`` (weights, component rule, contract), run by the initialize of inference,
    evaluate and multi_gpu_inference alike: an unknown rule stops each with one error line naming it, exit 1, and
    no output folder."""
    import socket

    multi = "['configs/inference.json','configs/multi_gpu_inference.json']"
    with socket.socket() as sock:  # a one-process gloo group for multi_gpu_inference, without torchrun
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    for workflow, config in (("inference", CFG_INFER), ("evaluate", CFG_EVAL), ("multi_gpu_inference", multi)):
        out = tmp_path / workflow
        proc = run_cmd(bundle("run", "--config_file", config, "--dataset_dir", str(tiny_msd), "--output_dir",
                              str(out), "--keep_components", "biggest", *TINY), cwd=trained, check=False)
        lines = [line.removeprefix("[rank0]: ") for line in proc.stderr.splitlines()]  # torch's prefix, distributed
        errors = [line for line in lines if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and "biggest" in errors[0], (workflow, proc.stderr[-3000:])
        assert not out.exists(), workflow


def test_inference_on_rotated_flipped_anisotropic_phantoms(trained, tmp_path):
    from monai_pipeline.io.images import write_nifti
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom

    paths = []
    for seed, direction in [(11, "rotated"), (12, "flipped"), (13, "identity")]:
        img, _, aff = make_phantom(seed, PhantomSpec((40, 44, 14), (3.1, 2.7, 9.0)), direction=direction)
        paths.append(str(write_nifti(img, aff, tmp_path / f"ph_{direction}.nii.gz")))
    out = tmp_path / "masks"
    run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", json.dumps(paths), "--output_dir", str(out),
                   *TINY), cwd=trained)
    for p in paths:
        assert_same_geometry(Path(p), out / Path(p).name.replace(".nii.gz", "_seg.nii.gz"))


def test_inference_on_slicer_nrrd(trained, tmp_path):
    src = shared("ct_chest_slicerio", "CTChest4.nrrd")
    out = tmp_path / "masks"
    for ext in (".nrrd", ".nii.gz"):
        run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", json.dumps([str(src)]), "--output_dir",
                       str(out), "--output_ext", ext, *TINY), cwd=trained)
        assert_same_geometry(src, out / f"CTChest4_seg{ext}", tol=1e-4)


def test_inference_refuses_bad_input_and_writes_nothing(trained, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = tmp_path / "masks"
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", json.dumps([str(bad)]), "--output_dir",
                          str(out), *TINY), cwd=trained, check=False)
    assert proc.returncode != 0
    assert "broken.nii.gz" in proc.stderr + proc.stdout
    assert not out.exists() or not any(out.iterdir())


def test_segresnet_overlay_trains(trained, tiny_msd, tmp_path):
    root = tmp_path / "lung"
    shutil.copytree(LUNG_BUNDLE, root)
    cfg = "['configs/inference.json','configs/train.json','../../configs/network_segresnet.json']"
    cfg = cfg.replace("../../configs", str(ROOT / "configs"))
    run_cmd(bundle("run", "--config_file", cfg, "--dataset_dir", str(tiny_msd), "--epochs", "1", "--val_interval",
                   "1", *TINY), cwd=root)
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("convInit") for k in state)  # SegResNet's layer names, not UNet's


def test_mlflow_tracking_offline(tiny_msd, bundle_copy):
    pytest.importorskip("mlflow")
    run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--dataset_dir", str(tiny_msd), "--epochs", "1",
                   "--val_interval", "1", "--tracking", "mlflow", *TINY), cwd=bundle_copy)
    db = bundle_copy / "eval" / "mlruns.db"
    assert db.is_file(), "no local MLflow store under output_dir"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs and any("train_loss" in r.data.metrics for r in runs)


def test_multi_process_training_with_torchrun(tiny_msd, bundle_copy):
    proc = run_cmd([str(VENV_BIN / "torchrun"), "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
                    CFG_MULTI_GPU_TRAIN, "--dataset_dir", str(tiny_msd), "--epochs", "2", "--val_interval", "1",
                    "--val_fraction", "0.34", *TINY], cwd=bundle_copy)
    assert (bundle_copy / "models" / "model.pt").is_file()
    assert (bundle_copy / "models" / "checkpoint_epoch=2.pt").is_file()
    state = torch.load(bundle_copy / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped: inference loads it as is
    assert "Epoch: 2/2" in proc.stdout + proc.stderr


def test_verify_metadata_with_shipped_schema(bundle_copy):
    schema = bundle_copy.parent / "schemas" / "meta_schema.json"
    schema.parent.mkdir(exist_ok=True)
    shutil.copy(LUNG_BUNDLE.parent / "schemas" / "meta_schema.json", schema)
    proc = run_cmd(bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath",
                          "../schemas/meta_schema.json"), cwd=bundle_copy)
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    meta = json.loads((bundle_copy / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    (bundle_copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    proc = run_cmd(bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath",
                          "../schemas/meta_schema.json"), cwd=bundle_copy, check=False)
    assert proc.returncode != 0 and "num_channels" in proc.stderr + proc.stdout


def test_verify_net_in_out(bundle_copy):
    proc = run_cmd(bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                          "--config_file", CFG_INFER), cwd=bundle_copy)
    assert "verified with no error" in proc.stdout + proc.stderr


def test_ckpt_export_torchscript_matches_checkpoint(trained):
    run_cmd(bundle("ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
                   "--meta_file", "configs/metadata.json", "--config_file", CFG_INFER), cwd=trained)
    from monai.networks.nets import UNet

    network_def = json.loads((trained / "configs" / "inference.json").read_text())["network_def"]["default"]
    kwargs = {k: v for k, v in network_def.items() if k not in ("_target_", "_mode_")}
    kwargs["out_channels"] = 2
    net = UNet(**kwargs)
    net.load_state_dict(torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    ts = torch.jit.load(str(trained / "models" / "model.ts"), map_location="cpu")
    x = torch.randn(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(ts(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- no model.pt
NO_MODEL = "no trained model here; train first"


def test_inference_without_weights_says_what_to_do_on_every_face(tmp_path, capsys, monkeypatch):
    """The whole-CT lung bundle ships no weights: inference through the CLI, the Python API and ``python -m
    monai.bundle run`` from a copy of the bundle folder stops with the one-line DataError of
    monai_pipeline.data.check_model_weights (train first: the command; or --ckpt-dir / ckpt_dir) and writes nothing."""
    from monai_pipeline import segment
    from monai_pipeline.app import cli
    from monai_pipeline.errors import DataError

    assert not (LUNG_BUNDLE / "models" / "model.pt").exists(), "the lung bundle now ships weights: update this test"
    image = str(shared("totalsegmentator_examples", "example_ct_sm.nii.gz"))
    empty = tmp_path / "no_models"

    out = tmp_path / "cli"
    assert cli.main(["infer", "--images", image, "--ckpt-dir", str(empty), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {empty / 'model.pt'}: {NO_MODEL}"), err
    assert "configs/train.json" in err[0] and "--ckpt-dir" in err[0] and not out.exists()
    # without --ckpt-dir: the bundle's own models/ (what it ships; nothing, for this bundle)
    assert cli.main(["infer", "--images", image, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {LUNG_BUNDLE / 'models' / 'model.pt'}: {NO_MODEL}"), err
    assert not out.exists()

    out = tmp_path / "api"
    with pytest.raises(DataError, match=f"{NO_MODEL}.*ckpt_dir"):
        segment(image, empty, out)
    assert not out.exists()

    copy = tmp_path / LUNG_BUNDLE.name
    shutil.copytree(LUNG_BUNDLE, copy, ignore=shutil.ignore_patterns("models", "eval", "data"))
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", json.dumps([image])), cwd=copy, check=False)
    assert proc.returncode == 1  # MONAI's own entry point: an uncaught exception (its config wraps it in a RuntimeError)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: models/model.pt: {NO_MODEL}" + errors[0].split(NO_MODEL, 1)[-1]], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "RuntimeError" not in proc.stderr
    assert sorted(p.name for p in copy.iterdir()) == ["LICENSE", "configs", "docs"]  # no eval/, no models/
    monkeypatch.setenv("MONAI_PIPELINE_TRACEBACK", "1")  # the whole traceback, when asked for
    proc = run_cmd(bundle("run", "--config_file", CFG_INFER, "--datalist", json.dumps([image])), cwd=copy, check=False)
    assert proc.returncode == 1 and f"monai_pipeline.errors.DataError: models/model.pt: {NO_MODEL}" in proc.stderr


def test_check_model_weights(tmp_path):
    from monai_pipeline.data import check_model_weights
    from monai_pipeline.errors import DataError

    with pytest.raises(DataError, match=rf"^{tmp_path / 'model.pt'}: {NO_MODEL}.*train --bundle lung_ct"):
        check_model_weights(tmp_path, LUNG_BUNDLE)
    check_model_weights(tmp_path, LUNG_BUNDLE, needed="false")  # load_pretrain false: nothing to load
    (tmp_path / "model.pt").write_bytes(b"")
    check_model_weights(tmp_path, LUNG_BUNDLE)


def test_a_model_of_another_bundle_is_refused_naming_both(tmp_path):
    """The brain bundle's shipped model given to the lung bundle: refused by its contract, both bundles named."""
    from monai_pipeline import segment
    from monai_pipeline.errors import DataError

    brain_models = ROOT / "bundles" / "brain_mri_tumor_segmentation_2d" / "models"
    if not (brain_models / "model.pt").is_file():
        pytest.skip(f"{brain_models}/model.pt absent (the brain bundle's shipped weights)")
    image = str(shared("totalsegmentator_examples", "example_ct_sm.nii.gz"))
    with pytest.raises(DataError, match=r"model\.contract\.json: bundle \"Lung CT tumour segmentation.*\" given, the "
                                        r"model's contract has \"Brain MRI tumour segmentation \(2D\)\""):
        segment(image, brain_models, tmp_path / "out")
    assert not (tmp_path / "out").exists()
