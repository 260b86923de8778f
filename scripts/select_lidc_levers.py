#!/usr/bin/env python
"""Inference-time levers for the LIDC nodule model, chosen on the selection patients only, then reported on the
test patients: flip test-time augmentation, the probability threshold, keeping the component at the crop centre.

For every nodule of the nodule bundle's selection split (``val``: the patients that chose the checkpoint; never
the test patients) the trained model's foreground probability is brought back to the crop's own grid (the
bundle's preprocessing, network, inferer and ``ResampleToSourced``), without and with flip TTA; each variant
(TTA x threshold x component rule) is scored per nodule against the reference mask. The variant with the best
mean selection Dice is chosen (ties go to the cheaper, simpler one); then the test patients are scored once
with the baseline (no TTA, 0.5, every component: what the bundle's evaluate runs) and with the chosen variant.

    .venv/bin/python scripts/select_lidc_levers.py --model-dir runs/lidc/main/models

``--model-dir`` given more than once scores the models' ensemble: each variant averages the models' foreground
probabilities on the crop's grid before its threshold (the cost per nodule is the sum of the models').

Writes ``benchmarks/results/lidc_levers_<cpu tag>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _provenance import cpu_tag, machine_provenance  # noqa: E402
from monai_pipeline.app.delineate import CropSegmenter  # noqa: E402
from monai_pipeline.data.datasets import lidc_split  # noqa: E402
from monai_pipeline.data.masks import keep_components  # noqa: E402
from monai_pipeline.evaluation.metrics import dice  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402
from monai_pipeline.io.images import read_image  # noqa: E402

TTA = {"none": [], "flip_inplane": [[0], [1], [0, 1]],
       "flip_all": [[0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]]}
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
COMPONENTS = ("all", "centre")
BASELINE = ("none", 0.5, "all")



def probabilities(models: list[CropSegmenter], image: str, flips: list) -> np.ndarray:
    """Foreground probability on the crop's own grid, the mean over ``models`` (one model: its own)."""
    from monai_pipeline.transforms import ResampleToSourced

    probs = [np.asarray(ResampleToSourced("pred", "image", threshold=None)(m.predict(image, flips))["pred"][0],
                        dtype=np.float32) for m in models]
    return np.mean(probs, axis=0)


def score(models: list[CropSegmenter], items: list[dict], ttas: list[str]) -> tuple[dict, dict]:
    """Dice per nodule of every variant ``(tta, threshold, component)`` of the models' (mean) probability, and
    seconds per nodule per TTA."""
    per: dict = {v: [] for v in itertools.product(ttas, THRESHOLDS, COMPONENTS)}
    seconds = {t: 0.0 for t in ttas}
    for item in items:
        ref, props = read_image(item["label"])
        for t in ttas:
            t0 = time.perf_counter()
            prob = probabilities(models, item["image"], TTA[t])
            seconds[t] += time.perf_counter() - t0
            for th in THRESHOLDS:
                mask = prob > th
                for comp in COMPONENTS:
                    m = keep_components(mask, comp, props.spacing)  # as the bundle's KeepComponentsd
                    per[(t, th, comp)].append(dice(m, ref))
    return per, {t: s / max(len(items), 1) for t, s in seconds.items()}


def _name(v: tuple) -> str:
    return f"tta={v[0]} threshold={v[1]} components={v[2]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lidc_nodules"))
    ap.add_argument("--model-dir", action="append", default=None,
                    help="a trained model's folder; more than once: their ensemble (default: the shipped model)")
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"lidc_levers_{cpu_tag()}.json"
    model_dirs = args.model_dir or [str(ROOT / "bundles" / "lung_nodule_ct_delineation" / "models")]
    models = [CropSegmenter("nodule", d) for d in model_dirs]
    sel = lidc_split(args.data, "val", 0.1, 0.2, 0)[: args.max_cases]
    test = lidc_split(args.data, "test", 0.1, 0.2, 0)[: args.max_cases]

    per, cost = score(models, sel, list(TTA))
    means = {v: statistics.fmean(d) for v, d in per.items()}
    # best mean selection Dice; a variant must beat the cheaper/simpler ones by 0.002 to be chosen
    order = sorted(means, key=lambda v: (list(TTA).index(v[0]), v[2] != "all", abs(v[1] - 0.5)))
    chosen = order[0]
    for v in order[1:]:
        if means[v] > means[chosen] + 0.002:
            chosen = v
    print(f"selection ({len(sel)} nodules): baseline {means[BASELINE]:.4f}; chosen {_name(chosen)} {means[chosen]:.4f}")

    tper, tcost = score(models, test, sorted({BASELINE[0], chosen[0]}, key=list(TTA).index))
    report = {v: tper[v] for v in (BASELINE, chosen)}
    result = {
        "dataset": "LIDC-IDRI nodule crops, the nodule bundle's patient-level split (seed 0, val 0.1, test 0.2)",
        "model_dir": model_dirs[0] if len(model_dirs) == 1 else model_dirs,
        "protocol": "every variant scored on the selection nodules (the patients that chose the checkpoint); the best "
                    "mean chosen there (a costlier or less simple variant must win by > 0.002); the test nodules "
                    "scored only with the baseline and the chosen variant",
        "n_selection": len(sel), "n_test": len(test),
        "selection_mean_dice": {_name(v): round(m, 4) for v, m in sorted(means.items(), key=lambda kv: -kv[1])},
        "chosen": {"tta": chosen[0], "flips": TTA[chosen[0]], "threshold": chosen[1], "components": chosen[2]},
        "test": {"baseline": {"variant": _name(BASELINE), "mean_dice": statistics.fmean(report[BASELINE]),
                              "median_dice": statistics.median(report[BASELINE])},
                 "chosen": {"variant": _name(chosen), "mean_dice": statistics.fmean(report[chosen]),
                            "median_dice": statistics.median(report[chosen])}},
        "seconds_per_nodule": {t: round(s, 3) for t, s in {**cost, **tcost}.items()},
        "per_nodule_test": [{"case": it["case_id"], "baseline": round(a, 4), "chosen": round(b, 4)}
                            for it, a, b in zip(test, report[BASELINE], report[chosen])],
        **machine_provenance("select_lidc_levers.py", list(argv or sys.argv[1:])),
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("chosen", "test", "seconds_per_nodule")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
