"""``monai-pipeline``: the command line, a thin layer over the bundles and the package.

    monai-pipeline demo                         synthetic data -> train -> evaluate -> infer -> summary
    monai-pipeline synth --out DIR              write synthetic phantoms (lung CT, or --kind brain-slices|brain-volumes)
    monai-pipeline train --dataset-dir DIR      train a bundle (MONAI bundle run, same overrides)
    monai-pipeline infer --images PATH...       sliding-window inference, masks in the source geometry
    monai-pipeline evaluate --pred DIR --label DIR   Dice of written masks against labels (volumes or 2D slices)
    monai-pipeline evaluate-bundle --dataset-dir DIR  a bundle's evaluate workflow on its validation split
    monai-pipeline check DATASET                 every problem of a dataset, as a table (integrity check)
    monai-pipeline report RUN_DIR                HTML report of an evaluated run: tables, plots, overlays, 3D render
    monai-pipeline export-slicer --image IMG --mask MASK --out DIR   Slicer folder: seg.nrrd, meshes, loader script
    monai-pipeline import-dicom --input TREE --out DIR --label tumour='GTV.*'   CT + RTSTRUCT -> MSD dataset
    monai-pipeline delineate --image CT --points=x,y,z --coordinate-system LPS --out DIR   nodules from points

Images may be NIfTI, NRRD, MHA or a DICOM series (its folder, FOLDER#SERIES_UID, or one of its files); a DICOM
source also gets its mask as a DICOM SEG object. DICOM case IDs are pseudonyms (dcm-<hash of the series UID>).

Every bundle option is reachable with ``--set key=value`` (values parsed as JSON when they parse), and
extra config files (``configs/*.json`` overlays) with ``--config FILE``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="lung", help="bundle short name or folder (default: lung)")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="config overlay merged after the bundle's configs (repeatable), e.g. configs/network_segresnet.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a bundle config id, e.g. --set epochs=5 --set 'patch_size=[64,64,32]'")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: GPU when present, else CPU)")


def _overrides(args: argparse.Namespace, **known: Any) -> dict[str, Any]:
    """``--set`` values, then ``--device``, then the named options given on the command line (these win)."""
    from monai_pipeline.app.bundles import device_override, parse_overrides

    try:
        out = parse_overrides(args.set)
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from None
    out.update(device_override(getattr(args, "device", None)))
    out.update({k: v for k, v in known.items() if v is not None})
    return out


# ------------------------------------------------------------------------------------------ commands
def cmd_synth(args: argparse.Namespace) -> int:
    from monai_pipeline.app.synthetic import PhantomSpec, write_brain_slices, write_brain_volumes, write_msd_dataset

    if args.kind == "brain-slices":
        path = write_brain_slices(args.out, args.num_train + args.num_test, args.seed)
        print(f"dataset: {path} ({args.num_train + args.num_test} patient folders of slices)")
        return 0
    if args.kind == "brain-volumes":
        path = write_brain_volumes(args.out, args.num_train, args.num_test, args.seed)
        print(f"dataset: {path}")
        return 0
    spec = PhantomSpec(tuple(args.shape), tuple(args.spacing))
    path = write_msd_dataset(args.out, args.num_train, args.num_test, args.seed, spec, progress=True, dicom=args.dicom)
    print(f"dataset: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from monai_pipeline.app.api import train

    overrides = _overrides(args, output_dir=args.output_dir, ckpt_dir=args.ckpt_dir, epochs=args.epochs,
                           val_interval=args.val_interval, resume=args.resume or None)
    overrides.pop("dataset_dir", None)
    train(args.dataset_dir, args.bundle, tuple(args.config), args.distributed, args.tracking, **overrides)
    return 0


def cmd_evaluate_bundle(args: argparse.Namespace) -> int:
    from monai_pipeline.app.bundles import run_bundle

    overrides = _overrides(args, dataset_dir=str(Path(args.dataset_dir).resolve()), output_dir=args.output_dir,
                           ckpt_dir=args.ckpt_dir)
    run_bundle(args.bundle, "evaluate", args.config, **overrides)  # a bad input file raises DataError
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    """Segment; resume by default (complete masks are kept). Exit 1 when any input failed (the others are
    written; the failed ones are listed in ``<output-dir>/failed.json``)."""
    from monai_pipeline.app.api import segment
    from monai_pipeline.app.bundles import bundle_dir

    if args.distributed and "WORLD_SIZE" not in os.environ:
        raise SystemExit("error: infer --distributed runs under torchrun: torchrun --nproc_per_node=N -m "
                         "monai_pipeline infer --distributed ...")
    images = args.images[0] if len(args.images) == 1 else args.images
    if args.id_map and Path(args.id_map).resolve().is_relative_to(Path(args.output_dir).resolve()):
        raise SystemExit(f"error: --id-map {args.id_map} must lie outside --output-dir {args.output_dir}, whose files "
                         "carry only pseudonyms")
    overrides = {k: v for k, v in _overrides(args).items() if k not in ("ckpt_dir", "output_dir", "output_ext")}
    overrides.setdefault("failures_file", str(Path(args.output_dir) / "failed.json"))
    if args.overwrite:
        overrides["overwrite"] = True
    ckpt_dir = args.ckpt_dir or str(bundle_dir(args.bundle) / "models")  # the bundle's own ckpt_dir default
    summary = segment(images, ckpt_dir, args.output_dir, args.bundle, args.ext, args.config,
                      distributed=args.distributed, **overrides).summary
    if int(os.environ.get("RANK", "0")) == 0:
        files = summary["mask_files"]  # a stack of slices (context_slices) is one case with a mask per slice
        print(f"{files['written']} mask(s) written to {args.output_dir}, {files['done']} skipped as already "
              f"done, {files['failed']} failed")
        for f in summary["failures"]:
            print(f"failed: {f['error']}", file=sys.stderr)
        if args.id_map:
            from monai_pipeline.io.dicom import write_identity_map

            done = [c["image"] for c in summary["cases"] if c.get("mask")]
            if write_identity_map([c if isinstance(c, str) else c[0] for c in done], args.id_map, args.output_dir):
                print(f"identity map: {args.id_map}")
    return 1 if summary["failed"] else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import math

    from monai_pipeline.app.api import evaluate
    from monai_pipeline.data.validate import check_folder

    for folder in (args.pred, args.label):
        check_folder(folder)
    if any(Path(args.pred).rglob("*.png")):
        return _evaluate_slices(args)
    threshold, source = _presence_threshold(args)
    res = evaluate(args.pred, args.label, args.out, args.postfix or "seg", args.images, args.prob,
                           tolerance_mm=args.tolerance_mm, resample=args.resample, presence_threshold=threshold,
                           presence_threshold_source=source)
    fmt = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"  # noqa: E731
    for r in res["cases"]:
        print(f"{r['case_id']:32s} dice {r['dice']:.4f}  iou {r['iou']:.4f}  hd95 {fmt(r['hd95_mm'])} mm  "
              f"asd {fmt(r['asd_mm'])} mm  nsd@{args.tolerance_mm:g}mm {r['surface_dice']:.3f}")
    dice = res["summary"]["dice"]
    print(f"mean dice {dice['mean']:.4f} (95% CI {dice['ci95'][0]:.4f}-{dice['ci95'][1]:.4f}) "
          f"over {len(res['cases'])} cases")
    det, pres = res["detection"], res["presence"]
    rate = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"lesions: {det['n_label_lesions']} in labels, {det['n_pred_lesions']} predicted; sensitivity "
          f"{rate(det['sensitivity'])}, precision {rate(det['precision'])}, FROC mean {rate(det['froc_mean'])}, "
          f"mAP@0.5 {rate(det['map_50'])}")
    c = pres["confusion"]
    print(f"tumour present/absent ({pres['score']} > {pres['threshold']:g}; {pres['threshold_source']}): "
          f"TP {c['tp']} FP {c['fp']} TN {c['tn']} FN {c['fn']}, F1 {rate(pres['f1'])}, ROC-AUC {rate(pres['roc_auc'])}")
    for b in res["burden"]:
        print(f"{b['case_id']:32s} tumour {b['pred_tumour_ml']:.2f} mL in {b['pred_n_lesions']} lesion(s); right lung "
              f"{rate(b['pred_involved_right_pct'])} %, left lung {rate(b['pred_involved_left_pct'])} % involved")
    if args.out:
        print(f"results: {args.out} (metrics.csv, metrics.json, lesions.csv, detection.json, presence.json"
              f"{', burden.csv, lungs/' if res['burden'] else ''})")
    return 0


def _presence_threshold(args: argparse.Namespace) -> tuple[float | None, str | None]:
    """The tumour present/absent threshold: given, or taken from a validation run's presence.json."""
    from monai_pipeline.data.validate import read_presence_threshold

    if args.presence_threshold is not None:
        return args.presence_threshold, "given on the command line (--presence-threshold)"
    if args.presence_threshold_from:
        path = Path(args.presence_threshold_from)
        return read_presence_threshold(path), f"tuned on the cases of {path} (maximum F1) and applied here unchanged"
    return None, None


