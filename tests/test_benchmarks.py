"""Benchmark scripts run and write what they claim; committed results carry their provenance."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT, run_cmd, shared

LIDC_KEYS = {"dataset", "n_train", "n_val", "mean_dice", "median_dice", "epochs", "device", "command", "git_rev"}


def committed_results(pattern: str, keys: set[str], what: str) -> list[dict]:
    """Every committed result under benchmarks/results/ matching ``pattern``, each checked to carry ``keys``."""
    files = sorted((ROOT / "benchmarks" / "results").glob(pattern))
    assert files, f"no {what} benchmark result committed under benchmarks/results/"
    results = []
    for f in files:
        result = json.loads(f.read_text())
        assert keys <= set(result), f"{f.name} lacks {keys - set(result)}"
        results.append(result)
    return results


def test_committed_lidc_result_has_provenance():
    for result in committed_results("lidc_nodule_dice*.json", LIDC_KEYS, "LIDC"):
        assert 0.0 <= result["median_dice"] <= 1.0 and 0.0 <= result["mean_dice"] <= 1.0
        per = [r["dice"] for r in result["per_nodule"]]
        assert len(per) == result["n_val"]
        assert abs(sum(per) / len(per) - result["mean_dice"]) < 1e-3  # the summary is the mean of the rows
        assert "scripts/benchmark_lidc.py" in result["command"] and len(result["git_rev"]) >= 40


def test_committed_lever_and_delineation_results_are_consistent():
    """The LIDC lever study chose on the selection nodules only and its test means are those of its rows; the
    delineation benchmark's means are those of its rows, compared with the crop result it names."""
    import statistics

    levers = committed_results("lidc_levers_*.json", {"chosen", "test", "selection_mean_dice", "command", "git_rev",
                                                      "per_nodule_test", "cpu_isa"}, "LIDC levers")
    for r in levers:
        rows = r["per_nodule_test"]
        assert len(rows) == r["n_test"] and r["n_selection"] > 0
        for key in ("baseline", "chosen"):
            assert abs(statistics.fmean(x[key] for x in rows) - r["test"][key]["mean_dice"]) < 1e-3
        best = max(r["selection_mean_dice"].values())
        assert r["selection_mean_dice"][r["test"]["chosen"]["variant"]] >= best - 0.002 - 1e-9
    for r in committed_results("delineate_avx*.json", {"command", "git_rev", "cpu_isa", "lidc"}, "delineation"):
        rows = r["lidc"]["per_nodule"]
        assert abs(statistics.fmean(x["dice"] for x in rows) - r["lidc"]["mean_dice"]) < 1e-3
        crop = json.loads((ROOT / r["lidc"]["crop_benchmark"]["file"]).read_text())
        assert r["lidc"]["crop_benchmark"]["n_matched"] == len(rows) == crop["n_test"]
        assert abs(r["lidc"]["crop_benchmark"]["mean_dice_same_nodules"] - crop["mean_dice"]) < 1e-3


@pytest.mark.slow
def test_lidc_benchmark_quick_run(tmp_path):
    shared("lidc_nodules")
    out = tmp_path / "lidc.json"
    run_cmd([sys.executable, str(ROOT / "scripts" / "benchmark_lidc.py"), "--epochs", "1", "--max-cases", "24",
             "--work", str(tmp_path / "work"), "--out", str(out), "--set", "num_workers=0",
             "--set", "val_interval=1"], cwd=ROOT, timeout=1800)  # the overlay validates every 2 epochs: none in 1
    result = json.loads(out.read_text())
    assert LIDC_KEYS <= set(result) and result["n_train"] == 24 and result["epochs"] == 1


@pytest.mark.slow
def test_every_lidc_pair_validates():
    from monai_pipeline.data.datasets import lidc_datalist

    assert len(lidc_datalist(shared("lidc_nodules"), validate=True)) == 885


