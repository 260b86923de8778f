"""The end-to-end demo behind ``monai-pipeline demo`` (the README's first command).

Synthetic chest CT phantoms -> lung bundle training -> the bundle's evaluate workflow on validation
phantoms -> sliding-window inference on unseen test phantoms -> Dice of the written masks (in their
source geometry) against the phantoms' labels -> a short summary with where the files are and how to
open them in 3D Slicer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from monai_pipeline.app.api import segment, train
from monai_pipeline.app.bundles import device_override, run_bundle
from monai_pipeline.app.synthetic import PhantomSpec, write_msd_dataset
from monai_pipeline.data.datasets import msd_datalist
from monai_pipeline.engine.contract import contract_path, read_contract
from monai_pipeline.evaluation.run import read_metric_details, score_pairs
from monai_pipeline.io.atomic import atomic_write_text
from monai_pipeline.io.naming import mask_path

__all__ = ["run_demo", "DEMO_SETTINGS"]

logger = logging.getLogger(__name__)

# Sized so the whole demo runs in a few minutes on 2 CPU cores; all are ordinary bundle overrides.
DEMO_SETTINGS = {
    "pixdim": [2.0, 2.0, 2.5],
    "patch_size": [64, 64, 32],
    "batch_size": 2,
    "num_samples": 4,
    "elastic_prob": 0.1,
    "learning_rate": 0.002,
    "val_fraction": 0.2,
    "early_stop_patience": 100,
}


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _run_overrides(overrides: dict, ckpt_dir: Path) -> dict:
    """``overrides`` less the settings the trained model's contract records (the model brings its own)."""
    contract = read_contract(ckpt_dir)
    return {k: v for k, v in overrides.items() if contract is None or k not in contract.settings}


def run_demo(out: str | Path = "demo_output", epochs: int = 40, num_train: int = 12, num_test: int = 4,
             seed: int = 0, device: str | None = None, spec: PhantomSpec | None = None,
             settings: dict | None = None) -> dict:
    """Run the demo in ``out`` and return the summary dict (also written to ``out/summary.json``).

    ``spec`` sizes the phantoms and ``settings`` updates :data:`DEMO_SETTINGS` (bundle overrides).
    """
    out = Path(out).resolve()
    data_dir, ckpt_dir = out / "data", out / "models"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    _banner(f"1/4 synthetic lung CT: {num_train} training + {num_test} unseen test phantoms -> {data_dir}")
    write_msd_dataset(data_dir, num_train, num_test, seed, spec or PhantomSpec(), progress=True)
    timings["synthesise_s"] = time.perf_counter() - t0

    overrides = {**DEMO_SETTINGS, **(settings or {}), **device_override(device), "dataset_dir": str(data_dir),
                 "ckpt_dir": str(ckpt_dir), "seed": seed}

    _banner(f"2/4 training the lung bundle for {epochs} epochs")
    t = time.perf_counter()
    train(data_dir, epochs=epochs, val_interval=max(1, epochs // 5), output_dir=str(out / "train"),
          **{k: v for k, v in overrides.items() if k != "dataset_dir"})
    timings["train_s"] = time.perf_counter() - t

    # the model carries its spacing, window, network and patch size (models/model.contract.json): evaluation and
    # inference take them from there, as `monai-pipeline infer --ckpt-dir <out>/models` does later
    overrides = _run_overrides(overrides, ckpt_dir)

    _banner("3/4 evaluating on the validation phantoms (bundle evaluate.json, source geometry)")
    t = time.perf_counter()
    run_bundle("lung", "evaluate", output_dir=str(out / "eval"), **overrides)
    timings["evaluate_s"] = time.perf_counter() - t
    raw = out / "eval" / "val_mean_dice_raw.csv"
    val_rows = read_metric_details(raw) if raw.is_file() else []

    _banner("4/4 sliding-window inference on the unseen test phantoms")
    t = time.perf_counter()
    test_images = [d["image"] for d in msd_datalist(data_dir, split="test")]
    masks_dir = out / "masks"
    infer_overrides = {k: v for k, v in overrides.items() if k not in ("dataset_dir", "ckpt_dir")}
    masks = segment(test_images, ckpt_dir, masks_dir, **infer_overrides).masks
    timings["inference_s"] = time.perf_counter() - t
    pairs = [(m, data_dir / "labelsTs" / Path(img).name) for m, img in zip(masks, test_images)]
    test_rows = score_pairs(pairs)
    timings["total_s"] = time.perf_counter() - t0

    summary = {
        "validation_dice": val_rows,
        "test_dice": [{"case": Path(r["label"]).name, "dice": r["dice"], "mask": r["prediction"]} for r in test_rows],
        "mean_test_dice": sum(r["dice"] for r in test_rows) / max(len(test_rows), 1),
        "dataset": str(data_dir),
        "model": str(ckpt_dir / "model.pt"),
        "contract": str(contract_path(ckpt_dir / "model.pt")),
        "masks": str(masks_dir),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    _banner("summary")
    if val_rows:
        print("validation phantoms (bundle evaluate):")
        for r in val_rows:
            print(f"  {r['case']:24s} Dice {r['dice']:.3f}")
    print("unseen test phantoms (written masks vs. phantom labels, source geometry):")
    for r in summary["test_dice"]:
        print(f"  {r['case']:24s} Dice {r['dice']:.3f}   {r['mask']}")
    print(f"  mean Dice {summary['mean_test_dice']:.3f}")
    print(f"model:  {summary['model']}  (its settings: {summary['contract']}; `monai-pipeline infer --ckpt-dir "
          f"{ckpt_dir}` uses them)")
    print(f"masks:  {masks_dir}  (uint8, same shape/spacing/origin/direction as each CT)")
    print(f"time:   {timings['total_s']:.0f} s  ({', '.join(f'{k} {v:.0f}' for k, v in timings.items() if k != 'total_s')})")
    first = test_images[0]
    print("open in 3D Slicer: File > Add Data, choose the CT and its mask, tick 'LabelMap' (or Segmentation) for the "
          "mask; or in Slicer's Python console:")
    print(f"  slicer.util.loadVolume(r'{first}'); "
          f"slicer.util.loadSegmentation(r'{mask_path(first, masks_dir)}')")
    print(f"summary: {out / 'summary.json'}")
    return summary
