"""DICOM RT Structure Sets (RTSTRUCT): read the ROIs' contours and rasterise them on a CT's voxel grid.

An RTSTRUCT stores each ROI (region of interest: "GTV-1", "Lung L", ...) as planar polygons in patient
coordinates (LPS, mm), one or more per CT slice. :func:`read_rtstruct` reads them with pydicom;
:func:`rasterise` turns one ROI's polygons into a boolean mask on the grid an :class:`ImageProperties` describes;
:func:`label_map` builds a uint8 label map from ``(label name, ROI-name regex)`` pairs, checking first that the
RTSTRUCT belongs to the image (Frame of Reference, referenced series).

Geometry comes from the polygons' own coordinates only: ``ContourImageSequence`` (the SOP Instance UID of the
slice a polygon was drawn on) is not used, so it may be absent or incomplete. Each polygon's LPS points are
mapped to continuous voxel indices (i, j, k) with the inverse of :attr:`ImageProperties.lps_affine`; a polygon
must lie in one k-plane of the grid (every point's k within 0.1 voxel of the same integer), otherwise it is
refused (oblique contours, contours between slices, an RTSTRUCT of another series).

**Fill rule (the one rule of the project).** A voxel belongs to an ROI when its centre lies inside an odd number
of the ROI's polygons on that slice (even-odd rule): a polygon inside another on the same slice is a hole, one
inside a hole is an island again, and disjoint polygons are separate islands. "Inside" is decided by
:meth:`matplotlib.path.Path.contains_points` (a crossing-number test), and every polygon of the slice is
filled and combined by XOR.

**Boundary.** matplotlib leaves a point lying exactly on an edge undecided: its answer for such a point depends
on the direction the polygon is traversed (measured with matplotlib 3.11: a counter-clockwise square keeps the
centres on three of its edges, the same square clockwise drops those on all four), and float noise from the
LPS -> IJK inversion (1e-13 voxel) decides the rest. To make the rule exact, each centre is tested at
``(i + 1e-6, j + 1e-9)`` voxels, which makes boundaries half-open whatever the orientation: **a centre lying
exactly on an edge belongs to the polygon when the polygon's interior lies towards +i of that edge, or, for an
edge running along i, towards +j.** So a square whose edges run through voxel centres at i = a..b and
j = c..d covers i = a..b-1 and j = c..d-1 ((b-a) x (d-c) voxels, its area), and two polygons sharing an edge
never both claim a centre on it (XOR would otherwise punch a line of holes along it). Edges that fall between
voxel centres are untouched by this (the nudge is a millionth of a voxel).

**Duplicates.** A polygon repeated verbatim on the same slice (same vertices to 1e-3 mm) would cancel itself
under even-odd; real files do this (LUNG1-001 of NSCLC-Radiomics stores every polygon of one ROI twice), so the
repeats are dropped with a warning: a copy is never read as a hole.

Contour types: ``CLOSED_PLANAR`` polygons are filled; ``POINT``, ``OPEN_PLANAR`` and ``OPEN_NONPLANAR``
contours (markers, isocentres, lines) are ignored with a debug log. An ROI with no closed polygon is empty.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from matplotlib.path import Path as MplPath
from pydicom.errors import InvalidDicomError

from monai_pipeline.errors import DataError
from monai_pipeline.io.images import ImageProperties

__all__ = ["Contour", "ROI", "RTStruct", "read_rtstruct", "select_rois", "rasterise", "label_map",
           "CLOSED_PLANAR", "PLANE_TOL_VOXELS"]

logger = logging.getLogger(__name__)

CLOSED_PLANAR = "CLOSED_PLANAR"
"""The one ContourGeometricType that is filled."""

PLANE_TOL_VOXELS = 0.1
"""A polygon lies on slice k when every point's continuous k index is within this of k (voxels)."""

_OUTSIDE_TOL_VOXELS = 0.5
"""Polygon points may lie this far (voxels) beyond the outermost voxel centres: up to the image's edge."""

_NUDGE = (1e-6, 1e-9)
"""Offset (voxels, i and j) at which voxel centres are tested: makes edges through centres half-open."""

_DUPLICATE_DECIMALS = 3
"""Two polygons are the same when their LPS vertices agree to this many decimals (mm)."""

_RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_CONTOUR_DATA = 0x30060050


@dataclass(frozen=True, eq=False)
class Contour:
    """One contour of an ROI.

    Attributes:
        points: ``(N, 3)`` float array, LPS mm, in the order stored (read-only).
        geometric_type: ContourGeometricType (``"CLOSED_PLANAR"``, ``"POINT"``, ``"OPEN_PLANAR"``, ...).
    """

    points: np.ndarray
    geometric_type: str = CLOSED_PLANAR