def test_training_sessions_list_every_start_and_a_fresh_run_starts_them_again(tmp_path, monkeypatch):
    """A run resumed across stops trained under several revisions: the result lists each start (revision, date,
    epoch resumed from) beside the revision it was written at."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import _provenance

    models = tmp_path / "run" / "models"
    _provenance.training_session(models, resume=False)
    models.mkdir(parents=True, exist_ok=True)
    torch.save({"trainer": {"iteration": 30, "epoch_length": 10}}, models / "checkpoint_epoch=3.pt")
    _provenance.training_session(models, resume=True)
    record = _provenance.run_record("benchmark_lgg.py", ["--fold", "0"], models, 5, 1.0, 1.0)
    assert record["epochs"] == 3 and [s["from_epoch"] for s in record["training_sessions"]] == [0, 3]
    assert all(s["git_rev"] == record["git_rev"] for s in record["training_sessions"])
    _provenance.training_session(models, resume=False)  # a fresh run into the same folder
    assert [s["from_epoch"] for s in _provenance.run_record("benchmark_lgg.py", [], models, 5, 0.0, 0.0)[
        "training_sessions"]] == [0]
    assert _provenance.run_record("benchmark_lgg.py", [], tmp_path / "other" / "models", 5, 0.0, 0.0)[
        "training_sessions"] is None  # trained before starts were recorded


LGG_KEYS = {"n_train_patients", "n_val_patients", "mean_patient_dice", "median_patient_dice", "brats_mean_dice",
            "epochs", "device", "command", "git_rev"}


def test_committed_lgg_result_has_provenance():
    for result in committed_results("lgg_brain*.json", LGG_KEYS, "LGG"):
        per = [r["dice"] for r in result["per_patient"]]
        assert len(per) == result["n_val_patients"] and result["n_train_patients"] > result["n_val_patients"]
        assert abs(sum(per) / len(per) - result["mean_patient_dice"]) < 1e-3
        # the per-patient figure from MONAI's MeanDice on stacked slices equals ours from the written PNG masks
        for r in result["per_patient"]:
            assert abs(result["patient_dice_from_png_masks"][r["patient"]] - r["dice"]) < 1e-3
        assert not set(result["val_patients"]) & set(result.get("train_patients", []))
        assert "scripts/benchmark_lgg.py" in result["command"] and len(result["git_rev"]) >= 40
        assert 0.0 <= result["brats_mean_dice"] <= 1.0


SPEED_KEYS = {"command", "device", "cpu_model", "torch_threads", "git_rev", "training", "inference", "targets_met"}


def _check_speed_record(result: dict) -> None:
    """The summary figures, ratios and target verdicts follow from the per-volume rows they summarise."""
    inf = result["inference"]
    for name, rows in inf["per_volume"].items():
        for volume, row in rows.items():
            stages = sum(row[k] for k in ("load", "preprocess", "network", "postprocess", "save"))
            assert stages <= row["total_seconds"] + 0.05, (name, volume)
            assert 0.0 <= row["dice"] <= 1.0
        assert abs(inf["summary"][name]["seconds_total"] - sum(r["total_seconds"] for r in rows.values())) < 0.05
    ref, ours = inf["summary"]["reference"], inf["summary"]["ours"]
    assert abs(inf["ratio_volumes_per_second"] - ref["seconds_total"] / ours["seconds_total"]) < 0.01
    assert result["targets_met"]["inference >= 3x reference volumes/s"] == (inf["ratio_volumes_per_second"] >= 3.0)
    assert result["targets_met"]["512x512x300 file to mask < 60 s"] == (inf["big_ct"]["seconds_file_to_mask"] < 60)
    tr = result["training"]
    assert abs(tr["ratio_samples_per_second"] - tr["ours"]["samples_per_second"] / tr["reference"]["samples_per_second"]) < 0.01
    assert "scripts/benchmark_speed.py" in result["command"] and len(result["git_rev"]) >= 40


def test_committed_speed_result_has_provenance():
    for result in committed_results("*speed*.json", SPEED_KEYS, "speed"):
        _check_speed_record(result)
        assert result["inference"]["big_ct"]["shape"] == [512, 512, 300]


def test_speed_benchmark_quick_run(tmp_path):
    """The benchmark as documented, shrunk: train part, then the inference part reusing its weights."""
    out, work = tmp_path / "speed.json", tmp_path / "work"
    small = ["--epochs", "1", "--infer-epochs", "1", "--num-train", "2", "--num-test", "1",
             "--big-shape", "96", "96", "60", "--work", str(work), "--out", str(out)]
    script = str(ROOT / "scripts" / "benchmark_speed.py")
    run_cmd([sys.executable, script, "--part", "train", *small], cwd=ROOT, timeout=900)
    assert "training" in json.loads(out.read_text()) and "inference" not in json.loads(out.read_text())
    run_cmd([sys.executable, script, "--part", "infer", *small], cwd=ROOT, timeout=900)
    result = json.loads(out.read_text())
    _check_speed_record(result)
    assert set(result["inference"]["per_volume"]["ours"]) == {"lung_100.nii.gz", "chest_512.nii.gz"}
    assert (work / "masks_ours" / "chest_512_seg.nii.gz").is_file()


PRECISION_KEYS = {"command", "device", "cpu_model", "git_rev", "setup", "summary", "runs"}


def _check_precision_record(result: dict) -> None:
    """Each precision's summary follows from its runs (mean, range, failures under the stated threshold)."""
    for precision, summary in result["summary"].items():
        dice = [r["mean_test_dice"] for r in result["runs"] if r["precision"] == precision]
        assert len(dice) == summary["runs"] > 0
        assert abs(sum(dice) / len(dice) - summary["mean_dice"]) < 1e-3
        assert summary["min_dice"] == round(min(dice), 4) and summary["max_dice"] == round(max(dice), 4)
        assert summary["failed_runs"] == sum(d < result["setup"]["fail_below"] for d in dice)
        for r in result["runs"]:
            assert abs(sum(r["test_dice"].values()) / len(r["test_dice"]) - r["mean_test_dice"]) < 1e-6
            assert len(r["test_dice"]) == result["setup"]["test_phantoms"]
    assert "scripts/compare_train_precision.py" in result["command"] and len(result["git_rev"]) >= 40


