#!/usr/bin/env python
"""Train the lung bundle in float32 and in bf16 autocast several times; compare held-out Dice and failures.

Decides the bundle's ``train_precision`` default. bf16 autocast on the CPU is not bit-reproducible (oneDNN's
bf16 kernels), so one run per precision says little: each precision trains ``--seeds`` times on the same
synthetic phantoms (tiny grid, as the test suite's model: 4 x 4 x 5 mm, 32 x 32 x 16 patches), and every model
then segments the same held-out test phantoms in float32, so only the training precision differs. A run
whose held-out mean Dice stays under ``--fail-below`` counts as a failure to learn. Results, per run and
summarised per precision, go to ``benchmarks/results/train_precision_lung.json``. Finished runs are kept
under ``--work`` and skipped when the script is run again (resume).

    .venv/bin/python scripts/compare_train_precision.py                      # 2 x 4 runs, about 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# the study's setup, written once: the phantoms, the bundle overrides and the result's "setup" all come from here
TRAIN_PHANTOMS, TEST_PHANTOMS, PHANTOM_SEED = 6, 6, 11
GRID_MM, PATCH, VAL_FRACTION = [4.0, 4.0, 5.0], [32, 32, 16], 0.34
TINY = ["--patch_size", json.dumps(PATCH), "--pixdim", json.dumps(GRID_MM), "--num_workers", "0", "--sw_batch_size", "2"]


def _bundle_run(config: str, args: list[str], cwd: Path, log: Path) -> float:
    """``python -m monai.bundle run`` in ``cwd``; returns wall seconds; raises with the log's tail on failure."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args, *TINY]
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"bundle run failed ({proc.returncode}), see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def one_run(work: Path, data: Path, precision: str, seed: int, epochs: int, lr: float, test: list[dict]) -> dict:
    """Train one model (``precision``, ``seed``) and segment the test phantoms with it in float32."""
    from monai_pipeline.app.bundles import bundle_dir

    run = work / f"{precision}_seed{seed}"
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run.exists():
        shutil.rmtree(run)  # an interrupted run starts over: a half-trained model is not a result
    shutil.copytree(bundle_dir("lung"), run)
    train_s = _bundle_run("['configs/inference.json','configs/train.json']", [
        "--dataset_dir", str(data), "--epochs", str(epochs), "--val_interval", str(epochs), "--val_fraction", str(VAL_FRACTION),
        "--learning_rate", str(lr), "--early_stop_patience", str(epochs + 1), "--seed", str(seed),
        "--train_precision", precision], run, run / "train.log")
    _bundle_run("['configs/inference.json','configs/train.json','configs/evaluate.json']", [
        "--data", json.dumps(test), "--output_dir", str(run / "eval_test"), "--precision", "fp32"], run,
        run / "evaluate.log")
    cases = json.loads((run / "eval_test" / "metrics.json").read_text())["cases"]
    dices = {c["case_id"]: c["dice"] for c in cases}
    result = {"precision": precision, "seed": seed, "train_seconds": round(train_s, 1),
              "test_dice": dices, "mean_test_dice": sum(dices.values()) / len(dices)}
    done.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from _provenance import machine_provenance
    from monai_pipeline.io.atomic import atomic_write_text
    from monai_pipeline.app.synthetic import PhantomSpec, write_msd_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "train_precision"))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--learning-rate", type=float, default=0.005)
    ap.add_argument("--fail-below", type=float, default=0.2, help="held-out mean Dice under which a run failed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_precision_lung.json"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    data = work / "data" / "Task06_Lung"
    if not (data / "dataset.json").is_file():
        write_msd_dataset(data, num_train=TRAIN_PHANTOMS, num_test=TEST_PHANTOMS, seed=PHANTOM_SEED,
                          spec=PhantomSpec((48, 48, 24), (5.0, 5.0, 8.0)))
    test = [{"image": str(p), "label": str(data / "labelsTs" / p.name)}
            for p in sorted((data / "imagesTs").glob("*.nii.gz"))]
    runs = []
    for seed in args.seeds:  # alternate precisions so a slow spell of the machine hits both alike
        for precision in args.precisions:
            r = one_run(work, data, precision, seed, args.epochs, args.learning_rate, test)
            runs.append(r)
            print(f"{precision} seed {seed}: held-out mean Dice {r['mean_test_dice']:.3f}, "
                  f"training {r['train_seconds']:.0f} s", flush=True)
    summary = {}
    for precision in args.precisions:
        d = np.array([r["mean_test_dice"] for r in runs if r["precision"] == precision])
        t = np.array([r["train_seconds"] for r in runs if r["precision"] == precision])
        summary[precision] = {"runs": len(d), "mean_dice": round(float(d.mean()), 4),
                              "min_dice": round(float(d.min()), 4), "max_dice": round(float(d.max()), 4),
                              "failed_runs": int((d < args.fail_below).sum()),
                              "mean_train_seconds": round(float(t.mean()), 1)}
    record = {**machine_provenance("compare_train_precision.py", argv if argv is not None else sys.argv[1:]),
              "setup": {"train_phantoms": TRAIN_PHANTOMS, "val_fraction": VAL_FRACTION, "test_phantoms": len(test),
                        "epochs": args.epochs, "learning_rate": args.learning_rate, "grid_mm": GRID_MM, "patch": PATCH,
                        "inference_precision": "fp32", "fail_below": args.fail_below},
              "summary": summary, "runs": runs}
    atomic_write_text(Path(args.out), json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
