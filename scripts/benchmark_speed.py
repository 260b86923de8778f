#!/usr/bin/env python
"""Speed benchmark: the MONAI Model Zoo recipe and our lung bundle, side by side, in one run.

Both run in this one process on the same synthetic chest CT phantoms (a 512 x 512 x 300 CT at
0.7 x 0.7 x 1.0 mm among them), on the same device and threads:

* **reference** — the Model Zoo recipe (spleen_ct_segmentation's configs): MONAI ``UNet(16, 32, 64, 128, 256;
  strides 2, 2, 2, 2; 2 residual units; batch norm)``, ``Orientationd(RAS)``, ``Spacingd(1.5, 1.5, 2.0)``,
  ``ScaleIntensityRanged`` (with our CT window, -1000..500 HU, so the only differences are speed choices),
  ``RandCropByPosNegLabeld`` 96^3 x 4 samples, plain ``Dataset`` + ``DataLoader``, Adam 1e-4 + DiceCE;
  inference: ``sliding_window_inference`` roi 96^3, ``sw_batch_size=4``, ``overlap=0.5``, float32, softmax
  probabilities inverted to the source grid (``Invertd``), argmax, ``SaveImaged``.
* **ours** — the lung bundle's own configs and defaults (``bundles/lung_ct_tumor_segmentation``), built
  by MONAI's ``ConfigParser`` exactly as ``python -m monai.bundle run`` builds them.

Training: each recipe trains ``--epochs`` epochs on the same phantoms (timed: samples and patch voxels per
second, peak memory), then each segments the unseen test phantoms with its own weights through its own
inference, so "equal Dice after the same number of epochs" is checked. Inference: both recipes segment
every test phantom and the big CT with the *same* weights (our bundle trained ``--infer-epochs`` epochs,
untimed, so the Dice means something; the network class is the same), so a speed option that costs
accuracy shows as a Dice difference. Printed and written as JSON: per-stage seconds (load, preprocess,
network, post-process/invert, save) per volume, total seconds per volume, peak resident memory (sampled
every 20 ms), Dice on the phantoms' tumour labels, and the ratios ours / reference. Ablation: our bundle on
the big CT with one speed switch off at a time. Demo: the README's main command, timed.

    .venv/bin/python scripts/benchmark_speed.py                    # everything (about 35 min on 2 cores)
    .venv/bin/python scripts/benchmark_speed.py --part infer       # or train, ablation, demo: one part, the
                                                                   # others carried over from the last result

Results go to ``benchmarks/results/speed_lung_cpu.json`` with the command, device, CPU model, torch threads
and git revision. Resumable: phantoms and trained weights in ``--work`` are reused when present.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

logger = logging.getLogger("benchmark_speed")


# --------------------------------------------------------------------------------------------- tools
class PeakRSS:
    """Peak resident memory of this process between :meth:`reset` and :meth:`peak`, sampled every 20 ms."""

    def __init__(self, interval: float = 0.02) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._peak = max(self._peak, self._rss())

    def reset(self) -> None:
        self._peak = self._rss()

    def peak_gb(self) -> float:
        return round(max(self._peak, self._rss()) / 2**30, 3)


class StageTimer:
    """Seconds per named stage, accumulated: ``with timer("network"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t


def dice(pred_path: Path, label_path: Path) -> float:
    from monai_pipeline.evaluation.metrics import dice as _dice
    from monai_pipeline.io.images import read_mask

    return round(_dice(read_mask(pred_path)[0], read_mask(label_path)[0]), 4)


# ------------------------------------------------------------------------------------------ phantoms
def make_phantoms(work: Path, num_train: int, num_test: int, big_shape: list[int], big_spacing: list[float]) -> dict:
    """MSD-layout phantoms (train + test) and one big CT of ``big_shape`` at exactly ``big_spacing``."""
    from monai_pipeline.io.images import write_nifti
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom, write_msd_dataset

    data = work / "data"
    if not (data / "dataset.json").is_file():
        write_msd_dataset(data, num_train=num_train, num_test=num_test, seed=0, progress=True)
    big = work / "big"
    img_path, lab_path = big / "images" / "chest_512.nii.gz", big / "labels" / "chest_512.nii.gz"
    if not lab_path.is_file():
        logger.info("writing the %s phantom at %s mm", "x".join(map(str, big_shape)), big_spacing)
        img, label, aff = make_phantom(900, PhantomSpec(tuple(big_shape), tuple(big_spacing), jitter=0.0), n_tumours=3,
                                       direction="identity")
        write_nifti(img, aff, img_path)
        write_nifti(label, aff, lab_path)
    tests = sorted((data / "imagesTs").glob("*.nii.gz"))
    return {"dataset_dir": data, "test": [(p, data / "labelsTs" / p.name) for p in tests] + [(img_path, lab_path)]}


# --------------------------------------------------------------------------------- reference recipe
def zoo_network(weights: Path | None = None, device="cpu"):
    """The Zoo recipe's UNet on ``device``; with ``weights``, loaded and in eval mode."""
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units=2, norm="batch").to(device)
    if weights is not None:
        net.load_state_dict(_model_state(weights))
        net.eval()
    return net


