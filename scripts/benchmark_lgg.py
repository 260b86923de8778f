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

``--set 'channels=[1]'`` trains on FLAIR alone: in LGG a missing pre- or post-contrast sequence was
replaced by FLAIR (7 of the 35 patients here), and FLAIR is the sequence the masks were drawn on.

Progress is the bundle's epoch log. A run continues from the latest checkpoint in ``--work`` unless
``--no-resume``; ``--eval-only`` evaluates the best checkpoint there without training.
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

from _provenance import run_record  # noqa: E402

from monai_pipeline.app.bundles import parse_overrides, run_bundle  # noqa: E402
from monai_pipeline.data.datasets import brain_datalist  # noqa: E402
from monai_pipeline.evaluation.run import read_metric_details, score_slice_folders  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402
from monai_pipeline.engine.checkpoints import latest_checkpoint  # noqa: E402

SPLIT = {"val_fraction": 0.1, "test_fraction": 0.2}


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
    ap.add_argument("--work", default=str(ROOT / "runs" / "lgg"), help="checkpoints and logs")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="skip training: evaluate the best checkpoint in --work")
    ap.add_argument("--max-cases", type=int, default=None, help="quick check on a subset of patients")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lgg_brain_dice.json"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override")
    args = ap.parse_args(argv)

    data, brats = Path(args.data), Path(args.brats)
    if not data.is_dir():
        print(f"error: {data} not found: point --data at the lgg_kaggle_3m folder", file=sys.stderr)
        return 2
    work = Path(args.work)
    extra = parse_overrides(args.set)
    overrides = dict(dataset_dir=str(data.resolve()), ckpt_dir=str(work / "models"), seed=args.seed,
                     max_cases=args.max_cases, **SPLIT, **extra)
    resume = not args.no_resume and latest_checkpoint(work / "models") is not None

    t0 = time.perf_counter()
    if not args.eval_only:
        run_bundle("brain", "train", (), epochs=args.epochs, output_dir=str(work / "train"), resume=resume,
                   **overrides)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_bundle("brain", "evaluate", (), output_dir=str(work / "test"), eval_datalist="@test_datalist", **overrides)
    eval_s = time.perf_counter() - t1
    rows = read_metric_details(work / "test" / "val_mean_dice_raw.csv")
    split = {s: brain_datalist(data, s, seed=args.seed, max_cases=args.max_cases, validate=False, **SPLIT)
             for s in ("train", "val", "test")}
    if len(rows) != len(split["test"]):
        raise RuntimeError(f"evaluated {len(rows)} patients but the test split holds {len(split['test'])}")
    slices, patients = score_slice_folders(work / "test" / "predictions", data)
    by_patient = {p["patient"]: p["dice"] for p in patients}

    brats_rows: list[dict] = []
    if brats.is_dir():
        items = brats_datalist(brats)
        run_bundle("brain", "evaluate", (), output_dir=str(work / "brats"), eval_datalist=items,
                   **{k: v for k, v in overrides.items() if k not in ("max_cases",)})
        brats_rows = read_metric_details(work / "brats" / "val_mean_dice_raw.csv")

    dice = [r["dice"] for r in rows]
    tumour_slices = [s["dice"] for s in slices if s["label_pixels"] > 0]
    result = {
        "dataset": "LGG brain MRI (Buda et al. 2019, kaggle_3m subset, ../shared/data/lgg_kaggle_3m), patient-level split",
        "n_train_patients": len({d["patient"] for d in split["train"]}),
        "n_val_patients": len(split["test"]),
        "n_val_note": "validation patients = held-out patients the figures are measured on: never trained on, never "
                      f"used to choose anything; {len(split['val'])} other patients chose the checkpoint (best "
                      "per-patient Dice) and early stopping",
        "n_selection_patients": len(split["val"]),
        "n_train_slices": sum(len(d["image"]) for d in split["train"]),
        "split_fractions": SPLIT,
        "val_patients": [d["patient"] for d in split["test"]],
        "selection_patients": [d["patient"] for d in split["val"]],
        "train_patients": [d["patient"] for d in split["train"]],
        "mean_patient_dice": statistics.fmean(dice),
        "median_patient_dice": statistics.median(dice),
        "std_patient_dice": statistics.pstdev(dice),
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


if __name__ == "__main__":
    sys.exit(main())
