#!/usr/bin/env python
"""A whole chest CT as the hospital stores it, end to end: NSCLC-Radiomics LUNG1-001 (DICOM CT + RTSTRUCT).

Stages, each timed on this machine (seconds, peak resident memory):

1. ``infer``: ``monai-pipeline infer --images LUNG1-001`` as a user runs it, in a fresh process (its start
   included): DICOM series read, the lung bundle's preprocessing, sliding-window network, resampling to the CT's
   grid, NIfTI mask and DICOM SEG written. The bundle's defaults (1.5 x 1.5 x 2.0 mm, 96 x 96 x 64 windows,
   the UNet) with **randomly initialised weights**: no tumour model for whole CTs exists here (MSD Task06 is not
   on these machines), so this measures speed only; the mask's content means nothing. Peak memory is the child
   process's own (``wait4`` ``ru_maxrss``).
2. The same chain in this process, stage by stage (read, preprocessing, network, resampling, DICOM SEG write).
3. ``lungs``: the classical lung mask (:func:`monai_pipeline.anatomy.lung_mask`), Dice against the RTSTRUCT's
   Lung L + Lung R (rasterised by the project's even-odd rule).
4. ``burden``: tumour burden from the RTSTRUCT's GTV-1 (mL, % of each lung; tumour outside both lung masks goes
   to the nearest lung), with how much of the GTV lay inside the threshold lung mask and inside the RT lungs.
5. ``slicer``: the Slicer folder of the GTV (``export-slicer``: .seg.nrrd, meshes, the CT as NRRD).

    .venv/bin/python scripts/benchmark_nsclc.py [--out benchmarks/results/nsclc_lung1_<cpu>.json]

Targets (issue 16): stage 1 under 15 s wall and 3 GB peak; the lung mask under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _provenance import command_line, cpu_isa, cpu_model, cpu_tag, git_rev  # noqa: E402

CASE = ROOT.parent / "shared" / "data" / "nsclc_radiomics" / "LUNG1-001"
BUNDLE = ROOT / "bundles" / "lung_ct_tumor_segmentation"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _random_model(folder: Path) -> Path:
    """model.pt of the bundle's network with its initial (seeded, random) weights: for timing only."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "model.pt")
    return folder


def _cli_infer(models: Path, out: Path) -> dict:
    """``monai-pipeline infer`` in a fresh process: wall seconds (start included) and its peak RSS."""
    cmd = [str(Path(sys.executable).parent / "monai-pipeline"), "infer", "--images", str(CASE), "--ckpt-dir",
           str(models), "--output-dir", str(out), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"infer failed:\n{log[-4000:]}")
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "outputs": sorted(p.name for p in out.iterdir() if not p.name.startswith("."))}


def _stages(models: Path, work: Path) -> dict:
    """The infer chain in this process, stage by stage."""
    import torch
    from monai.bundle import ConfigParser

    from monai_pipeline.io.dicom_seg import write_dicom_seg
    from monai_pipeline.io.images import read_image
    from monai_pipeline.transforms import ResampleToSourced

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "ckpt_dir": str(models)})
    pre, inferer, net = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "network"))
    net.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    times = {}
    t = time.perf_counter()
    read_image(CASE)
    times["read_dicom_s"] = time.perf_counter() - t
    t = time.perf_counter()
    d = pre({"image": str(CASE)})
    times["preprocess_s"] = time.perf_counter() - t
    network_shape = list(d["image"].shape[1:])
    t = time.perf_counter()
    with torch.no_grad():
        d["pred"] = inferer(d["image"][None], net)[0]
    times["network_s"] = time.perf_counter() - t
    t = time.perf_counter()
    mask = ResampleToSourced("pred")(d)["pred"]
    times["resample_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_dicom_seg(np.asarray(mask), CASE, work / "seg.dcm", algorithm={"name": "benchmark", "version": "0"})
    times["dicom_seg_s"] = time.perf_counter() - t
    return {**{k: round(v, 2) for k, v in times.items()}, "network_input_shape": network_shape,
            "precision": str(parser.get_parsed_content("precision"))}


def _anatomy(work: Path) -> dict:
    import pydicom

    from monai_pipeline.anatomy import lung_mask
    from monai_pipeline.evaluation.lesions import tumour_burden
    from monai_pipeline.io.images import read_image, write_image
    from monai_pipeline.io.rtstruct import label_map
    from monai_pipeline.slicer.export import export_slicer

    ct, props = read_image(CASE)
    rs = next(p for p in sorted(CASE.glob("*.dcm")) if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    t = time.perf_counter()
    rt, matched = label_map(rs, props, [("gtv", "GTV-1"), ("right lung", "Lung R"), ("left lung", "Lung L")])
    contours_s = time.perf_counter() - t
    t = time.perf_counter()
    lungs = lung_mask(ct, props.affine)
    lungs_s = time.perf_counter() - t
    t = time.perf_counter()
    gtv = rt == 1
    burden = tumour_burden(gtv, lungs, props.affine)
    burden_s = time.perf_counter() - t
    rt_lungs = np.where(rt == 2, 1, np.where(rt == 3, 2, 0))  # the GTV wins its overlap with the RT lungs
    rt_lungs_full, _ = label_map(rs, props, [("lungs", "Lung [LR]")])
    write_image(gtv.astype(np.uint8), props, work / "gtv.nii.gz")
    t = time.perf_counter()
    export_slicer(CASE, work / "gtv.nii.gz", work / "slicer", names={1: "tumor"})
    slicer_s = time.perf_counter() - t
    return {
        "rtstruct_rasterise_s": round(contours_s, 2),
        "lung_mask_s": round(lungs_s, 2), "burden_s": round(burden_s, 2), "slicer_export_s": round(slicer_s, 2),
        "lung_dice_vs_rtstruct": round(_dice(lungs, rt_lungs_full), 4),
        "lung_dice_right": round(_dice(lungs == 1, rt_lungs == 1), 4),
        "lung_dice_left": round(_dice(lungs == 2, rt_lungs == 2), 4),
        "gtv_ml": round(float(gtv.sum()) * float(np.prod(props.spacing)) / 1000, 2),
        "gtv_inside_threshold_lungs_pct": round(100 * float((gtv & (lungs > 0)).sum()) / float(gtv.sum()), 1),
        "gtv_inside_rt_lungs_pct": round(100 * float((gtv & (rt_lungs_full > 0)).sum()) / float(gtv.sum()), 1),
        "burden": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in burden.items()},
        "rois": matched,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="result JSON (default benchmarks/results/nsclc_lung1_<cpu tag>.json)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    if not CASE.is_dir():
        raise SystemExit(f"{CASE}: NSCLC-Radiomics LUNG1-001 not found (../shared/data)")
    import torch

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nsclc-"))
    models = _random_model(work / "models")
    result = {
        "case": "NSCLC-Radiomics LUNG1-001 (134 CT slices 512x512, 0.977 x 0.977 x 3 mm; RTSTRUCT)",
        "command": command_line("benchmark_nsclc.py", sys.argv[1:]),
        "git_rev": git_rev(), "device": "cpu", "cpu": cpu_model(), "cpu_isa": cpu_isa(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "weights": "random initialisation of the bundle's network (speed only; no whole-CT tumour model exists here)",
        "infer_cli": _cli_infer(models, work / "masks"),
        "infer_stages": _stages(models, work),
        "anatomy": _anatomy(work),
        "targets": {"infer_wall_s": 15, "infer_peak_gb": 3, "lung_mask_s": 5},
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"nsclc_lung1_{cpu_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
