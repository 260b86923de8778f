#!/usr/bin/env python
"""LGG brain MRI benchmark for the brain bundle: per-patient Dice on unseen patients, and on BraTS.

Trains the brain bundle (its own configs) on a fixed-seed patient-level split of
``../shared/data/lgg_kaggle_3m``: train / selection (checkpoint choice, early stopping) / test (the
reported "validation patients": never trained on and never used to choose anything). Then runs the
bundle's evaluate workflow on the test patients (per-patient volumetric Dice: all slices of a patient
stacked, the measure of Buda et al. 2019) and, as an out-of-domain check, on the BraTS 2015 volumes in
``../shared/data/brats2015`` cut into axial slices (whole tumour = label > 0; channels FLAIR, FLAIR, T1c,
since LGG fills a missing pre-contrast sequence with FLAIR). Writes
``benchmarks/results/lgg_brain_dice.json`` with the figures, the command, the device and the git revision.

    .venv/bin/python scripts/benchmark_lgg.py --epochs 150 --set 'channels=[1]'   # resumable: run it again

``--set 'channels=[1]'`` trains on FLAIR alone, the brain bundle's default since 0.5.0 (it was ``[0, 1, 2]``
before, and the committed figures give it explicitly, so their commands read the same on either version): in LGG
a missing pre- or post-contrast sequence was replaced by FLAIR, and FLAIR is the sequence the masks were drawn on.
``--set 'channels=[0,1,2]'`` trains on all three sequences.

Progress is the bundle's epoch log. A run continues from the latest checkpoint in ``--work`` unless
``--no-resume``; ``--eval-only`` evaluates the best checkpoint there without training.

**Cross-validation** (all 55 patients, each scored once by the model that never saw it):

    .venv/bin/python scripts/benchmark_lgg.py --fold 0 --cv-name cvlong --epochs 150 --set 'channels=[1]' --set train_precision=auto
    .venv/bin/python scripts/benchmark_lgg.py --cv-summary --cv-name cvlong   # pool the folds done
    .venv/bin/python scripts/benchmark_lgg.py --all-folds --cv-name cvlong --epochs 150 --set 'channels=[1]' --set train_precision=auto
    .venv/bin/python scripts/benchmark_lgg.py --nested cv,cvlong   # per fold, the recipe its selection patients prefer

The first trains and scores one fold (0..4, one per run), the third all of them with each fold's levers
(resumable: a fold with a result is skipped, a started one resumes).

``--fold K`` trains on the other four folds (the bundle's ``split_mode cv``: a tenth of their patients choose the
checkpoint and stop early; fold K's patients choose nothing), evaluates fold K and writes
``benchmarks/results/lgg_cv_fold<K>.json`` (work folder ``runs/lgg_cv/fold<K>``, resumable). ``--cv-summary`` pools
the per-patient Dice of every fold result present into ``lgg_cv_summary.json``: mean and median with bootstrap
95 % intervals, and which folds are done. ``--cv-name NAME`` keeps another recipe's cross-validation apart
(``lgg_NAME_fold<K>.json``, ``runs/lgg_NAME/``; a fold run refuses to replace a fold file of other epochs or
overrides): ``cvlong`` is the brain bundle's defaults since 0.7.0 (FLAIR alone,
150 epochs, ``train_precision auto``); ``cv`` is FLAIR alone, 100 epochs in float32 (``--epochs 100 --set
train_precision=fp32``, the defaults before); ``cv3`` is ``cv`` on the three sequences with FLAIR copies in training
(``--cv-name cv3 --epochs 100 --set 'channels=[0,1,2]' --set flair_copy_prob=0.15 --set train_precision=fp32``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _provenance import command_line, run_record, training_session  # noqa: E402

from monai_pipeline.app.bundles import parse_overrides, run_bundle  # noqa: E402
from monai_pipeline.data.datasets import brain_datalist  # noqa: E402
from monai_pipeline.evaluation.run import read_metric_details, score_slice_folders  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402
from monai_pipeline.engine.checkpoints import latest_checkpoint  # noqa: E402

SPLIT = {"val_fraction": 0.1, "test_fraction": 0.2}
CV_SPLIT = {"split_mode": "cv", "val_fraction": 0.1, "test_fraction": 0.0}  # val: a tenth of the training folds
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_WORK = str(ROOT / "runs" / "lgg")
DEFAULT_OUT = str(RESULTS / "lgg_brain_dice.json")


def brats_datalist(root: Path) -> list[dict]:
    cases = sorted(p for p in root.iterdir() if (p / "OTMultiClass.nii.gz").is_file())
    return [{"image": [str(c / "Flair_subtrMeanDivStd.nii.gz"), str(c / "Flair_subtrMeanDivStd.nii.gz"),
                       str(c / "T1c_subtrMeanDivStd.nii.gz")],
             "label": str(c / "OTMultiClass.nii.gz"), "case_id": c.name, "patient": c.name} for c in cases]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_root = ROOT.parent / "shared" / "data"
    ap.add_argument("--data", default=str(data_root / "lgg_kaggle_3m"))
    ap.add_argument("--brats", default=str(data_root / "brats2015"))
    ap.add_argument("--work", default=DEFAULT_WORK, help="checkpoints and logs")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="skip training: evaluate the best checkpoint in --work")
    ap.add_argument("--max-cases", type=int, default=None, help="quick check on a subset of patients")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override")
    ap.add_argument("--fold", type=int, help="cross-validation: train on the other folds, score this one")
    ap.add_argument("--num-folds", type=int, default=5)
    ap.add_argument("--cv-summary", action="store_true", help="pool the committed fold results (no training)")
    ap.add_argument("--cv-name", default="cv", help="name of the cross-validation's files (another recipe, apart)")
    ap.add_argument("--nested", metavar="NAME,NAME",
                    help="pool cross-validations of several recipes: per fold, the recipe its selection patients "
                         "score best (no test patient chooses); writes lgg_nested_<NAME>_<NAME>.json")
    ap.add_argument("--all-folds", action="store_true",
                    help="every fold in turn (a fold whose result exists is skipped, a started one resumes), each "
                         "with its inference levers (select_lgg_levers.py), then --cv-summary")
    args = ap.parse_args(argv)
    if args.all_folds:
        return all_folds(list(argv if argv is not None else sys.argv[1:]), args)
    if args.nested:
        return nested_summary(RESULTS, args.num_folds, args.nested.split(","))
    if args.cv_summary:
        return cv_summary(Path(args.out).parent if args.out != DEFAULT_OUT else RESULTS, args.num_folds, args.cv_name)
    cv = args.fold is not None
    if cv:
        if args.work == DEFAULT_WORK:
            args.work = str(ROOT / "runs" / f"lgg_{args.cv_name}" / f"fold{args.fold}")
        if args.out == DEFAULT_OUT:
            args.out = str(RESULTS / f"lgg_{args.cv_name}_fold{args.fold}.json")

    extra = parse_overrides(args.set)
    if cv and (clash := recipe_clash(Path(args.out), args.epochs, extra)):
        print(f"error: {clash}", file=sys.stderr)
        return 2

    data, brats = Path(args.data), Path(args.brats)
    if not data.is_dir():
        print(f"error: {data} not found: point --data at the lgg_kaggle_3m folder", file=sys.stderr)
        return 2
    work = Path(args.work)
    split_args = {**CV_SPLIT, "fold": args.fold, "num_folds": args.num_folds} if cv else SPLIT
    overrides = dict(dataset_dir=str(data.resolve()), ckpt_dir=str(work / "models"), seed=args.seed,
                     max_cases=args.max_cases, **split_args, **extra)
    resume = not args.no_resume and latest_checkpoint(work / "models") is not None

    t0 = time.perf_counter()
    if not args.eval_only:
        training_session(work / "models", resume)
        run_bundle("brain", "train", (), epochs=args.epochs, output_dir=str(work / "train"), resume=resume,
                   **overrides)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_bundle("brain", "evaluate", (), output_dir=str(work / "test"), eval_datalist="@test_datalist", **overrides)
    eval_s = time.perf_counter() - t1
    rows = read_metric_details(work / "test" / "val_mean_dice_raw.csv")
    split = {s: brain_datalist(data, s, seed=args.seed, max_cases=args.max_cases, validate=False, **split_args)
             for s in ("train", "val", "test")}
    if len(rows) != len(split["test"]):
        raise RuntimeError(f"evaluated {len(rows)} patients but the test split holds {len(split['test'])}")
    slices, patients = score_slice_folders(work / "test" / "predictions", data)
    by_patient = {p["patient"]: p["dice"] for p in patients}

    brats_rows: list[dict] = []
    if brats.is_dir() and not cv:  # the out-of-domain check once, on the single-split model
        items = brats_datalist(brats)
        run_bundle("brain", "evaluate", (), output_dir=str(work / "brats"), eval_datalist=items,
                   **{k: v for k, v in overrides.items() if k not in ("max_cases",)})
        brats_rows = read_metric_details(work / "brats" / "val_mean_dice_raw.csv")

    dice = [r["dice"] for r in rows]
    tumour_slices = [s["dice"] for s in slices if s["label_pixels"] > 0]
    result = {
        "dataset": "LGG brain MRI (Buda et al. 2019, kaggle_3m subset, ../shared/data/lgg_kaggle_3m), patient-level "
                   + (f"{args.num_folds}-fold cross-validation, fold {args.fold}" if cv else "split"),
        "cv": {"fold": args.fold, "num_folds": args.num_folds, "seed": args.seed} if cv else None,
        "n_train_patients": len({d["patient"] for d in split["train"]}),
        "n_val_patients": len(split["test"]),
        "n_val_note": "validation patients = held-out patients the figures are measured on: never trained on, never "
                      f"used to choose anything; {len(split['val'])} other patients chose the checkpoint (best "
                      "per-patient Dice) and early stopping",
        "n_selection_patients": len(split["val"]),
        "n_train_slices": sum(len(d["image"]) for d in split["train"]),
        "split_fractions": split_args,
        "val_patients": [d["patient"] for d in split["test"]],
        "selection_patients": [d["patient"] for d in split["val"]],
        "train_patients": [d["patient"] for d in split["train"]],
        "mean_patient_dice": statistics.fmean(dice),
        "median_patient_dice": statistics.median(dice),
        "std_patient_dice": statistics.pstdev(dice),
        **{k: v for k, v in _pooled(dice).items() if k.endswith("_ci95_bootstrap")},
        "metric": "per-patient volumetric Dice: all slices of a patient stacked (TP, FP, FN summed over slices), "
                  "on each slice's own pixel grid; a patient with empty prediction and empty label scores 1",
        "patient_dice_from_png_masks": {p: round(d, 4) for p, d in by_patient.items()},
        "mean_slice_dice_tumour_slices": statistics.fmean(tumour_slices) if tumour_slices else None,
        "n_slices_scored": len(slices),
        "brats_mean_dice": statistics.fmean(r["dice"] for r in brats_rows) if brats_rows else None,
        "brats_cases": {Path(r["filename"]).parent.name: round(r["dice"], 4) for r in brats_rows},
        "brats_note": "out-of-domain check: the LGG model applied unchanged to BraTS 2015 volumes (z-scored FLAIR "
                      "and T1c, 240x240x155 at 1 mm), axial slices, channels (FLAIR, FLAIR, T1c), whole tumour = "
                      "label > 0, Dice per volume in the source geometry",
        "bundle_overrides": extra,
        **run_record("benchmark_lgg.py", list(argv or sys.argv[1:]), work / "models", args.epochs, train_s, eval_s),
        "eval_precision": "fp32",  # the brain bundle's inference has no reduced-precision path
        "per_patient": [{"patient": Path(r["filename"]).parent.name, "dice": round(r["dice"], 4)} for r in rows],
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_patient",)}, indent=2))
    return 0


def recipe_clash(out: Path, epochs: int, overrides: dict) -> str | None:
    """Why a fold run must not write ``out``: the file holds a fold of another recipe (other epochs or bundle
    overrides), which this run would replace under the same cross-validation name; ``None`` when it may."""
    if not out.is_file():
        return None
    old = json.loads(out.read_text())
    was = (old.get("epochs_requested", old.get("epochs")), old.get("bundle_overrides"))
    now = (epochs, overrides)
    if was == now:
        return None
    return (f"{out} holds a fold of another recipe (epochs {was[0]}, overrides {was[1]}; this run: epochs {now[0]}, "
            f"overrides {now[1]}): give --cv-name NAME to keep this recipe apart, or --out another file")


def all_folds(argv: list[str], args: argparse.Namespace) -> int:
    """Run ``--fold K`` for every fold without a result file, then its lever selection, then the summary."""
    import select_lgg_levers

    rest = [a for a in argv if a != "--all-folds"]
    for k in range(args.num_folds):
        if not (RESULTS / f"lgg_{args.cv_name}_fold{k}.json").is_file():
            if main(rest + ["--fold", str(k)]) != 0:
                return 1
        if not (RESULTS / f"lgg_{args.cv_name}_levers_fold{k}.json").is_file():
            if select_lgg_levers.main(["--fold", str(k), "--num-folds", str(args.num_folds), "--seed",
                                       str(args.seed), "--data", args.data, "--cv-name", args.cv_name]) != 0:
                return 1
    return cv_summary(RESULTS, args.num_folds, args.cv_name)


def nested_file(names: list[str]) -> str:
    """The nested summary's file name: one per set of recipes (``cv,cvlong``: ``lgg_nested_cv_cvlong.json``)."""
    return "lgg_nested_" + "_".join(names) + ".json"