def test_committed_train_precision_result():
    for result in committed_results("*precision*.json", PRECISION_KEYS, "training precision"):
        _check_precision_record(result)
        assert {r["seed"] for r in result["runs"]} == set(range(4))  # 4 seeds per precision, as documented


@pytest.mark.slow
def test_train_precision_comparison_quick_run(tmp_path):
    """One seed of each precision, as the script runs them: both learn, and bf16 lands within 0.02 of fp32
    (the committed 4-seed run: mean 0.626 against 0.631). Several minutes where bf16 is emulated."""
    out = tmp_path / "precision.json"
    run_cmd([sys.executable, str(ROOT / "scripts" / "compare_train_precision.py"), "--seeds", "0",
             "--work", str(tmp_path / "work"), "--out", str(out)], cwd=ROOT, timeout=1800)
    result = json.loads(out.read_text())
    _check_precision_record(result)
    fp32, bf16 = result["summary"]["fp32"], result["summary"]["bf16"]
    assert fp32["failed_runs"] == bf16["failed_runs"] == 0
    assert abs(fp32["mean_dice"] - bf16["mean_dice"]) <= 0.02


# ---------------------------------------------------------------- bf16 on real nodules and on this CPU's kernels
def test_committed_bf16_check_on_nodules_is_consistent():
    """``scripts/benchmark_bf16_check.py``: the same nodules in each setting, summaries that follow from the rows,
    the machine's instruction sets and the model's training precision recorded."""
    keys = {"settings", "n_nodules", "cpu_isa", "train_precision", "command", "git_rev"}
    for result in committed_results("bf16_check_nodules_*.json", keys, "bf16 check on nodules"):
        settings = result["settings"]
        assert set(settings) == {"fp32", "auto", "bf16"}
        ref = settings["fp32"]["per_nodule"]
        assert len(ref) == result["n_nodules"] and settings["fp32"]["eval_precision"] == "fp32"
        for name, s in settings.items():
            rows = s["per_nodule"]
            assert set(rows) == set(ref) and s["eval_inputs"] == len(rows)
            assert abs(sum(rows.values()) / len(rows) - s["mean_dice"]) < 1e-3
            assert s["nodules_below_0.1"] == sum(d < 0.1 for d in rows.values())
            assert s["eval_inputs_redone_in_fp32"] == len(s["redone_reasons"])
        assert settings["auto"]["eval_precision_checked"] and not settings["bf16"]["eval_precision_checked"]
        assert "scripts/benchmark_bf16_check.py" in result["command"] and len(result["git_rev"]) >= 40


