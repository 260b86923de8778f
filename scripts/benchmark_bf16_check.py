#!/usr/bin/env python
"""bf16 against float32 inference on real data: the LIDC nodule model's unseen test nodules, segmented three ways.

Takes a model trained by ``scripts/benchmark_lidc.py`` (its ``--work`` folder) and runs the nodule delineation bundle's
evaluate workflow on the same held-out test nodules (the same seeded patient-level split) with

* ``fp32``: ``precision fp32``, the reference answer;
* ``auto``: the default, ``precision auto``: bf16 where the CPU computes it natively, kept for a nodule only
  when its check window agrees with float32 (``PrecisionInferer``), float32 otherwise;
* ``bf16``: ``precision bf16``, unchecked (an explicit choice is not second-guessed).

For each it records the Dice of every nodule, the mean, how many nodules fall below 0.1 Dice, how many move by
more than 0.05 from float32, the evaluation's wall time (the fastest of ``--repeats`` runs, taken in turn;
the first includes loading the crops into the cache), and (``auto``) how many nodules were redone in float32
and why. On a CPU whose bf16 kernels are sound this measures what the check costs; on one whose kernels are
not (issue 14: AMX), what it saves. Then it times the check on a whole-CT-sized input against the bf16 pass it
checks (:func:`ct_check_cost`).

    .venv/bin/python scripts/benchmark_bf16_check.py --work runs/lidc

Writes ``benchmarks/results/bf16_check_nodules_<cpu>.json`` (command, device, CPU and its instruction sets, git
revision, the model's training precision).
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

from _provenance import PrecisionFallbacks, cpu_tag, eval_precision, run_record  # noqa: E402

from monai_pipeline.app.bundles import run_bundle  # noqa: E402
from monai_pipeline.evaluation.run import read_metric_details  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402

SETTINGS = {"fp32": {"precision": "fp32"}, "auto": {"precision": "auto"}, "bf16": {"precision": "bf16"}}


def ct_check_cost(shape=(208, 160, 150), repeats: int = 3) -> dict:
    """What the check costs on a whole CT, against the bf16 sliding-window pass it checks: the lung bundle's
    network (random weights: only time is measured) and windows (96 x 96 x 64, 4 per batch, overlap 0.5) on
    an input of ``shape`` voxels, about a 512 x 512 x 300 CT at 0.7 x 0.7 x 1.0 mm cropped to the lungs and
    resampled to 1.5 x 1.5 x 2.0 mm. Fastest of ``repeats`` each."""
    import torch
    from monai.bundle import ConfigParser

    from monai_pipeline.app.bundles import bundle_configs
    from monai_pipeline.engine.precision import PrecisionInferer

    parser = ConfigParser()
    parser.read_config(bundle_configs("lung", "inference"))
    parser.update({"device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network_def").eval()
    sw = parser.get_parsed_content("sw_inferer")
    inferer = PrecisionInferer(sw, "bf16", channels_last=True, verify=True)
    x = torch.rand(1, 1, *shape)
    runner = inferer._network(net)
    times: dict[str, list[float]] = {"bf16_pass": [], "check": []}
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            with inferer._autocast("cpu"):
                out = sw(x, runner)
            times["bf16_pass"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            inferer._disproved(x, runner, out.float(), (), {})
            times["check"].append(time.perf_counter() - t0)
    best = {k: round(min(v), 2) for k, v in times.items()}
    return {"input_voxels": list(shape), "window": list(sw.roi_size), "sw_batch_size": sw.sw_batch_size,
            "overlap": sw.overlap, "bf16_pass_seconds": best["bf16_pass"], "check_seconds": best["check"],
            "check_over_pass": round(best["check"] / best["bf16_pass"], 3),
            "note": "random weights: times only; the check is one batch of sw_batch_size copies of a window in "
                    "bf16 and the window alone in float32"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lidc_nodules"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "lidc"), help="benchmark_lidc.py's --work (models/ inside)")
    ap.add_argument("--seed", type=int, default=0, help="the split's seed (as benchmark_lidc.py was run)")
    ap.add_argument("--out", help="result file (default benchmarks/results/bf16_check_nodules_<cpu>.json)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each setting; the fastest time is kept")
    ap.add_argument("--ct-only", action="store_true",
                    help="only time the check on a whole-CT-sized input and add it to the existing result")
    args = ap.parse_args(argv)
    if args.ct_only:  # add the whole-CT cost to an existing result
        from _provenance import machine_provenance

        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bf16_check_nodules_{cpu_tag()}.json"
        result = json.loads(out.read_text())
        result["check_cost_whole_ct"] = {**ct_check_cost(), **machine_provenance("benchmark_bf16_check.py",
                                                                                 list(argv or sys.argv[1:]))}
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["check_cost_whole_ct"], indent=2))
        return 0

    data, work = Path(args.data), Path(args.work)
    if not (data / "index.csv").is_file():
        print(f"error: {data}/index.csv not found: point --data at the lidc_nodules folder", file=sys.stderr)
        return 2
    if not (work / "models" / "model.pt").is_file():
        print(f"error: {work}/models/model.pt not found: train first with scripts/benchmark_lidc.py --work {work}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bf16_check_nodules_{cpu_tag()}.json"
    base = dict(dataset_dir=str(data.resolve()), ckpt_dir=str(work / "models"), seed=args.seed)

    runs: dict[str, dict] = {}
    for attempt in range(args.repeats):  # in turn, so a slower moment of the machine does not favour one setting
        for name, setting in SETTINGS.items():
            folder = work / "precision" / name
            t0 = time.perf_counter()
            with PrecisionFallbacks() as fallbacks:
                run_bundle("nodule", "evaluate", output_dir=str(folder), save_predictions=False, **base,
                           **setting)
            seconds = time.perf_counter() - t0
            dice = {r["case"]: r["dice"] for r in read_metric_details(folder / "val_mean_dice_raw.csv")}
            if name in runs and runs[name]["dice"] != dice:
                raise RuntimeError(f"{name}: a repeat gave other Dice values")
            times = runs.get(name, {}).get("seconds_each", []) + [round(seconds, 1)]
            runs[name] = {"seconds": min(times), "seconds_each": times, "dice": dice,
                          **eval_precision(setting, fallbacks, len(dice)), "redone_reasons": fallbacks.reasons}
            print(f"{name}: mean Dice {statistics.fmean(dice.values()):.4f} in {seconds:.1f} s", flush=True)

    ref = runs["fp32"]["dice"]
    summary = {}
    for name, run in runs.items():
        dice = run.pop("dice")
        if set(dice) != set(ref):
            raise RuntimeError(f"{name} scored other nodules than fp32")
        summary[name] = {
            "mean_dice": statistics.fmean(dice.values()),
            "median_dice": statistics.median(dice.values()),
            "nodules_below_0.1": sum(d < 0.1 for d in dice.values()),
            "nodules_moved_over_0.05_from_fp32": sum(abs(d - ref[c]) > 0.05 for c, d in dice.items()),
            "max_abs_dice_change_from_fp32": max(abs(d - ref[c]) for c, d in dice.items()),
            **run,
            "per_nodule": {c: round(d, 4) for c, d in dice.items()},
        }
    result = {
        "what": "the LIDC nodule model's held-out test nodules segmented in fp32, in precision auto (bf16 checked "
                "against fp32 per nodule) and in unchecked bf16; Dice per nodule in each crop's source geometry",
        "n_nodules": len(ref),
        "check": "PrecisionInferer: the window on the most confident foreground voxel run both ways at the sliding "
                 "window's batch size; kept when finite, float32 finds foreground there, and foreground "
                 "probabilities agree within 0.1 at every voxel",
        **run_record("benchmark_bf16_check.py", list(argv or sys.argv[1:]), work / "models", 0, 0.0,
                     sum(r["seconds"] for r in summary.values())),
        "settings": summary,
        "check_cost_whole_ct": ct_check_cost(),
    }
    for key in ("epochs_requested", "train_seconds_this_run"):
        result.pop(key, None)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    brief = {name: {k: v for k, v in run.items() if k != "per_nodule"} for name, run in summary.items()}
    print(json.dumps({**result, "settings": brief}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
