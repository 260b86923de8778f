"""3D Slicer segmentations: segments with names, colours and terminology, ``.seg.nrrd`` files, colour tables.

Coordinates: the voxel (i, j, k) -> LPS (mm) matrix comes from the source image's header
(:attr:`~monai_pipeline.io.images.ImageProperties.lps_affine`), so oblique and flipped grids are carried over
exactly; Slicer stores segmentations in LPS like its own files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import slicerio

from monai_pipeline.io.atomic import atomic_path, atomic_write_text
from monai_pipeline.io.images import lps_to_ras
from monai_pipeline.io.terminology import KNOWN_SEGMENTS as _KNOWN_SEGMENTS
from monai_pipeline.io.terminology import PALETTE as _PALETTE

__all__ = ["SLICER_SMOOTHING", "SlicerSegment", "slicer_segments", "write_seg_nrrd", "write_color_table"]

SLICER_SMOOTHING = 0.3
"""Default surface smoothing factor in Slicer's own scale (0 none .. 1 strong; Slicer's default is 0.5):
windowed-sinc pass band ``10 ** (-4 * factor)``, 20 iterations, as Slicer's closed-surface conversion."""

_SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class SlicerSegment:
    """One segment of a Slicer export: its label value, name, display colour (RGB, 0-1) and voxel count."""

    label: int
    name: str
    color: tuple[float, float, float]
    voxels: int = 0
    terminology: dict | None = None

    @property
    def segment_id(self) -> str:
        return f"Segment_{self.label}"

    def file_stem(self, case: str) -> str:
        """``<case>_<label>_<name>`` with the name reduced to letters, digits, ``-`` and ``_``."""
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", self.name).strip("_")[:60] or "segment"
        return f"{case}_{self.label}_{safe}"


