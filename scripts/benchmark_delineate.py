#!/usr/bin/env python
"""Nodule delineation from a point (``monai-pipeline delineate``) with the nodule bundle's model, three ways.

1. **LIDC-IDRI crops**: the test patients of the nodule bundle's split (never trained on, never used to choose
   anything), one point per nodule at the centroid of its reference mask; Dice per nodule against that mask,
   beside the crop benchmark's figure (``benchmarks/results/lidc_nodule_dice*.json``, the bundle's evaluate
   on the whole crop).
2. **Phantom**: each of the first ``--phantoms`` test crops pasted into a large synthetic chest (lung field
   at -850 HU inside a soft-tissue body, 0.7 x 0.7 x 1.25 mm... resampled: the crop keeps its own spacing), the
   point at the nodule's centroid in the big image's coordinates; Dice against the pasted reference mask.
3. **NSCLC-Radiomics LUNG1-001** (a whole DICOM CT): the point at GTV-1's centroid (from the RTSTRUCT, on the
   CT grid); Dice against GTV-1, volume and RECIST diameters against GTV-1's own. A model trained on LIDC
   nodules (mostly < 30 mm) meeting a 156 mL tumour is a domain shift: the figure is reported as measured.

    .venv/bin/python scripts/benchmark_delineate.py [--model-dir bundles/lung_nodule_ct_delineation/models]

Writes ``benchmarks/results/delineate_<cpu tag>.json`` (per case values, command, device, CPU, git revision).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _provenance import cpu_tag, machine_provenance  # noqa: E402
from monai_pipeline.app.delineate import delineate  # noqa: E402
from monai_pipeline.data.datasets import lidc_split  # noqa: E402
from monai_pipeline.evaluation.measure import lesion_measures  # noqa: E402
from monai_pipeline.evaluation.metrics import dice  # noqa: E402
from monai_pipeline.io.atomic import atomic_write_text  # noqa: E402
from monai_pipeline.io.images import ImageProperties, read_image, write_image  # noqa: E402



def centroid_lps(mask: np.ndarray, props: ImageProperties) -> str:
    c = np.argwhere(mask > 0).mean(axis=0)
    return ",".join(f"{v:.4f}" for v in (props.lps_affine @ np.append(c, 1.0))[:3])


def run_point(image, point: str, work: Path, name: str, model_dir, initial_mm: float) -> tuple[np.ndarray, dict, float]:
    t0 = time.perf_counter()
    res = delineate(image, [point], work, coordinate_system="LPS", model_dir=model_dir, case_id=name,
                    initial_mm=initial_mm)
    seconds = time.perf_counter() - t0
    pred, _ = read_image(res.folder / res.files["mask"])
    return pred, res.lesions[0], seconds


def embed(ct: np.ndarray, props: ImageProperties, mask: np.ndarray, size_mm: float = 300.0, at=(0.62, 0.45, 0.5)):
    """A large synthetic chest (body ellipse of soft tissue, two lung fields at -850 HU, air outside) on the crop's
    own spacing and direction, with the crop pasted in a lung at fraction ``at`` of the volume."""
    spacing = np.asarray(props.spacing[:3])
    shape = np.maximum(np.round([size_mm, size_mm * 0.8, 200.0] / spacing).astype(int), np.asarray(ct.shape) + 8)
    rng = np.random.default_rng(0)
    big = np.full(shape, -1000.0, np.float32)
    i, j = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:2]], indexing="ij")
    body = (i / 0.95) ** 2 + (j / 0.9) ** 2 <= 1.0
    lungs = (((i - 0.45) / 0.35) ** 2 + (j / 0.6) ** 2 <= 1.0) | (((i + 0.45) / 0.35) ** 2 + (j / 0.6) ** 2 <= 1.0)
    big[body] = 40.0
    big[lungs & body] = -850.0
    big += rng.normal(0, 15, big.shape).astype(np.float32)
    lo = np.clip((np.asarray(at) * shape).astype(int) - np.asarray(ct.shape) // 2, 0, shape - ct.shape)
    sl = tuple(slice(a, a + n) for a, n in zip(lo, ct.shape))
    big[sl] = ct
    ref = np.zeros(shape, np.uint8)
    ref[sl] = mask > 0
    origin = props.lps_affine @ np.append(-lo.astype(float), 1.0)
    big_props = ImageProperties(tuple(int(s) for s in shape), props.spacing[:3], tuple(origin[:3]),
                                tuple(tuple(r[:3]) for r in props.direction[:3]), "32-bit float")
    return big, big_props, ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model-dir", default=str(ROOT / "bundles" / "lung_nodule_ct_delineation" / "models"))
    ap.add_argument("--max-nodules", type=int, default=None, help="first N test nodules only (a quick check)")
    ap.add_argument("--phantoms", type=int, default=5)
    ap.add_argument("--crop-benchmark", default=None, help="the crop benchmark's result JSON to compare with")
    ap.add_argument("--split", default="test", choices=["test", "val"],
                    help="LIDC split: test (reported) or val (the selection patients, to choose settings on)")
    ap.add_argument("--initial-mm", type=float, default=24.0, help="delineate's first crop edge (mm)")
    ap.add_argument("--no-lung1", action="store_true", help="skip LUNG1-001")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    data = Path(args.data)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"delineate_{cpu_tag()}.json"
    result: dict = {"model_dir": str(Path(args.model_dir).resolve().relative_to(ROOT)) if Path(args.model_dir).resolve().is_relative_to(ROOT) else args.model_dir}

    items = lidc_split(data / "lidc_nodules", args.split, 0.1, 0.2, 0)[: args.max_nodules]
    result.update(split=args.split, initial_mm=args.initial_mm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for item in items:
            ref, props = read_image(item["label"])
            pred, lesion, seconds = run_point(item["image"], centroid_lps(ref, props), work, item["case_id"],
                                              args.model_dir, args.initial_mm)
            rows.append({"case": item["case_id"], "dice": round(dice(pred, ref), 4), "status": lesion["status"],
                         "grew": lesion["grew"], "seconds": round(seconds, 2)})
        d = [r["dice"] for r in rows]
        result["lidc"] = {"n": len(rows), "mean_dice": statistics.fmean(d), "median_dice": statistics.median(d),
                          "point": "centroid of the reference mask", "per_nodule": rows}
        if args.crop_benchmark:
            bench = json.loads(Path(args.crop_benchmark).read_text())
            by_case = {r["case"].removesuffix(".nii.gz").removesuffix("_image"): r["dice"] for r in bench["per_nodule"]}
            same = [r for r in rows if r["case"] in by_case]
            result["lidc"]["crop_benchmark"] = {"file": args.crop_benchmark, "n_matched": len(same),
                                                "mean_dice_same_nodules": statistics.fmean(by_case[r["case"]] for r in same) if same else None,
                                                "mean_dice_delineate_same_nodules": statistics.fmean(r["dice"] for r in same) if same else None}
        print(json.dumps({k: v for k, v in result["lidc"].items() if k != "per_nodule"}, indent=2))

        prow = []
        for item in items[: args.phantoms]:
            ct, props = read_image(item["image"])
            ref, _ = read_image(item["label"])
            big, big_props, big_ref = embed(ct, props, ref)
            path = write_image(big, big_props, work / f"{item['case_id']}_chest.nrrd")
            pred, lesion, seconds = run_point(path, centroid_lps(big_ref, big_props), work, item["case_id"] + "_chest",
                                              args.model_dir, args.initial_mm)
            crop_row = next(r for r in rows if r["case"] == item["case_id"])
            prow.append({"case": item["case_id"], "shape": list(big.shape), "dice": round(dice(pred, big_ref), 4),
                         "dice_on_the_crop_itself": crop_row["dice"], "status": lesion["status"], "grew": lesion["grew"],
                         "seconds": round(seconds, 2)})
        if prow:
            result["phantom"] = {"n": len(prow), "mean_dice": statistics.fmean(r["dice"] for r in prow),
                                 "what": "each LIDC test crop pasted into a synthetic 300 x 240 x 200 mm chest on the crop's "
                                         "own spacing; point at the nodule centroid", "cases": prow}
            print(json.dumps({k: v for k, v in result["phantom"].items() if k != "cases"}, indent=2))

        lung1 = data / "nsclc_radiomics" / "LUNG1-001"
        if lung1.is_dir() and not args.no_lung1:
            import pydicom

            from monai_pipeline.io.rtstruct import label_map
            ct, props = read_image(lung1)
            rs = next(p for p in sorted(lung1.glob("*.dcm"))
                      if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
            gtv, _ = label_map(rs, props, [("gtv", "GTV-1")])
            gtv = gtv == 1
            pred, lesion, seconds = run_point(lung1, centroid_lps(gtv, props), work, "LUNG1-001", args.model_dir,
                                              args.initial_mm)
            ref = lesion_measures(gtv, props.lps_affine)
            result["lung1"] = {"dice_vs_gtv1": round(dice(pred, gtv), 4), "seconds": round(seconds, 2),
                               "point": "GTV-1 centroid (RTSTRUCT rasterised on the CT grid)",
                               "delineated": {k: lesion[k] for k in ("status", "volume_ml", "long_mm", "short_mm",
                                                                      "grew", "capped", "crop_mm")},
                               "gtv1": {k: ref[k] for k in ("volume_ml", "long_mm", "short_mm")}}
            print(json.dumps(result["lung1"], indent=2))

    result.update(machine_provenance("benchmark_delineate.py", list(argv or sys.argv[1:])))
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