def nested_summary(results: Path, num_folds: int, names: list[str]) -> int:
    """Per fold, the recipe (``--cv-name``) whose fold model scores best on the fold's selection patients; pool
    the held-out patients of each fold as scored by its chosen recipe, without and with that recipe's levers."""
    folds, rows = {}, {"baseline": [], "levers": []}
    for k in range(num_folds):
        lv = {n: results / f"lgg_{n}_levers_fold{k}.json" for n in names}
        if not all(p.is_file() for p in lv.values()):
            continue
        lv = {n: json.loads(p.read_text()) for n, p in lv.items()}
        sel = {n: {how: r["selection_mean_dice"][r["test"][key]["variant"]]
                   for how, key in (("baseline", "baseline"), ("levers", "chosen"))} for n, r in lv.items()}
        picked = {how: max(names, key=lambda n: (sel[n][how], -names.index(n))) for how in ("baseline", "levers")}
        for how, name in picked.items():
            rows[how] += [dict(patient=r["patient"], dice=r["baseline" if how == "baseline" else "chosen"], fold=k,
                               recipe=name) for r in lv[name]["per_patient"]]
        folds[k] = {"selection_mean_dice": sel, "picked": picked,
                    "selection_patients": lv[names[0]]["selection_patients"]}
    if not folds:
        print(f"error: no fold has lever results for all of {names} in {results}", file=sys.stderr)
        return 2

    summary = {
        "dataset": "LGG brain MRI (kaggle_3m), per-patient Dice pooled over cross-validation folds, the recipe "
                   "chosen per fold on that fold's selection patients",
        "recipes": names, "folds_done": sorted(folds),
        "protocol": "each fold's selection patients (a tenth of its training folds; none of its held-out patients) "
                    "score every recipe's fold model; the best mean there (ties: the first listed) is that fold's "
                    "model: 'no_levers' compares the bundle's own inference, 'with_levers' each recipe with the "
                    "levers its selection patients chose (select_lgg_levers.py)",
        "no_levers": _pooled([r["dice"] for r in rows["baseline"]]),
        "with_levers": _pooled([r["dice"] for r in rows["levers"]]),
        "per_fold": folds, "per_patient": rows,
        "command": command_line("benchmark_lgg.py", ["--nested", ",".join(names)]),
    }
    atomic_write_text(results / nested_file(names), json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_patient"}, indent=2))
    return 0


def _pooled(dice: list[float]) -> dict:
    """Count, mean and median of per-patient Dice, each with its bootstrap 95 % interval."""
    import numpy as np

    return {"n_patients_scored": len(dice), "mean_patient_dice": round(statistics.fmean(dice), 4),
            "median_patient_dice": round(statistics.median(dice), 4),
            "mean_ci95_bootstrap": _bootstrap_ci(dice, np.mean), "median_ci95_bootstrap": _bootstrap_ci(dice, np.median)}


def _bootstrap_ci(values: list[float], stat, n: int = 10000, seed: int = 0) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=float)
    stats = [stat(arr[rng.integers(0, arr.size, arr.size)]) for _ in range(n)]
    return [round(float(np.percentile(stats, 2.5)), 4), round(float(np.percentile(stats, 97.5)), 4)]