def slicer_segments(labels: np.ndarray, names: Mapping[int, str] | None = None) -> list[SlicerSegment]:
    """The segments of a label map: one per label value present or named, ordered by label.

    A mask with no label other than 1 (binary, or empty) gives label 1 named ``tumor`` unless ``names``
    are given; other unnamed labels are named ``Segment_<label>`` as Slicer names them. Named labels
    absent from the mask are kept as empty segments (so every case of a batch has the same segments).
    """
    names = dict(names or {})
    counts = np.bincount(labels.ravel())
    present = [int(v) for v in np.nonzero(counts)[0] if v > 0]
    binary = set(present) <= {1}
    wanted = sorted(set(present) | set(names) | ({1} if binary and not names else set()))
    segments, spare = [], iter(_PALETTE * (1 + len(wanted) // len(_PALETTE)))
    for label in wanted:
        name = names.get(label) or ("tumor" if label == 1 and binary else f"Segment_{label}")
        known = _KNOWN_SEGMENTS.get(name.lower())
        if known:
            colour, category, kind, modifier = known
            term = {"contextName": _SLICER_CONTEXT, "category": category, "type": kind,
                    "anatomicContextName": _ANATOMIC_CONTEXT}
            if modifier:
                term["typeModifier"] = modifier
        else:
            colour, term = next(spare), None
        segments.append(SlicerSegment(label, name, colour, int(counts[label]) if label < len(counts) else 0, term))
    return segments


def _layer_extent(labels: np.ndarray) -> list[int]:
    """Inclusive IJK extent ``[i0, i1, j0, j1, k0, k1]`` of all non-zero voxels; ``[0, -1] * 3`` when empty.

    Slicer writes the extent of a layer's shared labelmap for every segment of that layer, and reads a
    layer with the extent of its FIRST segment: a tighter per-segment extent would crop the others.
    """
    extent: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(np.any(labels, axis=other))[0]
        if nz.size == 0:
            return [0, -1, 0, -1, 0, -1]
        extent += [int(nz[0]), int(nz[-1])]
    return extent


def _conversion_parameters(ijk_to_lps: np.ndarray, shape: Sequence[int], smoothing: float) -> list[dict]:
    """Slicer's ``Segmentation_ConversionParameters``: the reference geometry (IJK -> RAS, extent) and the
    closed-surface settings used for the meshes, so Slicer's own 3D view matches the exported models."""
    ijk_to_ras = lps_to_ras(ijk_to_lps)
    geometry = ";".join(f"{v:.17g}" for v in ijk_to_ras.ravel()) + ";" + ";".join(
        f"0;{int(n) - 1}" for n in shape[:3]) + ";"
    params = [("Reference image geometry", geometry, "Geometry of the labelmap: IJK to RAS matrix and extent."),
              ("Smoothing factor", f"{smoothing:g}", "Closed surface smoothing: 0 (none) to 1 (strong)."),
              ("Decimation factor", "0.0", "Closed surface decimation: 0 (none) to 1."),
              ("Compute surface normals", "1", "Closed surface normals: 1 = computed."),
              ("Conversion method", "0", "0 = vtkDiscreteFlyingEdges3D."),
              ("Joint smoothing", "0", "Smooth segments jointly: 0 = no."),
              ("Collapse labelmaps", "1", "Share labelmaps between segments where they do not overlap."),
              ("Crop to reference image geometry", "0", "Crop models to the reference geometry: 0 = no."),
              ("Oversampling factor", "1", "Oversampling of the reference geometry: 1 = none.")]
    return [{"name": n, "value": v, "description": d} for n, v, d in params]


def write_seg_nrrd(labels: np.ndarray, ijk_to_lps: np.ndarray, segments: Sequence[SlicerSegment],
                   dest: str | os.PathLike, smoothing: float = SLICER_SMOOTHING) -> Path:
    """Write a Slicer segmentation (``.seg.nrrd``, one layer) with slicerio, atomically.

    Args:
        labels: ``(I, J, K)`` uint8/uint16 label map on the source image's grid.
        ijk_to_lps: 4x4 voxel -> LPS (mm) matrix; written as ``space directions`` / ``space origin`` with
            ``space: left-posterior-superior``, as Slicer writes it.
        segments: from :func:`slicer_segments`; each becomes ``Segment<n>_ID/_Name/_Color/_LabelValue/
            _Layer/_Extent/_Tags/_NameAutoGenerated/_ColorAutoGenerated``.
        smoothing: recorded in the conversion parameters (Slicer's closed surface then matches the meshes).
    """
    extent = _layer_extent(labels)
    seg = {
        "voxels": np.ascontiguousarray(labels),
        "ijkToLPS": np.asarray(ijk_to_lps, dtype=float),
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap", "Closed surface"],
        "conversionParameters": _conversion_parameters(ijk_to_lps, labels.shape, smoothing),
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [],
    }
    for s in segments:
        entry = {"id": s.segment_id, "name": s.name, "nameAutoGenerated": False, "color": [round(c, 6) for c in s.color],
                 "colorAutoGenerated": False, "labelValue": s.label, "layer": 0, "extent": extent,
                 "status": "inprogress"}
        if s.terminology:
            entry["terminology"] = s.terminology
        seg["segments"].append(entry)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        slicerio.write_segmentation(str(tmp), seg, compression_level=6)
    return dest


def write_color_table(segments: Sequence[SlicerSegment], dest: str | os.PathLike) -> Path:
    """Write a Slicer colour table (``.ctbl``/``.txt``): ``label name R G B A`` lines (0-255), background 0.

    Slicer's colour table names hold no spaces: they are written with ``_``.
    """
    dest = Path(dest)
    lines = ["0 background 0 0 0 0"]
    for s in segments:
        r, g, b = (int(round(c * 255)) for c in s.color)
        name = re.sub(r"\s+", "_", s.name)
        lines.append(f"{s.label} {name} {r} {g} {b} 255")
    header = [f"# Color table file {dest.name} (monai-pipeline export-slicer)", f"# {len(lines)} values"]
    return atomic_write_text(dest, "\n".join(header + lines) + "\n")
