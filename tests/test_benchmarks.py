"""Benchmark scripts run and write what they claim; committed results carry their provenance."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT, run_cmd, shared

LIDC_KEYS = {"dataset", "n_train", "n_val", "mean_dice", "median_dice", "epochs", "device", "command", "git_rev"}


def test_committed_lidc_result_has_provenance():
    files = sorted((ROOT / "benchmarks" / "results").glob("*lidc*.json"))
    assert files, "no LIDC benchmark result committed under benchmarks/results/"
    for f in files:
        result = json.loads(f.read_text())
        assert LIDC_KEYS <= set(result), f"{f.name} lacks {LIDC_KEYS - set(result)}"
        assert 0.0 <= result["median_dice"] <= 1.0 and 0.0 <= result["mean_dice"] <= 1.0
        per = [r["dice"] for r in result["per_nodule"]]
        assert len(per) == result["n_val"]
        assert abs(sum(per) / len(per) - result["mean_dice"]) < 1e-3  # the summary is the mean of the rows
        assert "scripts/benchmark_lidc.py" in result["command"] and len(result["git_rev"]) >= 40


@pytest.mark.slow
def test_lidc_benchmark_quick_run(tmp_path):
    shared("lidc_nodules")
    out = tmp_path / "lidc.json"
    run_cmd([sys.executable, str(ROOT / "scripts" / "benchmark_lidc.py"), "--epochs", "1", "--max-cases", "24",
             "--work", str(tmp_path / "work"), "--out", str(out), "--set", "num_workers=0"], cwd=ROOT, timeout=1800)
    result = json.loads(out.read_text())
    assert LIDC_KEYS <= set(result) and result["n_train"] == 24 and result["epochs"] == 1


@pytest.mark.slow
def test_every_lidc_pair_validates():
    from monai_pipeline.data import lidc_datalist

    assert len(lidc_datalist(shared("lidc_nodules"), validate=True)) == 885


LGG_KEYS = {"n_train_patients", "n_val_patients", "mean_patient_dice", "median_patient_dice", "brats_mean_dice",
            "epochs", "device", "command", "git_rev"}


def test_committed_lgg_result_has_provenance():
    files = sorted((ROOT / "benchmarks" / "results").glob("*lgg*.json"))
    assert files, "no LGG benchmark result committed under benchmarks/results/"
    for f in files:
        result = json.loads(f.read_text())
        assert LGG_KEYS <= set(result), f"{f.name} lacks {LGG_KEYS - set(result)}"
        per = [r["dice"] for r in result["per_patient"]]
        assert len(per) == result["n_val_patients"] and result["n_train_patients"] > result["n_val_patients"]
        assert abs(sum(per) / len(per) - result["mean_patient_dice"]) < 1e-3
        # the per-patient figure from MONAI's MeanDice on stacked slices equals ours from the written PNG masks
        for r in result["per_patient"]:
            assert abs(result["patient_dice_from_png_masks"][r["patient"]] - r["dice"]) < 1e-3
        assert not set(result["val_patients"]) & set(result.get("train_patients", []))
        assert "scripts/benchmark_lgg.py" in result["command"] and len(result["git_rev"]) >= 40
        assert 0.0 <= result["brats_mean_dice"] <= 1.0
