"""DICOM tree -> MSD dataset: CT series with their RTSTRUCT contours become ``imagesTr``/``labelsTr`` NIfTI.

A TCIA-style tree (one folder per patient, each with a CT series and an RTSTRUCT, as NSCLC-Radiomics ships)
is read once: every image series and every structure set under it. Each RTSTRUCT is paired with the image
series it references (RTReferencedSeriesSequence; when it names none, the one image series in its Frame of
Reference), its ROIs are chosen by name patterns per label and rasterised on that series' grid by the
project's one fill rule (even-odd, :mod:`monai_pipeline.io.rtstruct`), and the pair is written as

    <out>/imagesTr/<case>.nii.gz    CT in HU, the series' own geometry (int16)
    <out>/labelsTr/<case>.nii.gz    label map (uint8): 0 background, 1.. the labels in the order given
    <out>/dataset.json              MSD fields (name, modality, labels, numTraining, training)
    <out>/import_report.json        per case: the ROIs each label took, voxels and mL per label

Case IDs are pseudonyms of the SeriesInstanceUID (:func:`monai_pipeline.io.dicom.pseudonym`): no patient
name, ID or date reaches a file name or JSON. A mapping to the patient fields is written only when asked
(``id_map``). Every pair is checked before anything is written, and the dataset folder is built under a
temporary name and swapped in whole: bad input leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import atomic_write_text, staged_folder
from monai_pipeline.io.dicom import DicomSeries, read_series, scan_folder, series_geometry, write_identity_map
from monai_pipeline.io.images import write_image
from monai_pipeline.io.rtstruct import RTStruct, label_map, read_rtstruct

__all__ = ["parse_label_patterns", "pair_structures", "import_dicom"]

logger = logging.getLogger(__name__)


def parse_label_patterns(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``["tumour=GTV.*", "lung=Lung [LR]"]`` -> ``[("tumour", "GTV.*"), ("lung", "Lung [LR]")]`` (order kept).

    Raises:
        DataError: a spec without ``=``, an empty name or pattern, a repeated name, an invalid regex.
    """
    import re

    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, pattern = str(spec).partition("=")
        name, pattern = name.strip(), pattern.strip()
        if not sep or not name or not pattern:
            raise DataError(f"--label {spec!r}: expected NAME=REGEX, e.g. tumour='GTV.*'")
        if name in {n for n, _ in out}:
            raise DataError(f"--label {spec!r}: label {name!r} given twice (one regex may list alternatives: A|B)")
        try:
            re.compile(pattern)
        except re.error as err:
            raise DataError(f"--label {spec!r}: not a regular expression ({err})") from None
        out.append((name, pattern))
    if not out:
        raise DataError("no --label given: name the ROIs to import, e.g. --label tumour='GTV.*'")
    return out


def pair_structures(tree: str | os.PathLike) -> list[tuple[DicomSeries, RTStruct]]:
    """Every RTSTRUCT under ``tree`` with the image series it contours.

    Raises:
        DataError: no RTSTRUCT; an RTSTRUCT whose referenced series is not in the tree (or, naming none, whose
            Frame of Reference holds no image series or several); two RTSTRUCTs of one series.
    """
    found = scan_folder(tree)
    structs = [p for p, why in found.skipped if why.startswith("RTSTRUCT")]
    if not structs:
        raise DataError(f"{tree}: no RTSTRUCT found (image series: {len(found.series)})")
    by_frame: dict[str, list[DicomSeries]] = {}
    for s in found.series.values():
        for frame in {sl.frame_of_reference for sl in s.slices}:
            by_frame.setdefault(frame, []).append(s)
    pairs, seen = [], {}
    for path in structs:
        rs = read_rtstruct(path)
        if rs.series_uids:
            matches = [found.series[u] for u in rs.series_uids if u in found.series]
            if not matches:
                raise DataError(f"{path}: references series {', '.join(rs.series_uids)}, which is not in {tree} "
                                "(an RTSTRUCT of another series; put its CT beside it)")
        else:
            matches = [s for f in rs.frame_of_reference_uids for s in by_frame.get(f, [])]
            if len(matches) != 1:
                raise DataError(f"{path}: names no series and its Frame of Reference holds {len(matches)} image "
                                "series in the tree; cannot tell which CT it contours")
        series = matches[0]
        if series.uid in seen:
            raise DataError(f"{path}: a second RTSTRUCT for series {series.case_id} (first: {seen[series.uid]})")
        seen[series.uid] = path
        pairs.append((series, rs))
    return sorted(pairs, key=lambda p: p[0].case_id)