def cv_summary(results: Path, num_folds: int, name: str = "cv") -> int:
    """Pool the per-patient Dice of every ``lgg_<name>_fold<K>.json`` present into ``lgg_<name>_summary.json``."""
    folds = {}
    for k in range(num_folds):
        path = results / f"lgg_{name}_fold{k}.json"
        if path.is_file():
            folds[k] = json.loads(path.read_text())
    if not folds:
        print(f"error: no lgg_{name}_fold<K>.json in {results}", file=sys.stderr)
        return 2
    rows = [dict(r, fold=k) for k, f in folds.items() for r in f["per_patient"]]
    seen = [r["patient"] for r in rows]
    if len(seen) != len(set(seen)):
        raise RuntimeError("a patient is scored by two folds: the fold results come from different splits")
    summary = {
        "dataset": "LGG brain MRI (kaggle_3m), per-patient Dice pooled over cross-validation folds",
        "folds_done": sorted(folds), "folds_missing": [k for k in range(num_folds) if k not in folds],
        **_pooled([r["dice"] for r in rows]),
        "per_fold": {k: {"mean": round(f["mean_patient_dice"], 4), "n": f["n_val_patients"], "epochs": f["epochs"],
                         "git_rev": f["git_rev"], "command": f["command"]} for k, f in folds.items()},
        "per_patient": rows,
        "command": command_line("benchmark_lgg.py", ["--cv-summary"] + (["--cv-name", name] if name != "cv" else [])),
    }
    levers = {k: json.loads((results / f"lgg_{name}_levers_fold{k}.json").read_text()) for k in folds
              if (results / f"lgg_{name}_levers_fold{k}.json").is_file()}
    if levers:  # scripts/select_lgg_levers.py: each fold's inference levers chosen on its own selection patients
        chosen = [dict(patient=r["patient"], dice=r["chosen"], fold=k) for k, lv in levers.items()
                  for r in lv["per_patient"]]
        summary["with_levers"] = {
            "note": "each fold's model with the inference levers (flip TTA, threshold, largest 3D component) its own "
                    "selection patients chose (scripts/select_lgg_levers.py); folds without a lever result are "
                    "left out, so compare with the baseline over the same folds",
            "folds": sorted(levers), **_pooled([r["dice"] for r in chosen]),
            "baseline_same_folds_mean": round(statistics.fmean(
                r["baseline"] for lv in levers.values() for r in lv["per_patient"]), 4),
            "chosen_per_fold": {k: lv["chosen"] for k, lv in levers.items()},
            "per_patient": chosen,
        }
    atomic_write_text(results / f"lgg_{name}_summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_patient"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