def test_committed_bf16_kernel_check_is_consistent():
    keys = {"variants", "any_failed", "cpu_isa", "torch_cpu_capability", "command", "git_rev"}
    for result in committed_results("bf16_kernels_*.json", keys, "bf16 kernel check"):
        ran = [v for v in result["variants"] if "steps" in v]
        assert ran and result["any_failed"] == any(v["failed"] for v in ran)
        for v in ran:
            nonfinite = any(s["nonfinite_grads"] or not abs(s["loss"]) < float("inf") for s in v["steps"])
            assert v["failed"] == nonfinite, v
        assert any(v.get("onednn_convolution_implementations") for v in ran)
        assert "scripts/bf16_kernel_check.py" in result["command"]


def test_committed_nsclc_result_has_provenance():
    keys = {"case", "command", "git_rev", "device", "cpu", "cpu_isa", "threads", "infer_cli", "infer_stages", "anatomy"}
    for result in committed_results("nsclc_lung1_*.json", keys, "NSCLC LUNG1-001"):
        assert "scripts/benchmark_nsclc.py" in result["command"] and len(result["git_rev"]) >= 40
        cli = result["infer_cli"]
        assert cli["wall_s"] > 0 and cli["peak_rss_gb"] > 0 and any(o.endswith("_seg.dcm") for o in cli["outputs"])
        anatomy = result["anatomy"]
        assert 0.0 <= anatomy["lung_dice_vs_rtstruct"] <= 1.0 and anatomy["lung_mask_s"] > 0
        burden = anatomy["burden"]
        assert abs(burden["tumour_right_ml"] + burden["tumour_left_ml"] - burden["tumour_ml"]) < 0.05


def _lgg_cv_names() -> list[str]:
    """The cross-validations committed (``benchmark_lgg.py --cv-name``): ``cv`` for lgg_cv_fold<K>.json, ..."""
    import re

    stems = [f.stem for f in (ROOT / "benchmarks" / "results").glob("lgg_*_fold*.json")]
    return sorted({m.group(1) for s in stems if (m := re.fullmatch(r"lgg_(.+)_fold\d+", s))
                   and not m.group(1).endswith("_levers")})


def test_committed_lgg_cv_folds_and_summary_are_consistent():
    """Cross-validation folds (scripts/benchmark_lgg.py --fold K [--cv-name NAME]): each fold's patients are its own
    test set, no patient scored twice, the pooled summary follows from the fold results present, and so do the
    inference levers chosen per fold (scripts/select_lgg_levers.py)."""
    names = _lgg_cv_names()
    if not names:
        pytest.skip("no cross-validation fold committed yet (scripts/benchmark_lgg.py --fold K)")
    assert "cv" in names
    for name in names:
        _check_lgg_cv(name)


