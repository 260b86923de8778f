"""Names: image suffixes, case and patient IDs, mask paths, and the pairing of files across folders by case.

A case ID is an image's file name without its image extension (``lung_001.nii.gz`` -> ``lung_001``); its
mask is ``<output_dir>/<case>_<postfix><ext>``. Every stage that names or pairs files uses these functions.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from monai_pipeline.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "SLICE_SUFFIXES", "MASK_SUFFIXES", "case_id", "patient_id", "first", "files_by_case",
           "mask_path", "pair_folders", "is_slice_file"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


def first(entry: str | os.PathLike | Sequence[str]) -> str:
    """The first file of a datalist entry: the path itself, or the first of a list of modality files."""
    return str(entry) if isinstance(entry, (str, os.PathLike)) else str(entry[0])


def case_id(path: str | os.PathLike) -> str:
    """Case identifier of an image path: the file name without its image extension; for a DICOM series (a
    folder, ``FOLDER#SERIES_UID`` or one of its files) the series' pseudonym (``dcm-`` + a hash of its
    SeriesInstanceUID: no patient name, ID or date reaches a file name)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    from monai_pipeline.io.dicom import choose_series, dicom_source  # DICOM builds on the image layer
    if (series := dicom_source(path)) is not None:
        return choose_series(*series).case_id
    return Path(name).stem


_PATIENT_PATTERNS = (
    re.compile(r"(LIDC-IDRI-\d{4})"),
    re.compile(r"(BraTS\d*_[A-Za-z0-9]+_\d+)", re.IGNORECASE),
    re.compile(r"(TCGA_[A-Z0-9]{2}_[A-Z0-9]{4})"),
)


def patient_id(path: str | os.PathLike) -> str:
    """Patient identifier used to keep all of a patient's cases on one side of a split.

    Recognises LIDC-IDRI (``LIDC-IDRI-0001``), BraTS and TCGA (LGG) identifiers anywhere in the name;
    otherwise every case is its own patient (the MSD convention: one case per patient).
    """
    name = Path(path).name
    for pattern in _PATIENT_PATTERNS:
        m = pattern.search(name)
        if m:
            return m.group(1)
    return case_id(path)


def is_slice_file(path: str | os.PathLike) -> bool:
    """True for 2D slice images (TIFF, PNG, JPEG)."""
    return str(path).lower().endswith(SLICE_SUFFIXES)


def mask_path(source: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = "seg",
              ext: str = ".nii.gz") -> Path:
    """Output path ``<output_dir>/<case_id>_<postfix><ext>`` for the mask of ``source``.

    Only the source's base name is used, so the result always lies inside ``output_dir``.
    """
    name = case_id(source) + (f"_{postfix}" if postfix else "") + ext
    return Path(output_dir) / Path(name).name


def files_by_case(folder: str | os.PathLike, postfix: str = "") -> dict[str, Path]:
    """The volumes of a folder by case ID: ``<case>[_<postfix>].<ext>`` -> ``{case: path}``.

    Hidden files, non-volumes and Slicer ``.seg.nrrd`` files are left out; the postfix is removed when
    present (``lung_001_seg.nii.gz`` -> ``lung_001`` for ``postfix="seg"``). Without a postfix (images), a
    sub-folder holding a DICOM series is a case too, under its pseudonym (``dcm-<hash>``, as ``infer`` names its
    mask).

    Raises:
        DataError: the folder does not exist, or two files give one case ID.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    from monai_pipeline.io.dicom import is_dicom_path  # DICOM builds on the image layer

    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        name = p.name.lower()
        if p.name.startswith("."):
            continue
        if p.is_dir() and not postfix and is_dicom_path(p):  # a DICOM series' folder: its pseudonym
            pass
        elif not p.is_file() or not name.endswith(IMAGE_SUFFIXES) or name.endswith(".seg.nrrd"):
            continue
        c = case_id(p)
        c = c[: -len(postfix) - 1] if postfix and c.endswith(f"_{postfix}") else c
        if c in out:
            raise DataError(f"{p}: a second file for case {c} (first: {out[c].name})")
        out[c] = p
    return out


def pair_folders(mask_dir: str | os.PathLike, partners: Mapping[str, str | os.PathLike | tuple[str | os.PathLike, str]],
                 postfix: str = "seg", unmasked: str = "error", mask_key: str = "mask") -> list[dict]:
    """Pair the ``<case>_<postfix>.<ext>`` masks of a folder with the files of the same case in other folders.

    ``infer`` writes masks under these names; ``evaluate`` pairs them with labels (and images, probability
    maps), ``export-slicer`` with their images. The one place folders are paired.

    Args:
        mask_dir: the masks (``<case>_<postfix>.<ext>``, or ``<case>.<ext>``).
        partners: ``{key: folder}`` or ``{key: (folder, postfix)}``, in order; the first is the reference
            (labels for evaluation, images for export). Every mask needs a file in every partner folder.
        postfix: the masks' postfix.
        unmasked: what a reference file without a mask means: ``"error"`` (evaluation: every label is
            scored) or ``"skip"`` (export: logged and left out).
        mask_key: the key of the mask in the returned records.

    Returns:
        ``[{"case_id", <mask_key>, <key>: path, ...}]`` sorted by case ID, paths as strings.

    Raises:
        DataError: a folder is missing, holds no masks (or no reference files), or a case lacks a partner
            (the message names the case(s) and the folders).
    """
    if unmasked not in ("error", "skip"):
        raise ValueError(f"unmasked must be 'error' or 'skip', got {unmasked!r}")
    folders = {k: (v, "") if isinstance(v, (str, os.PathLike)) else (v[0], v[1]) for k, v in partners.items()}
    ref_key, (ref_dir, ref_fix) = next(iter(folders.items()))
    masks, refs = files_by_case(mask_dir, postfix), files_by_case(ref_dir, ref_fix)
    if not refs and unmasked == "error":
        raise DataError(f"{ref_dir}: no {ref_key} files ({', '.join(IMAGE_SUFFIXES)})")
    if not masks:
        raise DataError(f"{mask_dir}: no mask volumes ({', '.join(IMAGE_SUFFIXES)}) found")
    orphans = sorted(set(masks) - set(refs))
    unpaired = sorted(set(refs) - set(masks))
    if unmasked == "error" and (orphans or unpaired):
        raise DataError(f"no partner for case(s) {', '.join(sorted(set(orphans) | set(unpaired)))} between "
                        f"{mask_dir} and {ref_dir}")
    if orphans:
        raise DataError(f"{masks[orphans[0]]}: no {ref_key} for case {orphans[0]} in {ref_dir} "
                        f"({len(orphans)} mask(s) without an {ref_key})")
    if unpaired:
        logger.info("%d %s(s) without a mask skipped: %s", len(unpaired), ref_key, ", ".join(unpaired[:10]))
    found = {ref_key: refs}
    for key, (folder, fix) in list(folders.items())[1:]:
        found[key] = files_by_case(folder, fix)
        lost = sorted(set(masks) - set(found[key]))
        if lost:
            raise DataError(f"{folder}: no {key} for case(s) {', '.join(lost)}")
    return [{"case_id": c, mask_key: str(masks[c]), **{k: str(v[c]) for k, v in found.items()}} for c in sorted(masks)]