def _evaluate_slices(args: argparse.Namespace) -> int:
    """2D slice masks (PNG) against a slice dataset: per-slice Dice/IoU and per-patient volumetric Dice."""
    import statistics

    from monai_pipeline.evaluation import csv_text, presence_summary, score_slice_folders
    from monai_pipeline.io.atomic import atomic_write_text

    slices, patients = score_slice_folders(args.pred, args.label, args.postfix or "mask")
    for r in patients:
        print(f"{r['patient']:32s} patient dice {r['dice']:.4f}  ({r['n_slices']} slices, "
              f"{r['n_tumour_slices']} with tumour)")
    tumour = [r["dice"] for r in slices if r["label_pixels"] > 0]
    summary = {
        "mean_patient_dice": statistics.fmean(r["dice"] for r in patients),
        "median_patient_dice": statistics.median(r["dice"] for r in patients),
        "mean_slice_dice_all": statistics.fmean(r["dice"] for r in slices),
        "mean_slice_dice_tumour_slices": statistics.fmean(tumour) if tumour else None,
        "mean_slice_iou_all": statistics.fmean(r["iou"] for r in slices),
        "n_patients": len(patients), "n_slices": len(slices),
        "rules": "slice with empty prediction and empty label: Dice = IoU = 1 (counted in *_all, not in "
                 "*_tumour_slices); patient Dice is volumetric over all its slices",
    }
    print(f"mean patient dice {summary['mean_patient_dice']:.4f} (median {summary['median_patient_dice']:.4f}) "
          f"over {len(patients)} patients, {len(slices)} slices")
    threshold, source = _presence_threshold(args)
    presence = presence_summary([r["pred_pixels"] for r in slices], [r["label_pixels"] > 0 for r in slices],
                                threshold or 0.0, source or "default: tumour present on a slice when any tumour "
                                "pixel is predicted")
    presence["score"] = "predicted tumour pixels per slice"
    c = presence["confusion"]
    print(f"tumour present/absent per slice (predicted pixels > {presence['threshold']:g}): TP {c['tp']} FP {c['fp']} "
          f"TN {c['tn']} FN {c['fn']}, F1 {presence['f1'] if presence['f1'] is None else round(presence['f1'], 3)}, "
          f"ROC-AUC {presence['roc_auc'] if presence['roc_auc'] is None else round(presence['roc_auc'], 3)}")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "presence.json", json.dumps(presence, indent=2))
        atomic_write_text(out / "metrics.json", json.dumps({**summary, "patients": patients, "slices": slices},
                                                           indent=2))
        cols = ["patient", "slice_id", "dice", "iou", "pred_pixels", "label_pixels", "both_empty"]
        atomic_write_text(out / "slice_metrics.csv", csv_text(slices, cols))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from monai_pipeline.data.check import check_dataset, findings_json, format_table
    from monai_pipeline.io.atomic import atomic_write_text

    findings = check_dataset(args.dataset)
    print(format_table(findings, args.dataset if Path(args.dataset).is_dir() else ""))
    errors = sum(f.severity == "error" for f in findings)
    print(f"{errors} error(s), {len(findings) - errors} warning(s) in {args.dataset}")
    if args.json:
        atomic_write_text(args.json, json.dumps(findings_json(findings), indent=2) + "\n")
    return 1 if errors else 0