def _check_lgg_cv(name: str) -> None:
    import statistics

    results = ROOT / "benchmarks" / "results"
    folds = sorted(results.glob(f"lgg_{name}_fold*.json"))
    scored = []
    for f in folds:
        r = json.loads(f.read_text())
        per = [p["dice"] for p in r["per_patient"]]
        assert r["cv"]["fold"] == int(f.stem.removeprefix(f"lgg_{name}_fold")) and len(per) == r["n_val_patients"]
        assert not set(r["val_patients"]) & (set(r["train_patients"]) | set(r["selection_patients"]))
        assert abs(statistics.fmean(per) - r["mean_patient_dice"]) < 1e-3
        assert "scripts/benchmark_lgg.py" in r["command"] and "--fold" in r["command"]
        scored += r["val_patients"]
    assert len(scored) == len(set(scored))
    summary = json.loads((results / f"lgg_{name}_summary.json").read_text())
    assert summary["command"].endswith("--cv-summary" if name == "cv" else f"--cv-summary --cv-name {name}")
    assert summary["folds_done"] == sorted(json.loads(f.read_text())["cv"]["fold"] for f in folds)
    pooled = [p["dice"] for p in summary["per_patient"]]
    assert len(pooled) == len(scored) and abs(statistics.fmean(pooled) - summary["mean_patient_dice"]) < 1e-3
    lo, hi = summary["mean_ci95_bootstrap"]
    assert lo <= summary["mean_patient_dice"] <= hi

    # scripts/select_lgg_levers.py: the baseline per patient is the fold's own result, the chosen variant is the
    # best on the fold's selection patients (none of them scored by that fold), and the summary pools them
    levers = {int(f.stem.removeprefix(f"lgg_{name}_levers_fold")): json.loads(f.read_text())
              for f in sorted(results.glob(f"lgg_{name}_levers_fold*.json"))}
    for k, lv in levers.items():  # each file on its own: test_committed_lgg_lever_file_chose_on_its_selection_...
        fold = json.loads((results / f"lgg_{name}_fold{k}.json").read_text())
        was = {p["patient"]: p["dice"] for p in fold["per_patient"]}
        assert [p["patient"] for p in lv["per_patient"]] == fold["val_patients"] == lv["val_patients"]
        for p in lv["per_patient"]:
            assert abs(p["baseline"] - next(v for c, v in was.items() if c.startswith(p["patient"]))) < 2e-3
    if levers:
        pooled = summary["with_levers"]
        assert pooled["folds"] == sorted(levers)
        chosen = [p["chosen"] for lv in levers.values() for p in lv["per_patient"]]
        assert len(pooled["per_patient"]) == len(chosen)
        assert abs(statistics.fmean(chosen) - pooled["mean_patient_dice"]) < 1e-3


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("lgg_nested_*.json")), ids=lambda p: p.stem)
def test_committed_lgg_nested_summary_picks_each_folds_recipe_on_its_selection_patients(path):
    """``benchmark_lgg.py --nested cv,cvlong``: per fold, the recipe with the best selection mean is the one whose
    held-out patients are pooled (without levers and with its own levers); no held-out patient is a selection
    patient; the file is named after its recipes."""
    import statistics

    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark_lgg import nested_file

    results = path.parent
    summary = json.loads(path.read_text())
    names = summary["recipes"]
    assert path.name == nested_file(names) and summary["command"].endswith("--nested " + ",".join(names))
    for how, key, field in (("baseline", "no_levers", "baseline"), ("levers", "with_levers", "chosen")):
        expected = []
        for k, fold in summary["per_fold"].items():
            sel = fold["selection_mean_dice"]
            picked = fold["picked"][how]
            assert sel[picked][how] == max(sel[n][how] for n in names)
            lv = json.loads((results / f"lgg_{picked}_levers_fold{k}.json").read_text())
            assert abs(sel[picked]["baseline"] - lv["selection_mean_dice"]["tta=none threshold=0.5 components=all"]) < 1e-9
            assert not set(lv["selection_patients"]) & set(lv["val_patients"])
            expected += [p[field] for p in lv["per_patient"]]
        got = [p["dice"] for p in summary["per_patient"][how]]
        assert got == expected and abs(statistics.fmean(got) - summary[key]["mean_patient_dice"]) < 1e-3


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("lgg_*_levers_fold*.json")),
                         ids=lambda p: p.stem)
def test_committed_lgg_lever_file_chose_on_its_selection_patients_only(path):
    """Every ``select_lgg_levers.py`` result, also those of a recipe with no fold file of its own (an ensemble, or
    another lever grid over a recipe's models): the chosen variant is in its grid and within 0.002 of the best
    selection mean, no selection patient is scored, the test means follow from the per-patient values, and the
    baseline is the fold result it names, where it names one."""
    import statistics

    lv = json.loads(path.read_text())
    grid = lv.get("components_grid", ["all", "largest"])  # files before --components chose from all, largest
    assert lv["chosen"]["components"] in grid and grid[0] == "all"
    assert all(v.split("components=")[1] in grid for v in lv["selection_mean_dice"])
    assert lv["selection_mean_dice"][lv["test"]["chosen"]["variant"]] >= max(lv["selection_mean_dice"].values()) - 0.002 - 1e-9
    assert not set(lv["selection_patients"]) & set(lv["val_patients"])
    assert [p["patient"] for p in lv["per_patient"]] == lv["val_patients"]
    for key in ("baseline", "chosen"):
        assert abs(statistics.fmean(p[key] for p in lv["per_patient"]) - lv["test"][key]["mean_dice"]) < 1e-3
    if lv["fold_result_mean_dice"] is not None:
        assert abs(lv["fold_result_mean_dice"] - lv["test"]["baseline"]["mean_dice"]) < 2e-3


