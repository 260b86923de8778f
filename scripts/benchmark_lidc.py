#!/usr/bin/env python
"""LIDC-IDRI nodule benchmark for the nodule delineation bundle: train on patients, report Dice on unseen patients.

Trains ``bundles/lung_nodule_ct_delineation`` (its own configs: patch size, spacing, window and the LIDC
datalists) on a fixed-seed patient-level split of ``../shared/data/lidc_nodules``:
train / validation (checkpoint choice, early stopping) / test (reported only, never used to choose
anything). Then runs the bundle's evaluate workflow on the test patients and writes
``benchmarks/results/lidc_nodule_dice.json`` with the figures, the command, the device and the git revision.

    .venv/bin/python scripts/benchmark_lidc.py --epochs 40          # resumable: run it again to continue

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

from monai_pipeline.app.bundles import parse_overrides, resolve, run_bundle  # noqa: E402
from monai_pipeline.data.datasets import lidc_split  # noqa: E402
from monai_pipeline.evaluation.run import read_metric_details  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402
from monai_pipeline.engine.checkpoints import latest_checkpoint  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from _provenance import PrecisionFallbacks, eval_precision, run_record, training_session  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lidc_nodules"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "lidc"), help="checkpoints and logs")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval-only", action="store_true",
                    help="skip training: evaluate the best checkpoint already in --work (e.g. after stopping a long run)")
    ap.add_argument("--max-cases", type=int, default=None, help="quick check on a subset")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lidc_nodule_dice.json"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not (data / "index.csv").is_file():
        print(f"error: {data}/index.csv not found: point --data at the lidc_nodules folder", file=sys.stderr)
        return 2
    work = Path(args.work)
    extra = parse_overrides(args.set)
    overrides = dict(dataset_dir=str(data.resolve()), ckpt_dir=str(work / "models"), seed=args.seed,
                     max_cases=args.max_cases, **extra)
    resume = not args.no_resume and latest_checkpoint(work / "models") is not None

    t0 = time.perf_counter()
    if not args.eval_only:
        training_session(work / "models", resume)
        run_bundle("nodule", "train", epochs=args.epochs, output_dir=str(work / "train"), resume=resume,
                   **overrides)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with PrecisionFallbacks() as fallbacks:
        run_bundle("nodule", "evaluate", output_dir=str(work / "test"), save_predictions=False, **overrides)
    eval_s = time.perf_counter() - t1

    rows = [(r["case"], r["dice"]) for r in read_metric_details(work / "test" / "val_mean_dice_raw.csv")]
    dice = [d for _, d in rows]
    fractions = dict(zip(("val_fraction", "test_fraction"),
                         resolve("nodule", "train", ["val_fraction", "test_fraction"], **overrides)))
    split = {s: lidc_split(data, s, seed=args.seed, max_cases=args.max_cases, **fractions)
             for s in ("train", "val", "test")}
    if len(split["test"]) != len(rows):
        raise RuntimeError(f"evaluated {len(rows)} nodules but the test split holds {len(split['test'])}")
    result = {
        "dataset": "LIDC-IDRI nodule crops (../shared/data/lidc_nodules), patient-level split",
        "n_train": len(split["train"]),
        "n_val": len(split["test"]),
        "n_test": len(split["test"]),
        "n_val_note": "n_val = n_test: the held-out test nodules the figures are measured on (patients never "
                      f"trained on, never used to choose anything); n_selection = {len(split['val'])} nodules of "
                      "other patients chose the checkpoint (best validation Dice) and early stopping",
        "n_selection": len(split["val"]),
        "split_fractions": fractions,
        "n_train_patients": len({d["patient"] for d in split["train"]}),
        "n_test_patients": len({d["patient"] for d in split["test"]}),
        "mean_dice": statistics.fmean(dice),
        "median_dice": statistics.median(dice),
        "std_dice": statistics.pstdev(dice),
        "fraction_dice_ge_0.85": sum(d >= 0.85 for d in dice) / len(dice),
        "metric": "Dice per nodule (foreground), in each crop's source geometry (the bundle's evaluate: prediction "
                  "resampled back to the crop's grid)",
        **run_record("benchmark_lidc.py", list(argv or sys.argv[1:]), work / "models", args.epochs, train_s, eval_s),
        **eval_precision(overrides, fallbacks, len(rows)),
        "per_nodule": [{"case": n, "dice": round(d, 4)} for n, d in rows],
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_nodule"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