def zoo_transforms(train: bool):
    from monai import transforms as T

    keys = ["image", "label"] if train else ["image"]
    chain = [
        T.LoadImaged(keys=keys, image_only=True),
        T.EnsureChannelFirstd(keys=keys),
        T.Orientationd(keys=keys, axcodes="RAS"),
        T.Spacingd(keys=keys, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest") if train else "bilinear"),
        T.ScaleIntensityRanged(keys="image", a_min=-1000, a_max=500, b_min=0.0, b_max=1.0, clip=True),
    ]
    if train:
        chain += [
            T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
            T.SpatialPadd(keys=keys, spatial_size=(96, 96, 96)),
            T.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(96, 96, 96), pos=1, neg=1,
                                     num_samples=4, image_key="image", image_threshold=0),
            T.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    chain.append(T.EnsureTyped(keys=keys))
    return T.Compose(chain)


def zoo_train(datalist: list[dict], epochs: int, device) -> tuple[Any, dict]:
    import torch
    from monai.data import DataLoader, Dataset, list_data_collate
    from monai.losses import DiceCELoss

    net = zoo_network(device=device)
    loader = DataLoader(Dataset(datalist, zoo_transforms(train=True)), batch_size=2, shuffle=True, num_workers=2,
                        collate_fn=list_data_collate)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    samples, t0 = 0, time.perf_counter()
    net.train()
    for epoch in range(epochs):
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            samples += x.shape[0]
        logger.info("reference epoch %d/%d: %.0f s so far, loss %.4f", epoch + 1, epochs, time.perf_counter() - t0,
                    loss.item())
    seconds = time.perf_counter() - t0
    return net, {"epochs": epochs, "samples": samples, "seconds": round(seconds, 1),
                 "samples_per_second": round(samples / seconds, 4), "patch_size": [96, 96, 96],
                 "voxels_per_second": round(samples * 96**3 / seconds)}


def run_stages(image: Path, pre, network, post_steps, save, timer: StageTimer) -> None:
    """One volume through load, preprocess, network, post-process and save, each stage timed."""
    import torch

    with timer("load"):
        d = pre.transforms[0]({"image": str(image)})
    with timer("preprocess"):
        for t in pre.transforms[1:]:
            d = t(d)
    with timer("network"), torch.inference_mode():
        d["pred"] = network(d["image"][None])[0].cpu()
    with timer("postprocess"):
        for t in post_steps:
            d = t(d)
    with timer("save"):
        save(d)


def zoo_infer(net, image: Path, out_dir: Path, device, timer: StageTimer) -> Path:
    from monai import transforms as T
    from monai.inferers import sliding_window_inference

    pre = zoo_transforms(train=False)
    post = T.Compose([
        T.Activationsd(keys="pred", softmax=True),
        T.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        T.AsDiscreted(keys="pred", argmax=True),
    ])
    save = T.SaveImaged(keys="pred", output_dir=str(out_dir), output_postfix="seg", separate_folder=False,
                        resample=False, print_log=False)
    run_stages(image, pre, lambda x: sliding_window_inference(x.to(device), (96, 96, 96), 4, net, overlap=0.5),
               post.transforms, save, timer)
    return out_dir / image.name.replace(".nii.gz", "_seg.nii.gz")


# --------------------------------------------------------------------------------------- our bundle
def bundle_parser(workflow: str, **overrides):
    from monai.bundle import ConfigParser

    from monai_pipeline.app.bundles import bundle_configs, bundle_dir

    parser = ConfigParser()
    parser.read_config(bundle_configs("lung", workflow))
    parser.update({"bundle_root": str(bundle_dir("lung")), **overrides})
    return parser


def ours_train(dataset_dir: Path, ckpt_dir: Path, epochs: int, **overrides) -> dict:
    """The bundle's own trainer (its CacheDataset, patches, optimiser), no validation during the timed epochs."""
    parser = bundle_parser("train", dataset_dir=str(dataset_dir), ckpt_dir=str(ckpt_dir), output_dir=str(ckpt_dir / "eval"),
                           epochs=epochs, val_interval=epochs + 1, val_fraction=0.0, **overrides)
    from monai_pipeline.engine.checkpoints import attach_handlers

    t0 = time.perf_counter()
    parser.get_parsed_content("initialize")  # the bundle's own start-up steps (seed, folder lock)
    trainer = parser.get_parsed_content("train#trainer")  # builds (and fills) the CacheDataset
    parser.get_parsed_content("validate#early_stop").set_trainer(trainer)  # the rest of the bundle's "run"
    attach_handlers(trainer, parser.get_parsed_content("train#state_handlers"))
    cache_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    n = len(parser.get_parsed_content("train#dataset")) * parser.get_parsed_content("num_samples") * epochs
    patch = [int(v) for v in parser.get_parsed_content("patch_size")]
    return {"epochs": epochs, "samples": n, "seconds": round(seconds, 1), "cache_seconds": round(cache_seconds, 1),
            "samples_per_second": round(n / seconds, 4), "patch_size": patch,
            "voxels_per_second": round(n * int(np.prod(patch)) / seconds),
            "precision": parser.get_parsed_content("train#inferer").precision}


def ours_pipeline(weights: Path, out_dir: Path, **overrides):
    """The bundle's inference objects: network (weights loaded), preprocessing, inferer, postprocessing, device."""
    parser = bundle_parser("inference", output_dir=str(out_dir), ckpt_dir=str(weights.parent), **overrides)
    net = parser.get_parsed_content("network")
    net.load_state_dict(_model_state(weights))
    net.eval()
    return (net, parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
            parser.get_parsed_content("postprocessing"), parser.get_parsed_content("device"))


def ours_infer(pipe, image: Path, out_dir: Path, timer: StageTimer) -> Path:
    from monai_pipeline.io.naming import mask_path

    net, pre, inferer, post, device = pipe
    *post_steps, save = post.transforms
    run_stages(image, pre, lambda x: inferer(x.to(device), net), post_steps, save, timer)
    return mask_path(image, out_dir, "seg", ".nii.gz")


def trained_dice(data: dict, work: Path, ref_weights: Path, our_weights: Path, device) -> dict:
    """Each recipe's own weights (same epochs) through its own inference, scored on the unseen phantoms."""
    ref_net = zoo_network(ref_weights, device)
    pipe = ours_pipeline(our_weights, work / "masks_ours_trained")
    out: dict[str, Any] = {"cases": [], "reference": {}, "ours": {}}
    for image, label in data["test"][:-1]:
        out["cases"].append(image.name)
        out["reference"][image.name] = dice(zoo_infer(ref_net, image, work / "masks_reference_trained", device,
                                                      StageTimer()), label)
        out["ours"][image.name] = dice(ours_infer(pipe, image, work / "masks_ours_trained", StageTimer()), label)
    out["reference_mean_dice"] = round(float(np.mean(list(out["reference"].values()))), 4)
    out["ours_mean_dice"] = round(float(np.mean(list(out["ours"].values()))), 4)
    out["note"] = "each recipe trained for the same epochs on the same phantoms, scored on the unseen test phantoms"
    return out


def train_longer(dataset_dir: Path, ckpt_dir: Path, epochs: int) -> Path:
    """Our bundle trained for ``epochs`` (not timed; resumes an interrupted run): the weights both recipes
    segment with in the inference part."""
    from monai_pipeline.engine.checkpoints import latest_checkpoint

    found = latest_checkpoint(ckpt_dir)
    if found is None or int(found.stem.split("=")[-1]) < epochs:
        logger.info("training the inference model for %d epochs in %s (not timed)", epochs, ckpt_dir)
        ours_train(dataset_dir, ckpt_dir, epochs, resume=found is not None)
        found = latest_checkpoint(ckpt_dir)
    return found


def _model_state(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if "model" in state else state


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    import torch

    from monai_pipeline.io.atomic import atomic_write_text
    from monai_pipeline.engine.runtime import default_device
    from monai_pipeline.engine.checkpoints import latest_checkpoint
    from _provenance import machine_provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "speed"), help="phantoms, weights, masks (reused)")
    ap.add_argument("--part", choices=["all", "train", "infer", "ablation", "demo"], default="all")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of each recipe")
    ap.add_argument("--infer-epochs", type=int, default=150,
                    help="epochs of the (untimed) model both recipes segment with, so their Dice means something")
    ap.add_argument("--num-train", type=int, default=8)
    ap.add_argument("--num-test", type=int, default=3)
    ap.add_argument("--big-shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--big-spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of our inference config")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_lung_cpu.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from monai.utils import set_determinism

    set_determinism(0)
    work = Path(args.work)
    device = default_device()
    rss = PeakRSS()
    record: dict[str, Any] = {**machine_provenance("benchmark_speed.py", argv if argv is not None else sys.argv[1:]),
                              "torch": torch.__version__}
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    data = make_phantoms(work, args.num_train, args.num_test, args.big_shape, args.big_spacing)

    # ------------------------------------------------------------------------------ training
    ours_ckpt = work / "ours_models"
    ref_weights = work / "reference_model.pt"
    if args.part in ("all", "train"):
        from monai_pipeline.data.datasets import msd_datalist

        datalist = msd_datalist(data["dataset_dir"], split="train", val_fraction=0.0)
        rss.reset()
        ref_net, ref_train = zoo_train(datalist, args.epochs, device)
        ref_train["peak_rss_gb"] = rss.peak_gb()
        torch.save(ref_net.state_dict(), ref_weights)
        rss.reset()
        our_train = ours_train(data["dataset_dir"], ours_ckpt, args.epochs)
        our_train["peak_rss_gb"] = rss.peak_gb()
        record["training"] = {"reference": ref_train, "ours": our_train,
                              "ratio_samples_per_second": round(our_train["samples_per_second"]
                                                                / ref_train["samples_per_second"], 3),
                              "ratio_voxels_per_second": round(our_train["voxels_per_second"]
                                                               / ref_train["voxels_per_second"], 3),
                              "note": "samples = patches through the network (reference 96^3, ours its patch_size); "
                                      "voxels/s counts patch voxels, for patches of different sizes"}
        logger.info("training: %s", json.dumps(record["training"]))
        record["trained_dice"] = trained_dice(data, work, ref_weights, latest_checkpoint(ours_ckpt), device)
        logger.info("Dice after %d epochs: %s", args.epochs, json.dumps(record["trained_dice"]))
    elif "training" in previous:
        record["training"] = previous["training"]
        record["training"].setdefault("from_run", previous.get("git_rev"))
        if "trained_dice" in previous:
            record["trained_dice"] = previous["trained_dice"]

    # ----------------------------------------------------------------------------- inference
    if args.part in ("all", "infer"):
        from monai_pipeline.app.bundles import parse_overrides

        weights = train_longer(data["dataset_dir"], work / "ours_models_long", args.infer_epochs)
        ref_net = zoo_network(weights, device)
        pipe = ours_pipeline(weights, work / "masks_ours", **parse_overrides(args.set))
        results: dict[str, dict] = {"reference": {}, "ours": {}}
        # warm-up on the smallest phantom so one-time costs (thread pools, kernels) hit neither recipe
        zoo_infer(ref_net, data["test"][0][0], work / "warmup", device, StageTimer())
        ours_infer(pipe, data["test"][0][0], work / "warmup", StageTimer())
        for image, label in data["test"]:
            for name in ("reference", "ours"):
                timer = StageTimer()
                rss.reset()
                t0 = time.perf_counter()
                out_dir = work / f"masks_{name}"
                if name == "reference":
                    mask = zoo_infer(ref_net, image, out_dir, device, timer)
                else:
                    mask = ours_infer(pipe, image, out_dir, timer)
                total = time.perf_counter() - t0
                results[name][image.name] = {"total_seconds": round(total, 2),
                                             **{k: round(v, 2) for k, v in timer.seconds.items()},
                                             "peak_rss_gb": rss.peak_gb(), "dice": dice(mask, label)}
                logger.info("%s %s: %s", name, image.name, results[name][image.name])
        summary = {}
        for name, rows in results.items():
            summary[name] = {"seconds_total": round(sum(r["total_seconds"] for r in rows.values()), 2),
                             "mean_dice": round(float(np.mean([r["dice"] for r in rows.values()])), 4),
                             "peak_rss_gb": max(r["peak_rss_gb"] for r in rows.values())}
        big = Path(data["test"][-1][0]).name
        ours_big = results["ours"][big]
        io_share = (ours_big.get("load", 0) + ours_big.get("postprocess", 0) + ours_big.get("save", 0)) / ours_big["total_seconds"]
        record["inference"] = {
            "per_volume": results, "summary": summary,
            "ratio_volumes_per_second": round(summary["reference"]["seconds_total"] / summary["ours"]["seconds_total"], 3),
            "ratio_big_ct": round(results["reference"][big]["total_seconds"] / ours_big["total_seconds"], 3),
            "dice_difference_ours_minus_reference": round(summary["ours"]["mean_dice"] - summary["reference"]["mean_dice"], 4),
            "big_ct": {"file": big, "shape": args.big_shape, "spacing_mm": args.big_spacing,
                       "seconds_file_to_mask": ours_big["total_seconds"],
                       "load_postprocess_save_share": round(io_share, 3), "peak_rss_gb": ours_big["peak_rss_gb"]},
            "weights": str(weights.relative_to(work)) if weights.is_relative_to(work) else str(weights),
            "weights_epochs": args.infer_epochs,
            "our_overrides": parse_overrides(args.set),
        }
        targets = {"inference >= 3x reference volumes/s": record["inference"]["ratio_volumes_per_second"] >= 3.0,
                   "Dice within 0.01 of reference or better": record["inference"]["dice_difference_ours_minus_reference"] >= -0.01,
                   "512x512x300 file to mask < 60 s": ours_big["total_seconds"] < 60.0,
                   "load + post-processing + save < 15 %": io_share < 0.15,
                   "peak memory < 4 GB": ours_big["peak_rss_gb"] < 4.0}
        if "training" in record:
            targets["training >= 2x reference samples/s"] = record["training"]["ratio_samples_per_second"] >= 2.0
        if "trained_dice" in record:
            targets["trained Dice within 0.01 of the reference's or better (same epochs)"] = (
                record["trained_dice"]["ours_mean_dice"] >= record["trained_dice"]["reference_mean_dice"] - 0.01)
        record["targets_met"] = targets
    elif "inference" in previous:
        record["inference"] = previous["inference"]
        record["inference"].setdefault("from_run", previous.get("git_rev"))
        record["targets_met"] = previous.get("targets_met", {})
    # ------------------------------------------------- each speed switch of ours off, one at a time
    if args.part in ("all", "ablation"):
        weights = train_longer(data["dataset_dir"], work / "ours_models_long", args.infer_epochs)
        image, label = data["test"][-1]
        variants = {"defaults": {}, "precision=fp32": {"precision": "fp32"},
                    "channels_last=False": {"channels_last": False}, "crop_lungs=False": {"crop_lungs": False},
                    "fast_resample=False": {"fast_resample": False}, "sw_overlap=0.25": {"sw_overlap": 0.25},
                    "load_dtype=float32,resample_dtype=float64": {"load_dtype": "float32", "resample_dtype": "float64"},
                    "all off": {"precision": "fp32", "channels_last": False, "crop_lungs": False,
                                "fast_resample": False, "load_dtype": "float32", "resample_dtype": "float64"}}
        ablation: dict[str, dict] = {}
        for name, overrides in variants.items():
            pipe = ours_pipeline(weights, work / "masks_ablation", **overrides)
            ours_infer(pipe, data["test"][0][0], work / "warmup", StageTimer())  # warm-up
            timer = StageTimer()
            rss.reset()
            t0 = time.perf_counter()
            mask = ours_infer(pipe, image, work / "masks_ablation", timer)
            ablation[name] = {"total_seconds": round(time.perf_counter() - t0, 2),
                              **{k: round(v, 2) for k, v in timer.seconds.items()},
                              "peak_rss_gb": rss.peak_gb(), "dice": dice(mask, label), "overrides": overrides}
            logger.info("ablation %s: %s", name, ablation[name])
        record["ablation_big_ct"] = {"file": image.name, "weights": str(weights), "variants": ablation,
                                     "note": "our bundle on the big CT with one speed switch off at a time"}
    elif "ablation_big_ct" in previous:
        record["ablation_big_ct"] = previous["ablation_big_ct"]

    # ----------------------------------------------------------------------- the README's demo
    if args.part in ("all", "demo"):
        import shutil
        import subprocess

        demo_dir = work / "demo"
        shutil.rmtree(demo_dir, ignore_errors=True)
        cmd = [str(Path(sys.executable).parent / "monai-pipeline"), "demo", "--out", str(demo_dir)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        summary_file = demo_dir / "summary.json"
        record["demo"] = {"command": "monai-pipeline demo (what scripts/demo.sh runs once packages are installed)",
                          "exit_code": proc.returncode, "seconds": round(seconds, 1),
                          "summary": json.loads(summary_file.read_text()) if summary_file.is_file() else None}
        logger.info("demo: %.0f s, exit %d", seconds, proc.returncode)
        record.setdefault("targets_met", {})["demo end to end < 5 min"] = proc.returncode == 0 and seconds < 300
    elif "demo" in previous:
        record["demo"] = previous["demo"]
        record["demo"].setdefault("from_run", previous.get("git_rev"))
    print(json.dumps(record, indent=2))
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