def test_lgg_lever_ensemble_averages_each_models_probability_on_the_slices_grid():
    """``select_lgg_levers.py --model-dir A --model-dir B``: the ensemble's probability is the mean of the models'
    on the slices' own grid. A second model whose logits are the first's negated has probability 1 - p, so the
    pair averages to 0.5 everywhere, and one model alone gives its own probability."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from select_lgg_levers import probabilities

    from monai_pipeline.app.delineate import CropSegmenter

    patient = shared("lgg_kaggle_3m", "TCGA_HT_7874_19950902")
    slices = [str(patient / f"TCGA_HT_7874_19950902_{i}.tif") for i in (11, 12, 13)]
    class Negate(torch.nn.Module):
        def forward(self, x):
            return -x

    model = CropSegmenter("brain")
    negated = CropSegmenter("brain")
    negated.network = torch.nn.Sequential(negated.network, Negate()).eval()
    one = probabilities([model], {"image": slices}, [])
    assert one.shape == (256, 256, 3) and 0.0 <= one.min() and one.max() <= 1.0 and (one > 0.5).any()
    np.testing.assert_allclose(probabilities([model, model], {"image": slices}, []), one, atol=1e-6)
    np.testing.assert_allclose(probabilities([model, negated], {"image": slices}, []), 0.5, atol=1e-5)


def test_lgg_levers_component_grid_order_breaks_ties_and_must_start_with_the_baseline(capsys):
    """``select_lgg_levers.py --components all,over10,largest``: a rule further along the grid must win by more than
    0.002; ``over10`` keeps every 26-connected 3D component with 10 % of the largest's voxels; a grid without the
    baseline (``all``) first, with an unknown or a repeated rule, stops before any model loads."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "scripts"))
    from select_lgg_levers import choose, keep_components, main, parse_components

    grid = ("all", "over10", "largest")
    means = {("none", 0.5, "all"): 0.700, ("none", 0.5, "over10"): 0.7015, ("none", 0.5, "largest"): 0.7018}
    assert choose(means, grid) == ("none", 0.5, "all")  # neither step wins by more than 0.002
    means[("none", 0.5, "over10")], means[("none", 0.5, "largest")] = 0.7025, 0.7040
    assert choose(means, grid) == ("none", 0.5, "over10")  # largest wins over all, not over over10, by 0.002
    means[("none", 0.5, "largest")] = 0.705
    assert choose(means, grid) == ("none", 0.5, "largest")
    mask = np.zeros((8, 8, 8), bool)
    mask[:4, :4, :4] = True  # 64 voxels
    mask[4, 4, 4] = True  # touches the 64 at a corner only: one component 26-connected
    mask[6:8, 6:8, 6:8] = True  # 8 voxels: over 10 % of 65
    mask[0, 7, 7] = True  # 1 voxel
    assert keep_components(mask, "all").sum() == 74
    assert keep_components(mask, "over10").sum() == 73 and keep_components(mask, "largest").sum() == 65
    with pytest.raises(ValueError, match="unknown component rule"):
        keep_components(mask, "biggest")
    assert parse_components("all,over10,largest") == grid and parse_components("all") == ("all",)
    for bad in ("largest,all", "all,biggest", "all,largest,largest", "all,centre"):  # centre: crops only
        with pytest.raises(ValueError, match="all first"):
            parse_components(bad)
        with pytest.raises(SystemExit) as stop:
            main(["--fold", "0", "--components", bad])
        assert stop.value.code == 2 and "give distinct rules" in capsys.readouterr().err