def import_dicom(tree: str | os.PathLike, out_dir: str | os.PathLike, labels: Sequence[tuple[str, str]] | Sequence[str],
                 name: str = "imported", id_map: str | os.PathLike | None = None) -> Path:
    """Import a DICOM tree (CT series + RTSTRUCTs) as an MSD dataset; return the ``dataset.json`` path.

    Args:
        tree: folder holding the patients' series and structure sets (any depth).
        out_dir: the dataset folder to write (replaced whole when it exists).
        labels: ``[(label name, ROI-name regex), ...]`` or ``["name=regex", ...]``: label ``n`` (1-based, in
            order) takes every ROI whose name the regex matches in full, case-insensitive; several ROIs are
            merged; where labels overlap the earlier one wins (list the tumour first).
        name: the dataset's ``name`` in dataset.json.
        id_map: a CSV file to write the pseudonym -> PatientID, PatientName, StudyDate, UIDs mapping to
            (outside ``out_dir``; only when given).

    Raises:
        DataError: see :func:`pair_structures` and :func:`monai_pipeline.io.rtstruct.label_map` (a label whose
            pattern matches no ROI, a contour outside the image, a Frame of Reference mismatch, ...), and the
            series checks of :mod:`monai_pipeline.io.dicom`. Nothing is written then.
    """
    labels = parse_label_patterns(labels) if labels and isinstance(labels[0], str) else list(labels)
    out = Path(out_dir)
    if id_map is not None and Path(id_map).resolve().is_relative_to(out.resolve()):
        raise DataError(f"{id_map}: the identity map must lie outside the dataset folder {out}, whose files carry "
                        "only pseudonyms")
    pairs = pair_structures(tree)
    # check every pair first (cheap: headers and contours), so a bad case stops the import before any write
    planned = []
    for series, rs in pairs:
        props, _ = series_geometry(series)
        frames = {sl.frame_of_reference for sl in series.slices}
        label_arr, matched = label_map(rs, props, labels, frame_of_reference=next(iter(frames)),
                                       series_uid=series.uid)
        planned.append((series, props, label_arr, matched))
    report, training = {}, []
    with staged_folder(out, lock=out.parent, purpose="import-dicom") as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for series, props, label_arr, matched in planned:
            case = series.case_id
            ct, ct_props = read_series(series.folder, series.uid)
            write_image(ct, ct_props, tmp / "imagesTr" / f"{case}.nii.gz")
            write_image(label_arr, props, tmp / "labelsTr" / f"{case}.nii.gz", dtype=np.uint8)
            voxel_ml = float(np.prod(props.spacing[:3])) / 1000.0
            counts = np.bincount(label_arr.ravel(), minlength=len(labels) + 1)
            report[case] = {lab: {"rois": matched[lab], "voxels": int(counts[n]),
                                  "ml": round(float(counts[n]) * voxel_ml, 3)}
                            for n, (lab, _) in enumerate(labels, start=1)}
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
            logger.info("%s: %s", case, ", ".join(f"{lab} {r['ml']:.1f} mL from {', '.join(r['rois']) or 'no ROI'}"
                                                  for lab, r in report[case].items()))
        meta = {"name": name, "description": "imported from DICOM CT series and RTSTRUCT contours by "
                "monai-pipeline import-dicom (even-odd fill, case IDs are pseudonyms of the SeriesInstanceUID)",
                "tensorImageSize": "3D", "modality": {"0": "CT"},
                "labels": {"0": "background", **{str(n): lab for n, (lab, _) in enumerate(labels, start=1)}},
                "label_patterns": {lab: pattern for lab, pattern in labels},
                "numTraining": len(training), "numTest": 0, "training": training, "test": []}
        atomic_write_text(tmp / "dataset.json", json.dumps(meta, indent=2) + "\n")
        atomic_write_text(tmp / "import_report.json", json.dumps(report, indent=2) + "\n")
    if id_map is not None:
        write_identity_map([f"{s.folder}#{s.uid}" for s, _, _, _ in planned], id_map)
    logger.info("imported %d case(s) into %s", len(training), out)
    return out / "dataset.json"