@dataclass(frozen=True, eq=False)
class ROI:
    """One ROI of a structure set.

    Attributes:
        number: ROINumber, the key that links StructureSetROISequence and ROIContourSequence.
        name: ROIName, surrounding white space removed ("" when the file has none).
        contours: every contour, in file order (empty for an ROI without ContourSequence).
        frame_of_reference_uid: the ROI's ReferencedFrameOfReferenceUID, or None when absent.
    """

    number: int
    name: str
    contours: tuple[Contour, ...] = ()
    frame_of_reference_uid: str | None = None

    @property
    def polygons(self) -> list[np.ndarray]:
        """The ``(N, 3)`` LPS (mm) point arrays of the closed planar contours: what :func:`rasterise` fills."""
        return [c.points for c in self.contours if c.geometric_type == CLOSED_PLANAR]


@dataclass(frozen=True, eq=False)
class RTStruct:
    """A structure set as :func:`read_rtstruct` reads it.

    Attributes:
        path: the file.
        frame_of_reference_uids: every Frame of Reference UID the file refers to (ReferencedFrameOfReferenceSequence
            and the ROIs' ReferencedFrameOfReferenceUID), in order of appearance, no repeats.
        series_uids: the SeriesInstanceUIDs of the image series it references (RTReferencedStudySequence ->
            RTReferencedSeriesSequence); empty when the file names none.
        rois: the ROIs, in StructureSetROISequence order.
    """

    path: Path
    frame_of_reference_uids: tuple[str, ...]
    series_uids: tuple[str, ...]
    rois: tuple[ROI, ...]

    @property
    def names(self) -> list[str]:
        """ROI names in file order (a name used twice appears twice)."""
        return [r.name for r in self.rois]

    def roi(self, name: str) -> ROI:
        """The first ROI called exactly ``name``; DataError naming the file and the ROIs when there is none."""
        for r in self.rois:
            if r.name == name:
                return r
        raise DataError(f"{self.path}: no ROI named {name!r}; the ROIs are {_names_text(self.names)}")


def _names_text(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "(none: the structure set has no ROIs)"


def _uid(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _contour_points(item: Any, path: Path, roi_name: str) -> np.ndarray:
    """``(N, 3)`` LPS points of one ContourSequence item (ContourData parsed straight from its bytes when
    pydicom has not converted it yet: ten times faster than pydicom's DS values on large structure sets)."""
    try:
        elem = item.get_item(_CONTOUR_DATA)
    except KeyError:
        elem = None
    if elem is None:
        raise DataError(f"{path}: ROI {roi_name!r} has a contour without ContourData; the file is damaged, "
                        "re-export the structure set")
    values: np.ndarray | None = None
    raw = elem.value
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).rstrip(b"\x00 ")
            values = np.array(text.split(b"\\"), dtype=float) if text else np.zeros(0)
        except ValueError:
            values = None
    if values is None:
        try:
            values = np.atleast_1d(np.asarray(item.ContourData, dtype=float)).ravel()
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: ROI {roi_name!r} has ContourData that are not numbers ({err}); the file is "
                            "damaged, re-export the structure set") from None
    if values.size % 3 or not np.all(np.isfinite(values)):
        raise DataError(f"{path}: ROI {roi_name!r} has ContourData of {values.size} values, not whole finite "
                        "(x, y, z) triplets; the file is damaged, re-export the structure set")
    points = values.reshape(-1, 3)
    points.setflags(write=False)
    return points


def _read_dataset(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file (give the RTSTRUCT file itself, not its folder)")
    try:
        try:
            return pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)  # DICOM without the 128-byte preamble (old exports)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                raise InvalidDicomError("no DICOM preamble and no DICOM attributes")
            return ds
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM preamble and no readable DICOM attributes)") from None
    except Exception as err:  # pydicom raises many types for damaged files
        raise DataError(f"{path}: not a readable DICOM file ({type(err).__name__}: "
                        f"{(str(err).strip().splitlines() or ['unknown error'])[0]})") from None