def test_lgg_all_folds_runs_the_missing_folds_then_their_levers_then_the_summary(tmp_path, monkeypatch):
    """``benchmark_lgg.py --all-folds``: a fold with a result is skipped, the others run with ``--fold K`` (each
    resumes on its own), each fold's levers are selected once, and the summary pools what is there."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark_lgg
    import select_lgg_levers

    (tmp_path / "lgg_cv_fold0.json").write_text("{}")
    (tmp_path / "lgg_cv_levers_fold0.json").write_text("{}")
    (tmp_path / "lgg_cv_fold1.json").write_text("{}")  # fold 1 trained, its levers not yet selected
    calls = []

    def fake_main(argv):
        calls.append(("fold", argv))
        (tmp_path / f"lgg_cv_fold{argv[argv.index('--fold') + 1]}.json").write_text("{}")
        return 0

    def fake_levers(argv):
        calls.append(("levers", argv[1]))
        return 0

    monkeypatch.setattr(benchmark_lgg, "RESULTS", tmp_path)
    monkeypatch.setattr(benchmark_lgg, "main", fake_main)
    monkeypatch.setattr(select_lgg_levers, "main", fake_levers)
    monkeypatch.setattr(benchmark_lgg, "cv_summary", lambda results, n, name: calls.append(("summary", n)) or 0)
    args = benchmark_lgg.argparse.Namespace(num_folds=3, seed=0, data="d", cv_name="cv")
    assert benchmark_lgg.all_folds(["--all-folds", "--epochs", "100", "--num-folds", "3"], args) == 0
    assert calls == [("levers", "1"), ("fold", ["--epochs", "100", "--num-folds", "3", "--fold", "2"]),
                     ("levers", "2"), ("summary", 3)]


def test_lgg_fold_run_refuses_to_overwrite_another_recipes_fold(tmp_path, capsys):
    """``--fold K`` without ``--cv-name`` must not replace a committed fold of another recipe: the run stops before
    training with one line naming the file and both recipes; the same recipe may rewrite its own fold."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark_lgg

    out = tmp_path / "lgg_cv_fold0.json"
    out.write_text(json.dumps({"epochs": 100, "epochs_requested": 150, "bundle_overrides": {"channels": [1]}}))
    assert benchmark_lgg.recipe_clash(out, 150, {"channels": [1]}) is None  # early stop: requested epochs count
    assert benchmark_lgg.recipe_clash(tmp_path / "absent.json", 5, {}) is None
    clash = benchmark_lgg.recipe_clash(out, 150, {"channels": [1], "context_slices": 1})
    assert str(out) in clash and "--cv-name" in clash
    rc = benchmark_lgg.main(["--fold", "0", "--out", str(out), "--epochs", "100", "--set", "channels=[1]",
                             "--data", str(tmp_path / "no_data"), "--work", str(tmp_path / "work")])
    assert rc == 2 and "another recipe" in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and json.loads(out.read_text())["epochs"] == 100


def test_lidc_levers_ensemble_averages_the_models_probabilities(monkeypatch):
    """``select_lidc_levers.py --model-dir A --model-dir B``: each variant thresholds the mean of the models'
    foreground probabilities on the crop's grid (one model: its own probability, unchanged)."""
    import numpy as np

    import monai_pipeline.transforms as transforms

    sys.path.insert(0, str(ROOT / "scripts"))
    import select_lidc_levers

    class Fake:
        def __init__(self, value):
            self.value = value

        def predict(self, image, flips):
            return {"pred": np.full((1, 2, 3, 4), self.value, dtype=np.float32), "flips": flips}

    monkeypatch.setattr(transforms, "ResampleToSourced", lambda *a, **k: (lambda d: d))
    a, b = Fake(0.2), Fake(0.8)
    assert np.allclose(select_lidc_levers.probabilities([a], "crop.nii.gz", []), 0.2)
    both = select_lidc_levers.probabilities([a, b], "crop.nii.gz", [[0]])
    assert both.shape == (2, 3, 4) and np.allclose(both, 0.5)