def cmd_export_slicer(args: argparse.Namespace) -> int:
    from monai_pipeline.data.validate import check_export_inputs, segment_names
    from monai_pipeline.slicer.export import export_slicer, export_slicer_folders

    names = segment_names(args.names)
    if check_export_inputs(args.image, args.mask, args.case_id):
        folders = export_slicer_folders(args.image, args.mask, args.out, names, postfix=args.postfix)
    else:
        folders = [export_slicer(args.image, args.mask, args.out, names, case_id=args.case_id)]
    for folder in folders:
        print(f"slicer folder: {folder}  (in Slicer's Python console: exec(open({str(folder / 'load_in_slicer.py')!r}).read()))")
    return 0


def cmd_delineate(args: argparse.Namespace) -> int:
    from monai_pipeline.app.delineate import delineate

    overrides = _overrides(args)
    result = delineate(args.image, args.points, args.out, coordinate_system=args.coordinate_system,
                       model_dir=args.model_dir, bundle=args.bundle, case_id=args.case_id, cap_mm=args.cap_mm,
                       **overrides)
    for line in result.summary_lines():
        print(line)
    print(f"delineation: {result.folder}  (table: {result.files['table']}; Slicer: {result.files['segmentation']} and "
          "the .mrk.json lines)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from monai_pipeline.report import build_report

    index = build_report(args.run_dir, args.out, args.train_dir)
    print(f"report: {index}  (open it in a browser; the folder {index.parent} is self-contained)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from monai_pipeline.app.demo import run_demo

    run_demo(args.out, epochs=args.epochs, num_train=args.num_train, num_test=args.num_test, seed=args.seed,
             device=args.device)
    return 0


# ------------------------------------------------------------------------------------------- parser
def cmd_import_dicom(args: argparse.Namespace) -> int:
    from monai_pipeline.app.api import import_dicom

    path = import_dicom(args.input, args.out, args.label, name=args.name, id_map=args.id_map)
    meta = json.loads(Path(path).read_text())
    print(f"dataset: {path} ({meta['numTraining']} case(s); labels {meta['labels']})")
    if args.id_map:
        print(f"identity map: {args.id_map}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic lung CT -> train -> evaluate -> infer -> summary (minutes on a CPU)")
    p.add_argument("--out", default="demo_output", help="working folder (default: ./demo_output)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--num-train", type=int, default=12)
    p.add_argument("--num-test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: GPU when present)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write synthetic phantoms: lung CT (MSD Task06_Lung layout) or brain MRI")
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument("--kind", choices=["lung", "brain-slices", "brain-volumes"], default="lung",
                   help="lung: chest CT volumes; brain-slices: LGG-layout patient folders of TIFF slices + masks "
                        "(num-train + num-test patients); brain-volumes: FLAIR + T1c volumes with dataset.json")
    p.add_argument("--num-train", type=int, default=12)
    p.add_argument("--num-test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[160, 160, 64], metavar=("I", "J", "K"))
    p.add_argument("--spacing", type=float, nargs=3, default=[2.0, 2.0, 2.5], metavar=("SI", "SJ", "SK"),
                   help="voxel size in mm (jittered +-10%% per case)")
    p.add_argument("--dicom", action="store_true", help="lung: also write each test phantom as a DICOM CT series "
                                                        "(imagesTs_dicom/<case>/)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a bundle on an MSD-layout dataset")
    _common(p)
    p.add_argument("--dataset-dir", required=True, help="folder with dataset.json")
    p.add_argument("--output-dir", help="logs and metrics (bundle default: <bundle>/eval)")
    p.add_argument("--ckpt-dir", help="checkpoints; model.pt is the best validation model")
    p.add_argument("--epochs", type=int)
    p.add_argument("--val-interval", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --ckpt-dir")
    p.add_argument("--distributed", action="store_true", help="use multi_gpu_train.json (launch with torchrun)")
    p.add_argument("--tracking", choices=["mlflow"], help="MONAI experiment tracking (local store under output dir)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate-bundle", help="run a bundle's evaluate config on the validation split")
    _common(p)
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--output-dir")
    p.add_argument("--ckpt-dir")
    p.set_defaults(func=cmd_evaluate_bundle)

    p = sub.add_parser("infer", help="segment images; masks keep each source image's geometry")
    _common(p)
    p.add_argument("--images", nargs="+", required=True, help="image files, a folder, or a .txt list of paths")
    p.add_argument("--ckpt-dir", help="folder holding model.pt (default: the bundle's models/, the weights it ships); "
                                      "the settings its model.contract.json records are used (a contradicting --set is "
                                      "refused unless --set contract_override=true)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--ext", default=".nii.gz", choices=[".nii.gz", ".nii", ".nrrd", ".mha"],
                   help="format of volume masks (2D slices always give PNG)")
    p.add_argument("--overwrite", action="store_true",
                   help="segment every image again (default: resume, keeping masks that exist and are complete)")
    p.add_argument("--distributed", action="store_true",
                   help="use multi_gpu_inference.json, each process its share (launch with torchrun -m monai_pipeline)")
    p.add_argument("--id-map", metavar="CSV", help="for DICOM inputs, also write pseudonym (dcm-...) -> PatientID, "
                                                   "PatientName, StudyDate, UIDs to this file (outside --output-dir); "
                                                   "not written unless asked")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("check", help="check a dataset and list every problem found (exit 1 when any is an error)")
    p.add_argument("dataset", help="dataset folder (dataset.json, LGG slice folders, LIDC index.csv, or any folder of "
                                   "volumes) or one image file")
    p.add_argument("--json", metavar="FILE", help="also write the findings as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("evaluate", help="Dice of masks in --pred against labels in --label, paired by case ID")
    p.add_argument("--pred", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--out", help="folder for metrics.csv (per case) and metrics.json (summary with bootstrap 95%% CI)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="tolerance of surface Dice and boundary F1 (mm)")
    p.add_argument("--postfix", help="postfix of prediction names: default seg for volumes (lung_001_seg.nii.gz), "
                                     "mask for PNG slices (TCGA_CS_4942_19970222_12_mask.png)")
    p.add_argument("--images", help="folder of the source images (<case>.nii.gz): for CT, lungs and tumour burden "
                                    "(burden.csv, lungs/); the report's overlays use them")
    p.add_argument("--prob", help="folder of tumour probability maps (<case>_prob.nii.gz, values in [0, 1]): lesion "
                                  "confidence and the tumour present/absent score")
    p.add_argument("--resample", action="store_true",
                   help="resample predictions (nearest) and probabilities/images (linear) onto each label's grid "
                        "instead of refusing a geometry mismatch")
    p.add_argument("--presence-threshold", type=float,
                   help="tumour present when the case score exceeds this (default 0.5 with --prob, else any voxel)")
    p.add_argument("--presence-threshold-from", metavar="PRESENCE_JSON",
                   help="use the tuned_threshold of a validation run's presence.json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export-slicer", help="3D Slicer folder per case: mask NIfTI, .seg.nrrd, colour table, "
                                             "STL/VTK meshes (LPS), load_in_slicer.py")
    p.add_argument("--image", required=True, help="source image, or a folder of images (<case>.nii.gz ...)")
    p.add_argument("--mask", required=True, help="label map on the image's grid, or a folder of masks "
                                                 "(<case>_seg.nii.gz, as infer writes them)")
    p.add_argument("--out", required=True, help="parent folder: each case goes to OUT/<case>/")
    p.add_argument("--names", nargs="+", metavar="LABEL=NAME",
                   help="segment names by label value, e.g. --names 1=tumor 2=lung (default: 1=tumor)")
    p.add_argument("--case-id", help="case folder and file name stem (default: the image file name without extension)")
    p.add_argument("--postfix", default="seg", help="postfix of mask names in a mask folder (default: seg)")
    p.set_defaults(func=cmd_export_slicer)

    p = sub.add_parser("delineate", help="nodules of a whole CT from one point each: masks on the CT's grid, RECIST "
                                         "diameters, Slicer segmentation and line markups")
    p.add_argument("--image", required=True, help="CT: NIfTI, NRRD, MHA or a DICOM series (folder, FOLDER#UID, a file)")
    p.add_argument("--points", action="append", required=True, metavar="X,Y,Z|FILE",
                   help="a point (mm) as --points=x,y,z (the '=' lets negative numbers through; give "
                        "--coordinate-system) or a 3D Slicer point list .mrk.json (its own coordinate system); "
                        "repeatable, one point per nodule")
    p.add_argument("--coordinate-system", type=str.upper, choices=["LPS", "RAS"],
                   help="system of numeric --points: LPS (DICOM, ITK) or RAS (3D Slicer's display, NIfTI)")
    p.add_argument("--out", required=True, help="parent folder; the case folder <out>/<case>/ is written whole")
    p.add_argument("--model-dir", help="folder with model.pt and model.contract.json (default: the bundle's models/)")
    p.add_argument("--bundle", default="nodule", help="bundle short name or folder (default: nodule)")
    p.add_argument("--case-id", help="file stem (default: the image's name; a DICOM series' pseudonym)")
    p.add_argument("--cap-mm", type=float, default=150.0, help="largest crop edge in mm while a lesion grows (150)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a bundle config id")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: GPU when present, else CPU)")
    p.set_defaults(func=cmd_delineate)

    p = sub.add_parser("import-dicom", help="DICOM tree (CT series + RTSTRUCT per patient) -> MSD dataset "
                                            "(imagesTr/labelsTr NIfTI, dataset.json)")
    p.add_argument("--input", required=True, help="folder holding the CT series and their RTSTRUCTs (any depth)")
    p.add_argument("--out", required=True, help="dataset folder to write (replaced whole when complete)")
    p.add_argument("--label", action="append", default=[], metavar="NAME=REGEX", required=True,
                   help="label NAME takes every ROI whose name REGEX matches in full, case-insensitive (repeatable, "
                        "numbered 1.. in order; an earlier label wins where they overlap: list the tumour first), e.g. --label tumour='GTV.*' "
                        "--label lung='Lung [LR]'")
    p.add_argument("--name", default="imported", help="dataset name in dataset.json")
    p.add_argument("--id-map", metavar="CSV", help="also write pseudonym -> PatientID/PatientName/StudyDate/UIDs to "
                                                   "this file (outside --out); not written unless asked")
    p.set_defaults(func=cmd_import_dicom)

    p = sub.add_parser("report", help="HTML report of an evaluated run (metrics, lesions, plots, overlays, 3D render)")
    p.add_argument("run_dir", help="folder written by evaluate --out (TensorBoard logs under it are read too)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/report); an older report there is replaced")
    p.add_argument("--train-dir", help="another folder searched for TensorBoard training logs (events.out.tfevents.*)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from monai_pipeline.errors import DataError
    from monai_pipeline.io.atomic import FolderLockedError

    try:
        return int(args.func(args) or 0)
    except (DataError, FileNotFoundError, FolderLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # errors that carry their own exit code (training.NonFiniteTrainingError: 4), caught without importing
        # the training stage for every command
        if not isinstance(getattr(err, "exit_code", None), int):
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{os.strerror(err.errno)}; nothing partial was left behind (files are written "
              "to a temporary name and renamed only when complete)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
