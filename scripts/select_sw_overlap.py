#!/usr/bin/env python
"""Choose the lung bundle's sliding-window overlap on selection phantoms, never on the reported ones.

Selection phantoms use seeds the speed benchmark's training and test phantoms never use (5 MSD-size
phantoms, seed 7, and a 512 x 512 x 300 CT at 0.7 x 0.7 x 1.0 mm, seed 901). Each overlap segments them
with the benchmark's inference model (our bundle, ``--infer-epochs`` epochs); Dice and network seconds per
case are written to ``benchmarks/results/overlap_selection_lung.json``. The bundle's default ``sw_overlap``
is the overlap this chose.

    .venv/bin/python scripts/select_sw_overlap.py          # after scripts/benchmark_speed.py has trained
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv: list[str] | None = None) -> int:
    import torch

    from _provenance import machine_provenance
    from benchmark_speed import StageTimer, dice, ours_infer, ours_pipeline
    from monai_pipeline.io.atomic import atomic_write_text
    from monai_pipeline.io.images import write_nifti
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom, write_msd_dataset
    from monai_pipeline.engine.checkpoints import latest_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "speed_selection"))
    ap.add_argument("--weights-dir", default=str(ROOT / "runs" / "speed" / "ours_models_long"))
    ap.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.375, 0.5, 0.625])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overlap_selection_lung.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    weights = latest_checkpoint(args.weights_dir)
    if weights is None:
        print(f"error: no trained weights in {args.weights_dir}: run scripts/benchmark_speed.py first", file=sys.stderr)
        return 2
    data, big = work / "data", work / "big"
    if not (data / "dataset.json").is_file():
        write_msd_dataset(data, num_train=0, num_test=5, seed=7)
    if not (big / "labels" / "sel_512.nii.gz").is_file():
        img, lab, aff = make_phantom(901, PhantomSpec((512, 512, 300), (0.7, 0.7, 1.0), jitter=0.0), n_tumours=3,
                                     direction="identity")
        write_nifti(img, aff, big / "images" / "sel_512.nii.gz")
        write_nifti(lab, aff, big / "labels" / "sel_512.nii.gz")
    cases = [(p, data / "labelsTs" / p.name) for p in sorted((data / "imagesTs").glob("*.nii.gz"))]
    cases.append((big / "images" / "sel_512.nii.gz", big / "labels" / "sel_512.nii.gz"))
    results = {}
    for overlap in args.overlaps:
        pipe = ours_pipeline(weights, work / f"masks_{overlap}", sw_overlap=overlap)
        rows = {}
        for image, label in cases:
            timer = StageTimer()
            mask = ours_infer(pipe, image, work / f"masks_{overlap}", timer)
            rows[image.name] = {"dice": dice(mask, label), "network_seconds": round(timer.seconds["network"], 2)}
        results[str(overlap)] = {"cases": rows, "mean_dice": round(float(np.mean([r["dice"] for r in rows.values()])), 4),
                                 "network_seconds": round(sum(r["network_seconds"] for r in rows.values()), 2)}
        print(overlap, json.dumps(results[str(overlap)]), flush=True)
    record = {**machine_provenance("select_sw_overlap.py", argv if argv is not None else sys.argv[1:]),
              "weights": str(weights), "results": results}
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
