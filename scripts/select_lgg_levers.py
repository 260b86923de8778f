#!/usr/bin/env python
"""Inference-time levers for an LGG cross-validation fold's model, chosen on that fold's selection patients only,
then reported on the fold's held-out patients: flip test-time augmentation, the probability threshold, and 3D
connected-component post-processing of the patient's stacked slices (Buda et al. 2019 keep the largest;
``--components all,over10,largest`` adds a milder rule, every component with at least 10 % of the largest's voxels).

For one fold of ``scripts/benchmark_lgg.py --fold K`` (model in ``runs/lgg_cv/fold<K>/models``): every patient
of the fold's selection split (``val``: a tenth of the training folds, the patients that chose the checkpoint;
never fold K's own patients) is segmented with the brain bundle's own preprocessing, network and inferer; the
foreground probability is brought back to the slices' own grid (the preprocessing inverted); each variant
(TTA x threshold x components) is scored by per-patient Dice (all slices stacked). The variant with the best mean
selection Dice is chosen (a costlier or less simple one must win by more than 0.002); then fold K's patients are
scored once with the baseline (no TTA, 0.5, all components: what the bundle's evaluate runs) and with the chosen
variant. The choice is the fold's own: each fold may choose differently, as a nested protocol does.

    .venv/bin/python scripts/select_lgg_levers.py --fold 0
    .venv/bin/python scripts/benchmark_lgg.py --cv-summary     # pools the lever results too

``--model-dir`` given more than once scores the models' ensemble (``--cv-name`` then names the ensemble): each
variant thresholds the mean of the models' foreground probabilities, each model with its own preprocessing (its
contract's), on the slices' own grid; the cost per patient is the sum of the models'.

    .venv/bin/python scripts/select_lgg_levers.py --fold 0 --cv-name cvens \
        --model-dir runs/lgg_cv25d/fold0/models --model-dir runs/lgg_cvvol/fold0/models

Writes ``benchmarks/results/lgg_<cv-name>_levers_fold<K>.json`` (``--cv-name`` as benchmark_lgg.py's, default ``cv``).
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

from _provenance import machine_provenance  # noqa: E402
from benchmark_lgg import CV_SPLIT, RESULTS  # noqa: E402  (the folds as the benchmark draws them)
from monai_pipeline.app.delineate import CropSegmenter  # noqa: E402
from monai_pipeline.data.datasets import brain_datalist  # noqa: E402
from monai_pipeline.data.masks import STACK_COMPONENT_RULES, keep_components  # noqa: E402  (the bundle's rules)
from monai_pipeline.evaluation.metrics import dice  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402

TTA = {"none": [], "flip_lr": [[0]]}  # training flips spatial axis 0 only (RandFlipd in train.json)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
COMPONENTS = ("all", "largest")  # the default grid, in order of preference on a tie
BASELINE = ("none", 0.5, "all")


def probabilities(models: list[CropSegmenter], item: dict, flips: list) -> np.ndarray:
    """Foreground probability ``(H, W, S)`` of one patient's stacked slices on the slices' own grid: the mean over
    ``models`` (one model: its own), each through its own preprocessing and back."""
    from monai.transforms import Invertd

    probs = []
    for model in models:
        d = model.predict(item["image"], flips)
        d["pred"] = d["pred"].softmax(dim=0)
        d = Invertd("pred", transform=model.preprocessing, orig_keys="image", nearest_interp=False)(d)
        probs.append(np.asarray(d["pred"][1], dtype=np.float32))
    return np.mean(probs, axis=0)  # one model: its own probability, exactly (x / 1)


def parse_components(text: str) -> tuple[str, ...]:
    """The ``--components`` grid ``"all,over10,largest"`` as a tuple, simplest first; it must start with the
    baseline ``all`` and name each rule of :data:`STACK_COMPONENT_RULES` (the brain bundle's: no ``centre``) at
    most once."""
    grid = tuple(text.split(","))
    if grid[0] != "all" or len(set(grid)) != len(grid) or set(grid) - set(STACK_COMPONENT_RULES):
        raise ValueError(f"--components {text}: give distinct rules of {','.join(STACK_COMPONENT_RULES)}, all first")
    return grid


def reference(item: dict) -> np.ndarray:
    from monai_pipeline.transforms import LoadBrainImaged

    return np.asarray(LoadBrainImaged("label", label=True)({"label": item["label"]})["label"][0]) > 0


def score(models: list[CropSegmenter], items: list[dict], ttas: list[str],
          components: tuple = COMPONENTS) -> tuple[dict, dict]:
    """Per-patient Dice of every variant ``(tta, threshold, components)`` of the models' (mean) probability, and
    seconds per patient per TTA."""
    per: dict = {v: [] for v in itertools.product(ttas, THRESHOLDS, components)}
    seconds = {t: 0.0 for t in ttas}
    for item in items:
        ref = reference(item)
        for t in ttas:
            t0 = time.perf_counter()
            prob = probabilities(models, item, TTA[t])
            seconds[t] += time.perf_counter() - t0
            for th, comp in itertools.product(THRESHOLDS, components):
                per[(t, th, comp)].append(dice(keep_components(prob > th, comp), ref))
    return per, {t: s / max(len(items), 1) for t, s in seconds.items()}


def _name(v: tuple) -> str:
    return f"tta={v[0]} threshold={v[1]} components={v[2]}"


def choose(means: dict, components: tuple = COMPONENTS) -> tuple:
    """The best mean; a costlier TTA, a post-processing step further along ``components`` or a threshold further
    from 0.5 must win by 0.002."""
    order = sorted(means, key=lambda v: (list(TTA).index(v[0]), components.index(v[2]), abs(v[1] - 0.5)))
    chosen = order[0]
    for v in order[1:]:
        if means[v] > means[chosen] + 0.002:
            chosen = v
    return chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--num-folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lgg_kaggle_3m"))
    ap.add_argument("--cv-name", default="cv", help="benchmark_lgg.py --cv-name of the fold (default cv)")
    ap.add_argument("--model-dir", action="append", default=None,
                    help="the fold's model folder (default runs/lgg_<cv-name>/fold<K>/models); more than once: "
                         "their ensemble")
    ap.add_argument("--components", default=",".join(COMPONENTS),
                    help="the component rules to choose from, simplest first (default all,largest; any of "
                         f"{','.join(STACK_COMPONENT_RULES)}, starting with all, the baseline)")
    ap.add_argument("--max-cases", type=int, default=None, help="quick check on a subset of patients")
    ap.add_argument("--fold-result", default=None,
                    help="the fold's benchmark_lgg.py result the baseline must reproduce (default "
                         "benchmarks/results/lgg_<cv-name>_fold<K>.json)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        components = parse_components(args.components)
    except ValueError as e:
        ap.error(str(e))
    fold_result = Path(args.fold_result) if args.fold_result else RESULTS / f"lgg_{args.cv_name}_fold{args.fold}.json"
    own = ROOT / "runs" / f"lgg_{args.cv_name}" / f"fold{args.fold}" / "models"
    model_dirs = [Path(d) for d in args.model_dir or [own]]
    out = Path(args.out) if args.out else RESULTS / f"lgg_{args.cv_name}_levers_fold{args.fold}.json"
    if not Path(args.data).is_dir():
        print(f"error: {args.data} not found: point --data at the lgg_kaggle_3m folder", file=sys.stderr)
        return 2
    split = {**CV_SPLIT, "fold": args.fold, "num_folds": args.num_folds}
    sel, test = (brain_datalist(args.data, s, seed=args.seed, max_cases=args.max_cases, validate=False, **split)
                 for s in ("val", "test"))
    models = [CropSegmenter("brain", d) for d in model_dirs]

    per, cost = score(models, sel, list(TTA), components)
    means = {v: statistics.fmean(d) for v, d in per.items()}
    chosen = choose(means, components)
    print(f"fold {args.fold} selection ({len(sel)} patients): baseline {means[BASELINE]:.4f}; "
          f"chosen {_name(chosen)} {means[chosen]:.4f}")
    tper, tcost = score(models, test, sorted({BASELINE[0], chosen[0]}, key=list(TTA).index), components)
    base, best = tper[BASELINE], tper[chosen]
    recorded = json.loads(fold_result.read_text()) if fold_result.is_file() else None
    if recorded:  # the baseline is what the bundle's evaluate measured for the committed fold result
        was = {r["patient"]: r["dice"] for r in recorded["per_patient"]}
        for it, a in zip(test, base):
            if abs(was[it["case_id"]] - a) > 0.002:
                raise RuntimeError(f"{it['case_id']}: baseline Dice {a:.4f} here but {was[it['case_id']]:.4f} in "
                                   f"{fold_result.name}: is {' + '.join(map(str, model_dirs))} the model that result "
                                   "measured?")
    result = {
        "dataset": "LGG brain MRI (kaggle_3m), patient-level cross-validation fold "
                   f"{args.fold} of {args.num_folds} (seed {args.seed}), per-patient Dice (all slices stacked)",
        "model_dir": str(model_dirs[0]) if len(model_dirs) == 1 else [str(d) for d in model_dirs],
        "protocol": "every variant scored on the fold's selection patients (a tenth of the training folds; they "
                    "chose the checkpoint); the best mean chosen there (a costlier TTA, a post-processing step or a "
                    "threshold further from 0.5 must win by > 0.002); the fold's held-out patients scored only "
                    "with the baseline and the chosen variant",
        "fold": args.fold, "num_folds": args.num_folds,
        "selection_patients": [d["patient"] for d in sel], "val_patients": [d["patient"] for d in test],
        "selection_mean_dice": {_name(v): round(m, 4) for v, m in sorted(means.items(), key=lambda kv: -kv[1])},
        "components_grid": list(components),
        "chosen": {"tta": chosen[0], "flips": TTA[chosen[0]], "threshold": chosen[1], "components": chosen[2]},
        "test": {"baseline": {"variant": _name(BASELINE), "mean_dice": round(statistics.fmean(base), 4),
                              "median_dice": round(statistics.median(base), 4)},
                 "chosen": {"variant": _name(chosen), "mean_dice": round(statistics.fmean(best), 4),
                            "median_dice": round(statistics.median(best), 4)}},
        "fold_result_mean_dice": recorded["mean_patient_dice"] if recorded else None,
        "fold_result_git_rev": recorded["git_rev"] if recorded else None,
        "seconds_per_patient": {t: round(s, 3) for t, s in {**cost, **tcost}.items()},
        "per_patient": [{"patient": it["patient"], "baseline": round(a, 4), "chosen": round(b, 4)}
                        for it, a, b in zip(test, base, best)],
        **machine_provenance("select_lgg_levers.py", list(argv or sys.argv[1:])),
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("chosen", "test", "fold_result_mean_dice", "seconds_per_patient")},
                     indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