def read_rtstruct(path: str | os.PathLike) -> RTStruct:
    """Read an RT Structure Set file: its Frame(s) of Reference, the series it references, its ROIs' contours.

    Untidy files are tolerated: a ROI without ContourSequence is empty, ContourImageSequence items without
    ReferencedSOPInstanceUID (or no ContourImageSequence at all) are fine (geometry comes from the points),
    optional tags may be missing; a ContourGeometricType that is absent is taken as CLOSED_PLANAR (warning).

    Args:
        path: the RTSTRUCT file (find it among a series' files by its Modality; file names are arbitrary).

    Returns:
        :class:`RTStruct` (contour points ``(N, 3)``, LPS mm, as stored).

    Raises:
        DataError: one line naming the file: missing, not DICOM, unreadable, not an RTSTRUCT (names its
            Modality), or damaged ContourData.
    """
    path = Path(path)
    ds = _read_dataset(path)
    modality = str(ds.get("Modality", "") or "").strip()
    if modality != "RTSTRUCT":
        sop = str(ds.get("SOPClassUID", "") or "")
        what = f"a {modality}" if modality else "a DICOM file without Modality"
        if sop:
            name = getattr(ds.SOPClassUID, "name", sop)
            what += f" ({name})" if name != sop else f" (SOP class {sop})"
        if modality or sop != _RTSTRUCT_SOP_CLASS:
            raise DataError(f"{path}: is {what}, not an RTSTRUCT; give the file whose Modality is RTSTRUCT")
        logger.warning("%s: no Modality, but the SOP class is RT Structure Set Storage: read as an RTSTRUCT", path)

    for_uids: list[str] = []
    series_uids: list[str] = []
    for ref in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
        uid = _uid(ref.get("FrameOfReferenceUID"))
        if uid and uid not in for_uids:
            for_uids.append(uid)
        for study in ref.get("RTReferencedStudySequence", None) or []:
            for series in study.get("RTReferencedSeriesSequence", None) or []:
                uid = _uid(series.get("SeriesInstanceUID"))
                if uid and uid not in series_uids:
                    series_uids.append(uid)

    contours_by_number: dict[int, Any] = {}
    for item in ds.get("ROIContourSequence", None) or []:
        number = item.get("ReferencedROINumber")
        if number is None:
            logger.warning("%s: an ROIContourSequence item has no ReferencedROINumber; its contours are ignored", path)
            continue
        contours_by_number.setdefault(int(number), item)

    rois: list[ROI] = []
    used: set[int] = set()
    for item in ds.get("StructureSetROISequence", None) or []:
        if item.get("ROINumber") is None:
            logger.warning("%s: a StructureSetROISequence item has no ROINumber; ROI %r ignored", path,
                           str(item.get("ROIName", "") or ""))
            continue
        number = int(item.ROINumber)
        name = str(item.get("ROIName", "") or "").strip()
        for_uid = _uid(item.get("ReferencedFrameOfReferenceUID"))
        if for_uid and for_uid not in for_uids:
            for_uids.append(for_uid)
        contours: list[Contour] = []
        roi_contour = contours_by_number.get(number)
        used.add(number)
        sequence = roi_contour.get("ContourSequence", None) if roi_contour is not None else None
        for c in sequence or []:
            kind = str(c.get("ContourGeometricType", "") or "").strip().upper()
            if not kind:
                logger.warning("%s: ROI %r has a contour without ContourGeometricType; taken as CLOSED_PLANAR",
                               path, name)
                kind = CLOSED_PLANAR
            contours.append(Contour(_contour_points(c, path, name), kind))
        ignored = sorted({c.geometric_type for c in contours if c.geometric_type != CLOSED_PLANAR})
        if ignored:
            logger.debug("%s: ROI %r: %d contour(s) of type %s ignored (only CLOSED_PLANAR polygons are filled)",
                         path, name, sum(c.geometric_type != CLOSED_PLANAR for c in contours), "/".join(ignored))
        rois.append(ROI(number, name, tuple(contours), for_uid))
    for number in sorted(set(contours_by_number) - used):
        logger.warning("%s: ROIContourSequence refers to ROI number %d, which StructureSetROISequence does not "
                       "list; its contours are ignored", path, number)
    return RTStruct(path, tuple(for_uids), tuple(series_uids), tuple(rois))


def _matching(struct: RTStruct, pattern: str) -> list[ROI]:
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise DataError(f"{struct.path}: ROI pattern {pattern!r} is not a valid regular expression ({err})") from None
    found = [r for r in struct.rois if regex.fullmatch(r.name)]
    if not found:
        raise DataError(f"{struct.path}: no ROI name matches {pattern!r} (whole name, case-insensitive); the ROIs "
                        f"are {_names_text(struct.names)}")
    return found


