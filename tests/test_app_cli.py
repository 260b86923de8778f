"""The ``monai-pipeline`` command: synth, train/infer refusals, infer, evaluate."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np

from conftest import TINY, VENV_BIN, run_cmd
from monai_pipeline.io.images import write_nifti

CLI = str(VENV_BIN / "monai-pipeline")


def tiny_sets() -> list[str]:
    out = []
    for i in range(0, len(TINY), 2):
        out += ["--set", f"{TINY[i].lstrip('-')}={TINY[i + 1]}"]
    return out


def test_synth(tmp_path):
    run_cmd([CLI, "synth", "--out", str(tmp_path / "ds"), "--num-train", "2", "--num-test", "1", "--shape", "24",
             "24", "8", "--spacing", "6", "6", "10"], cwd=tmp_path)
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and nib.load(str(tmp_path / "ds" / "imagesTs" / "lung_100.nii.gz")).shape == (24, 24, 8)


def test_train_refuses_bad_dataset_before_any_work(tiny_msd, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_msd, ds)
    (ds / "labelsTr" / "lung_003.nii.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00")  # truncated gzip
    out = tmp_path / "out"
    proc = run_cmd([CLI, "train", "--dataset-dir", str(ds), "--ckpt-dir", str(out / "models"), "--output-dir",
                    str(out / "eval"), "--epochs", "1"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "lung_003.nii.gz" in proc.stderr and "gzip" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_infer_and_evaluate(trained, tiny_msd, tmp_path):
    out = tmp_path / "masks"
    run_cmd([CLI, "infer", "--images", str(tiny_msd / "imagesTs"), "--ckpt-dir", str(trained / "models"),
             "--output-dir", str(out), *tiny_sets()], cwd=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["lung_100_seg.nii.gz", "lung_101_seg.nii.gz"]
    proc = run_cmd([CLI, "evaluate", "--pred", str(out), "--label", str(tiny_msd / "labelsTs"), "--out",
                    str(tmp_path / "metrics")], cwd=tmp_path)
    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert len(metrics["cases"]) == 2 and 0.0 <= metrics["mean_dice"] <= 1.0
    assert "mean dice" in proc.stdout


def test_infer_refuses_bad_image(trained, tmp_path):
    bad = tmp_path / "flat.nii.gz"
    write_nifti(np.zeros((16, 16), np.int16), np.eye(4), bad)
    out = tmp_path / "masks"
    proc = run_cmd([CLI, "infer", "--images", str(bad), "--ckpt-dir", str(trained / "models"), "--output-dir",
                    str(out)], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "flat.nii.gz" in proc.stderr and "3D" in proc.stderr
    assert not out.exists()


def test_evaluate_known_dice(tmp_path):
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    label = np.zeros((20, 20, 10), np.uint8)
    label[5:15, 5:15, 2:8] = 1  # 600 voxels
    pred = np.zeros_like(label)
    pred[5:15, 5:15, 2:5] = 1  # 300 voxels, all inside: Dice = 2*300/900
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    write_nifti(label, aff, tmp_path / "l" / "case_1.nii.gz")
    write_nifti(pred, aff, tmp_path / "p" / "case_1_seg.nii.gz")
    proc = run_cmd([CLI, "evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path / "l")], cwd=tmp_path)
    assert "dice 0.6667" in proc.stdout
    write_nifti(label, aff, tmp_path / "l" / "case_2.nii.gz")
    proc = run_cmd([CLI, "evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path / "l")], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "case_2" in proc.stderr
