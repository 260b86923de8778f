"""DICOM SEG out: a label map on a DICOM series' grid written as a DICOM Segmentation object (highdicom).

The object is BINARY, one segment per label value, each with algorithm type AUTOMATIC and the algorithm's
name and version, coded by :func:`monai_pipeline.io.terminology.segment_codes` (SNOMED CT). It joins the
source's Study and Frame of Reference, and every frame references its source slice (per-frame
Derivation Image references). Empty frames are left out; **an empty mask** (no voxel in any segment) is
still written, with every frame present and empty, so a PACS shows that the model found nothing rather
than nothing at all. Patient fields are copied from the source, as a derived object must carry them; the
file name carries none.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from monai_pipeline.io.atomic import atomic_path
from monai_pipeline.io.dicom import choose_series, series_geometry
from monai_pipeline.io.images import ImageProperties
from monai_pipeline.io.terminology import segment_codes

__all__ = ["write_dicom_seg", "read_dicom_seg"]

logger = logging.getLogger(__name__)


def _code(code: list[str] | None):
    from highdicom.sr import CodedConcept

    return None if code is None else CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2])


_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def _with_type2(ds):
    """The source header with the Patient/Study attributes a derived object must copy present (empty when the
    source lacks them: type 2, may be empty)."""
    for name in _TYPE2:
        if name not in ds:
            setattr(ds, name, "")
    return ds


def _segmentation(hd, sources, frames, descriptions, algo, empty):
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="monai-pipeline",
        manufacturer_model_name=algo.get("name", "monai-pipeline"), software_versions=algo.get("version", "unknown"),
        device_serial_number="0", series_description=f"{algo.get('name', 'monai-pipeline')} segmentation",
        omit_empty_frames=not empty)


def write_dicom_seg(labels: np.ndarray, source: str | os.PathLike, dest: str | os.PathLike,
                    names: Mapping[int, str] | None = None, algorithm: Mapping[str, str] | None = None,
                    series: str | None = None) -> Path:
    """Write ``labels`` (voxel order (i, j, k), on the source series' grid) as a DICOM SEG file, atomically.

    Args:
        labels: integer label map (0 background) of the source's shape.
        source: the DICOM series (folder, ``FOLDER#UID`` or one of its files) the mask was made from.
        dest: the ``.dcm`` file to write.
        names: segment name per label value (default: 1 -> ``tumor``, others ``Segment_<n>``).
        algorithm: ``{"name", "version"}`` of the model (bundle name and version, with the git revision).
        series: SeriesInstanceUID when the folder holds several.

    Raises:
        ValueError: ``labels`` is not on the source's grid.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    chosen = choose_series(source, series)
    props, files = series_geometry(chosen)
    arr = np.asarray(labels)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != tuple(props.shape):
        raise ValueError(f"{dest}: mask shape {arr.shape} is not the DICOM series' {props.shape}")
    names = dict(names or {})
    values = sorted(int(v) for v in np.unique(arr) if v > 0) or sorted(names) or [1]
    algo = dict(algorithm or {})
    ident = hd.AlgorithmIdentificationSequence(name=algo.get("name", "monai-pipeline"),
                                               family=codes.cid7162.ArtificialIntelligence,
                                               version=algo.get("version", "unknown"))
    descriptions = []
    for n, value in enumerate(values, start=1):
        name = names.get(value, "tumor" if value == 1 else f"Segment_{value}")
        category, kind, modifier = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=name, segmented_property_category=_code(category),
            segmented_property_type=_code(kind), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
            anatomic_regions=None, primary_anatomic_structures=None))
        if modifier is not None:
            descriptions[-1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = \
                [_code(modifier)]
    sources = [_with_type2(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    # frames: (k, rows = j, columns = i), one per source slice in slice order; segments stacked last
    frames = np.stack([(arr == v).transpose(2, 1, 0) for v in values], axis=-1).astype(np.uint8)
    empty = not frames.any()
    with warnings.catch_warnings():
        # highdicom warns about the source's PatientName form, quoting the name: no identity in our logs
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        seg = _segmentation(hd, sources, frames, descriptions, algo, empty)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        seg.save_as(tmp)
    logger.info("%s: DICOM SEG, %d segment(s), %s", dest, len(values), "empty mask" if empty else
                f"{int(frames.any(axis=(1, 2, 3)).sum())} of {frames.shape[0]} frames")
    return dest


def read_dicom_seg(path: str | os.PathLike, props: ImageProperties, source: str | os.PathLike,
                   series: str | None = None) -> np.ndarray:
    """Read a DICOM SEG back as a label map on the source series' grid (voxel order (i, j, k)), frames placed by
    their referenced source SOP instances; segment ``n`` gets label ``n``."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    chosen = choose_series(source, series)
    _, files = series_geometry(chosen)
    uid_of = {s.path: s.sop_uid for s in chosen.slices}
    uids = [uid_of[f] for f in files]  # slice order
    out = np.zeros(props.shape[:3], dtype=np.uint8)
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                               ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    for idx, n in enumerate(numbers):
        out[pixels[..., idx].transpose(2, 1, 0) > 0] = n
    return out