def select_rois(struct: RTStruct, pattern: str) -> list[str]:
    """The names of the ROIs whose whole name ``pattern`` matches, case-insensitive
    (``re.fullmatch(pattern, name, re.I)``), in file order, each once.

    Raises:
        DataError: no ROI matches (the message names the file and the pattern and lists the ROI names), or
            ``pattern`` is not a regular expression.
    """
    return list(dict.fromkeys(r.name for r in _matching(struct, pattern)))


def _ijk(points: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``(N, 3)`` LPS mm -> ``(N, 3)`` continuous voxel indices."""
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def rasterise(polygons: Iterable[np.ndarray], props: ImageProperties, source: str | os.PathLike = "<contours>",
              roi: str = "ROI") -> np.ndarray:
    """Fill one ROI's closed polygons on a voxel grid by the even-odd rule (module docstring).

    Args:
        polygons: ``(N, 3)`` point arrays, LPS mm (:attr:`ROI.polygons`), each closed (the last point joins the
            first), each on one slice of the grid.
        props: the image grid: ``props.shape[:3]`` voxels, ``props.lps_affine`` voxel -> LPS.
        source: the file the polygons came from, named in errors.
        roi: the ROI's name, named in errors and warnings.

    Returns:
        bool array of shape ``props.shape[:3]``, voxel order (i, j, k): True where the voxel centre lies inside
        an odd number of the ROI's polygons on its slice.

    Raises:
        DataError: a polygon does not lie in one k-plane (oblique, between slices: names the distance), or lies
            more than half a voxel beyond the outermost voxel centres (names the slice and how far).
    """
    shape = tuple(int(s) for s in props.shape[:3])
    lps_affine = props.lps_affine
    inverse = np.linalg.inv(lps_affine)
    spacing = np.asarray(props.spacing[:3], dtype=float)
    mask = np.zeros(shape, dtype=bool)
    seen: set[tuple[int, bytes]] = set()
    repeats: list[int] = []
    for points in polygons:
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        if len(pts) == 0:
            continue
        ijk = _ijk(pts, inverse)
        k = int(np.round(np.median(ijk[:, 2])))
        off = float(np.max(np.abs(ijk[:, 2] - k)))
        if off > PLANE_TOL_VOXELS:
            lo, hi = float(ijk[:, 2].min()), float(ijk[:, 2].max())
            how = "tilted against the slices" if hi - lo > PLANE_TOL_VOXELS else "between two slices"
            raise DataError(f"{source}: ROI {roi!r}: a polygon is not on an image slice ({how}: its points lie up "
                            f"to {off:.2f} voxels ({off * spacing[2]:.2f} mm) from slice k={k}; k from {lo:.2f} to "
                            f"{hi:.2f}, allowed {PLANE_TOL_VOXELS} voxel); only contours drawn on this image's slices "
                            "can be rasterised: is the RTSTRUCT drawn on this series?")
        centres_hi = np.asarray(shape, dtype=float) - 1.0
        beyond = np.maximum(-ijk.min(axis=0), ijk.max(axis=0) - centres_hi)
        beyond[2] = max(-k, k - centres_hi[2])
        worst = int(np.argmax(beyond))
        if beyond[worst] > _OUTSIDE_TOL_VOXELS + 1e-6:
            z = float(pts[:, 2].mean())
            raise DataError(f"{source}: contour outside the image: ROI {roi!r}, slice k={k} (z={z:.2f} mm) of "
                            f"{shape[2]}: points lie {beyond[worst]:.2f} voxels ({beyond[worst] * spacing[worst]:.1f} "
                            f"mm) along {'ijk'[worst]} beyond the outermost voxel centres (half a voxel is allowed); "
                            "is the RTSTRUCT drawn on this image?")
        if len(pts) < 3:
            logger.debug("%s: ROI %r: a closed polygon of %d point(s) on slice k=%d has no area; skipped",
                         source, roi, len(pts), k)
            continue
        key = (k, np.round(pts, _DUPLICATE_DECIMALS).tobytes())
        if key in seen:
            repeats.append(k)
            continue
        seen.add(key)
        i0, j0 = (max(0, int(np.floor(ijk[:, a].min()))) for a in (0, 1))
        i1, j1 = (min(shape[a] - 1, int(np.ceil(ijk[:, a].max()))) for a in (0, 1))
        if i1 < i0 or j1 < j0:
            continue
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1, dtype=float), np.arange(j0, j1 + 1, dtype=float), indexing="ij")
        centres = np.column_stack([ii.ravel() + _NUDGE[0], jj.ravel() + _NUDGE[1]])
        inside = MplPath(ijk[:, :2], closed=False).contains_points(centres).reshape(ii.shape)
        mask[i0:i1 + 1, j0:j1 + 1, k] ^= inside
    if repeats:
        logger.warning("%s: ROI %r: %d polygon(s) repeat an earlier one of the same slice verbatim (slices k=%s); "
                       "the repeats are dropped (under the even-odd rule each would cancel its original)", source,
                       roi, len(repeats), ",".join(str(k) for k in sorted(set(repeats))))
    return mask


def _check_reference(path: Path, wanted: str | None, found: Sequence[str], what: str, fault: str) -> None:
    """``wanted`` (the image's UID) must be among the RTSTRUCT's ``found`` UIDs; a file naming none is accepted with
    a warning."""
    if wanted is None:
        return
    if not found:
        logger.warning("%s: names no %s; it cannot be checked against the image's %s", path, what, wanted)
    elif wanted not in found:
        raise DataError(f"{path}: {fault.format(found=', '.join(found), wanted=wanted)}; pair the RTSTRUCT with the "
                        "CT it was drawn on")


def label_map(rtstruct_path: str | os.PathLike | RTStruct, props: ImageProperties,
              labels: Sequence[tuple[str, str]], frame_of_reference: str | None = None,
              series_uid: str | None = None) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Rasterise an RTSTRUCT's ROIs into one label map on an image's grid.

    Args:
        rtstruct_path: the RTSTRUCT file (or an :class:`RTStruct` already read).
        props: the image's grid (the CT the structures were drawn on).
        labels: ``[(label name, ROI-name regex), ...]``; label values are 1..n in this order. Every ROI whose whole
            name the regex matches (case-insensitive) is merged into the label: the union of each ROI's even-odd
            fill. **Where labels overlap, the earlier label wins** (list the tumour before the organ it lies in:
            radiotherapy lung contours often overlap the GTV).
        frame_of_reference: the image's FrameOfReferenceUID; when given, the RTSTRUCT (and every ROI used) must
            refer to it.
        series_uid: the image's SeriesInstanceUID; when given and the RTSTRUCT names the series it was drawn on,
            that must be this one (an RTSTRUCT that names no series is accepted with a warning).

    Returns:
        ``(array, matched)``: uint8 array of shape ``props.shape[:3]``, voxel order (i, j, k), 0 background;
        ``matched`` maps each label name to the ROI names merged into it (file order).

    Raises:
        DataError: one line naming the file and the fault: missing, unreadable or not DICOM; not an RTSTRUCT;
            another Frame of Reference; another series; a label whose pattern matches no ROI (lists the ROIs);
            a polygon off the slices or outside the image. A matched ROI without closed polygons is not an error:
            it is logged as a warning and adds no voxels.
        ValueError: ``labels`` is empty, has more than 255 entries or repeats a label name.
    """
    names = [name for name, _ in labels]
    if not names or len(names) > 255 or len(set(names)) != len(names):
        raise ValueError(f"labels must be 1 to 255 (name, pattern) pairs with distinct names, got {names}")
    struct = rtstruct_path if isinstance(rtstruct_path, RTStruct) else read_rtstruct(rtstruct_path)
    path = struct.path
    _check_reference(path, frame_of_reference, struct.frame_of_reference_uids, "Frame of Reference",
                     "refers to Frame of Reference {found}, the image is in {wanted}")
    _check_reference(path, series_uid, struct.series_uids, "referenced image series",
                     "references another series ({found}), not the image's series {wanted}")
    selected = [(name, _matching(struct, pattern)) for name, pattern in labels]
    out = np.zeros(tuple(int(s) for s in props.shape[:3]), dtype=np.uint8)
    matched: dict[str, list[str]] = {}
    for value, (name, rois) in enumerate(selected, start=1):
        matched[name] = list(dict.fromkeys(r.name for r in rois))
        union = np.zeros(out.shape, dtype=bool)
        for roi in rois:
            if frame_of_reference is not None and roi.frame_of_reference_uid not in (None, frame_of_reference):
                raise DataError(f"{path}: ROI {roi.name!r} refers to Frame of Reference {roi.frame_of_reference_uid}, "
                                f"the image is in {frame_of_reference}; pair the RTSTRUCT with the CT it was drawn on")
            polygons = roi.polygons
            if not polygons:
                logger.warning("%s: ROI %r (label %r) has no closed polygons: it is empty and adds no voxels",
                               path, roi.name, name)
                continue
            union |= rasterise(polygons, props, source=path, roi=roi.name)
        out[union & (out == 0)] = value
        logger.debug("%s: label %d %r <- ROIs %s: %d voxels", path, value, name, matched[name], int(union.sum()))
    return out, matched
