"""DICOM series in: a folder of one scan (or a patient/study tree) read as one volume with its geometry.

A scan as a hospital stores it is a folder of files, one per slice, beside objects that are not images
(RTSTRUCT, RTDOSE, RTPLAN, SR, ...) and sometimes other series (localizers, other reconstructions).
:func:`scan_folder` reads every file's header (pydicom, no pixels), groups the image files by
SeriesInstanceUID and sets aside, with the reason, whatever is not a volume slice. :func:`choose_series`
takes the one image series of the folder, or the one asked for (``FOLDER#SERIES_UID`` or ``series=``), or
refuses with a message that lists them.

Geometry comes from the headers, as the DICOM standard defines it: ImageOrientationPatient gives the row
and column directions (LPS), their cross product the slice normal; the slices are ordered by the
projection of ImagePositionPatient on that normal; the origin is the first slice's position; in-plane
spacing is PixelSpacing (row spacing, column spacing), the slice spacing the step between positions.
A series that is not one regular volume is refused by name (exit 2, :class:`~monai_pipeline.errors.DataError`):
mixed orientations, sizes or pixel spacings, more than one Frame of Reference, duplicate positions, a
missing slice, uneven slice spacing, gantry tilt (positions that do not lie along the normal), a single
slice, enhanced multi-frame objects, or a file of the series that cannot be read. Nothing is resampled.

The voxels are read by SimpleITK's GDCM series reader (rescale slope/intercept applied, so CT comes in
HU; JPEG, JPEG 2000, JPEG-LS and RLE compressed transfer syntaxes are decoded by GDCM), in the order found
here, and the geometry computed here is the one the volume carries.

**Identity.** Nothing here puts PatientName, PatientID or dates into a case ID, a log line or an error: a
series is named by :func:`pseudonym` (a hash of its SeriesInstanceUID). :func:`identity_rows` gives the
mapping to the patient fields for a file the user asks for.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from monai_pipeline.errors import DataError
from monai_pipeline.io.images import GEOMETRY_TOL_MM, ImageProperties
from monai_pipeline.io.naming import IMAGE_SUFFIXES

__all__ = ["DicomSlice", "DicomSeries", "DicomScan", "SERIES_SEPARATOR", "split_series_path", "is_dicom_file",
           "is_dicom_path", "scan_folder", "choose_series", "series_geometry", "read_series",
           "read_series_properties", "pseudonym", "identity_rows", "write_identity_map", "NOT_IMAGES", "dicom_source", "write_series"]

logger = logging.getLogger(__name__)

SERIES_SEPARATOR = "#"
"""``FOLDER#SERIES_UID`` names one series of a folder that holds several."""

NOT_IMAGES = {
    "RTSTRUCT": "RT structure set", "RTPLAN": "RT plan", "RTDOSE": "RT dose grid", "RTRECORD": "RT treatment record",
    "RTIMAGE": "RT portal image", "SR": "structured report", "PR": "presentation state", "KO": "key object selection",
    "SEG": "segmentation", "REG": "registration", "DOC": "encapsulated document", "PLAN": "plan",
    "FID": "fiducials", "RWV": "real world value map", "REGISTRATION": "registration",
}
"""Modalities of DICOM objects that are not volume slices: skipped and reported."""

_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT", "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
}

_HEADER_TAGS = ["Modality", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                "FrameOfReferenceUID", "SeriesDescription", "SeriesNumber", "ImageType", "ImagePositionPatient",
                "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
                "InstanceNumber"]

_ORIENTATION_TOL = 1e-4   # direction cosines of one series agree within this
_TILT_TOL_MM = 0.01       # slice positions lie on the normal through the first one within this (mm)
_SPACING_REL_TOL = 0.01   # every slice step within 1 % of the median step (and within 0.01 mm when tighter)


@dataclass(frozen=True)
class DicomSlice:
    """One image file's geometry: ``position`` (LPS mm of the first pixel's centre), ``orientation``
    (row then column direction cosines, LPS), ``pixel_spacing`` (mm between rows, between columns)."""

    path: Path
    sop_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    frame_of_reference: str


@dataclass(frozen=True)
class DicomSeries:
    """The image files of one SeriesInstanceUID (in file-name order until :func:`series_geometry` sorts them)."""

    folder: Path
    uid: str
    modality: str
    description: str
    number: str
    study_uid: str
    slices: tuple[DicomSlice, ...]

    @property
    def case_id(self) -> str:
        return pseudonym(self.uid)

    def summary(self) -> str:
        """``UID (CT, 134 files, 'description')``: what a listing shows (no patient fields)."""
        desc = f", {self.description!r}" if self.description else ""
        return f"{self.uid} ({self.modality}, {len(self.slices)} file(s){desc})"


@dataclass(frozen=True)
class DicomScan:
    """What a folder holds: image series by UID, and the files set aside with the reason."""

    folder: Path
    series: dict[str, DicomSeries]
    skipped: tuple[tuple[Path, str], ...] = field(default=())


def pseudonym(series_uid: str) -> str:
    """Case ID of a DICOM series: ``dcm-`` and 12 hex digits of the SHA-256 of its SeriesInstanceUID
    (stable, distinct per series, and free of patient identity)."""
    return "dcm-" + hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:12]


def split_series_path(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``FOLDER#SERIES_UID`` -> ``(FOLDER, UID)``; anything else -> ``(path, None)``."""
    text = str(path)
    if SERIES_SEPARATOR in text and not Path(text).exists():
        folder, uid = text.rsplit(SERIES_SEPARATOR, 1)
        if Path(folder).is_dir() and uid:
            return Path(folder), uid
    return Path(text), None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _walk(folder: Path) -> Iterator[Path]:
    """The non-hidden files under ``folder``, lazily, symbolic links to folders followed (each real folder once)."""
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / f for f in sorted(files) if not f.startswith("."))


def _files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` (:func:`_walk`), sorted."""
    return sorted(_walk(folder))


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A folder (or ``FOLDER#UID``) holding DICOM files, or a DICOM file: what the DICOM reader takes."""
    if str(path).lower().endswith(IMAGE_SUFFIXES):
        return False
    folder, _ = split_series_path(path)
    if folder.is_file():
        return is_dicom_file(folder)
    if not folder.is_dir():
        return False
    for i, p in enumerate(_walk(folder)):  # a look at the first files, not a walk of a whole archive
        if i >= 64:
            break
        if p.suffix.lower() == ".dcm" or is_dicom_file(p):
            return True
    return False


def dicom_source(path: str | os.PathLike) -> tuple[Path, str | None] | None:
    """``(folder, series UID or None)`` when ``path`` names a DICOM series, else None.

    A folder (or ``FOLDER#UID``) holding DICOM files is its series; a single DICOM file stands for the series
    it belongs to, in its folder.

    Raises:
        DataError: ``path`` is a DICOM file that is not an image (RTSTRUCT, RTDOSE, ...).
    """
    if str(path).lower().endswith(IMAGE_SUFFIXES):  # a volume file: never opened here
        return None
    folder, uid = split_series_path(path)
    if folder.is_dir():
        return (folder, uid) if is_dicom_path(folder) else None
    if not folder.is_file() or not (folder.suffix.lower() == ".dcm" or is_dicom_file(folder)):
        return None
    try:
        ds = pydicom.dcmread(folder, stop_before_pixels=True, specific_tags=["Modality", "SeriesInstanceUID"],
                             force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as err:
        raise DataError(f"{folder}: corrupt DICOM file ({type(err).__name__})") from None
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NOT_IMAGES or "SeriesInstanceUID" not in ds:
        raise DataError(f"{folder}: a DICOM {modality or 'object'} ({NOT_IMAGES.get(modality, 'no image series')}), "
                        "not an image; give the CT/MR series' folder")
    return folder.parent, str(ds.SeriesInstanceUID)


def _floats(value, n: int, what: str, path: Path) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not np.all(np.isfinite(out)):
        raise DataError(f"{path}: {what} is missing or malformed ({value!r}); the file is not a usable volume slice")
    return out


def _signature(folder: Path) -> tuple:
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in _files(folder) for st in [p.stat()])


def scan_folder(folder: str | os.PathLike) -> DicomScan:
    """Read the headers (no pixels) of every file under ``folder`` and group the image slices by series.

    Files that are not DICOM (no ``DICM`` preamble and no ``.dcm`` name), objects that are not volume slices
    (:data:`NOT_IMAGES`), localizers (ImageType LOCALIZER) and files without pixel geometry are skipped and
    listed in ``DicomScan.skipped``. The scan is cached while the folder's files stay the same.

    Raises:
        DataError: the folder is missing, a DICOM file cannot be parsed (named), or an enhanced
            multi-frame object is found (not read: convert it to single-frame, e.g. with dcm2niix).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM folder not found")
    root = root.resolve()
    return _scan_cached(root, _signature(root))


@lru_cache(maxsize=32)
def _scan_cached(root: Path, signature: tuple) -> DicomScan:
    groups: dict[str, dict] = {}
    skipped: list[tuple[Path, str]] = []
    for name, _, _ in signature:
        path = Path(name)
        dicom_like = path.suffix.lower() == ".dcm" or is_dicom_file(path)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=dicom_like)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            if dicom_like:
                raise DataError(f"{path}: corrupt DICOM file ({type(err).__name__}: "
                                f"{' '.join(str(err).split())[:200]}); remove or replace it") from None
            skipped.append((path, "not a DICOM file"))
            continue
        modality = str(ds.get("Modality", "") or "").upper()
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if dicom_like and not sop_class and not modality:  # every DICOM object names its class
            raise DataError(f"{path}: corrupt DICOM file (no SOPClassUID or Modality could be read); remove or "
                            "replace it")
        if modality in NOT_IMAGES:
            skipped.append((path, f"{modality} ({NOT_IMAGES[modality]}), not an image"))
            continue
        if sop_class in _ENHANCED_SOP_CLASSES or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            kind = _ENHANCED_SOP_CLASSES.get(sop_class, "multi-frame")
            raise DataError(f"{path}: {kind} image object (all slices in one file) is not read; convert the "
                            "series to single-frame files (e.g. dcm2niix to NIfTI) and give that")
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "SeriesInstanceUID" not in ds:
            skipped.append((path, f"{modality or 'object'} without ImagePositionPatient/ImageOrientationPatient, "
                                  "not a volume slice"))
            continue
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            skipped.append((path, "localizer (scout) image"))
            continue
        uid = str(ds.SeriesInstanceUID)
        spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", path)
        sl = DicomSlice(path=path, sop_uid=str(ds.get("SOPInstanceUID", "")),
                        position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),
                        orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
                        pixel_spacing=(spacing[0], spacing[1]), rows=int(ds.get("Rows", 0) or 0),
                        columns=int(ds.get("Columns", 0) or 0),
                        frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or ""))
        g = groups.setdefault(uid, {"modality": modality, "description": str(ds.get("SeriesDescription", "") or ""),
                                    "number": str(ds.get("SeriesNumber", "") or ""),
                                    "study": str(ds.get("StudyInstanceUID", "") or ""), "slices": []})
        g["slices"].append(sl)
    series = {uid: DicomSeries(folder=root, uid=uid, modality=g["modality"], description=g["description"],
                               number=g["number"], study_uid=g["study"], slices=tuple(g["slices"]))
              for uid, g in groups.items()}
    if skipped:
        kinds: dict[str, int] = {}
        for _, why in skipped:
            kinds[why] = kinds.get(why, 0) + 1
        logger.info("%s: %d file(s) set aside: %s", root, len(skipped),
                    "; ".join(f"{n} x {why}" for why, n in sorted(kinds.items())))
    return DicomScan(folder=root, series=series, skipped=tuple(skipped))


def choose_series(path: str | os.PathLike, series: str | None = None) -> DicomSeries:
    """The image series of a DICOM folder: the only one, or the one named by ``series`` (or ``FOLDER#UID``).

    Raises:
        DataError: no image series; several and none chosen (the message lists them with their UIDs);
            the chosen UID is not in the folder.
    """
    folder, from_path = split_series_path(path)
    if folder.is_file():
        folder = folder.parent
    wanted = series or from_path
    found = scan_folder(folder)
    if not found.series:
        why = "; ".join(sorted({w for _, w in found.skipped})) or "no files"
        raise DataError(f"{folder}: no DICOM image series in the folder ({why})")
    if wanted is not None:
        if wanted not in found.series:
            raise DataError(f"{folder}: no image series {wanted}; the folder holds "
                            + ", ".join(s.summary() for s in found.series.values()))
        return found.series[wanted]
    if len(found.series) > 1:
        listing = "; ".join(s.summary() for s in sorted(found.series.values(), key=lambda s: -len(s.slices)))
        raise DataError(f"{folder}: holds {len(found.series)} image series; choose one as FOLDER#SERIES_UID"
                        f"(or --series UID): {listing}")
    return next(iter(found.series.values()))


def series_geometry(series: DicomSeries) -> tuple[ImageProperties, list[Path]]:
    """The volume's grid and its files in slice order, checked to form one regular volume.

    Returns:
        ``(properties, files)``: shape (columns, rows, slices) in (i, j, k) order; spacing (column spacing,
        row spacing, slice step) in mm; origin the first slice's ImagePositionPatient (LPS); direction
        columns: row cosine, column cosine, slice normal (LPS).

    Raises:
        DataError: naming the series folder and the fault (see the module docstring).
    """
    where = f"{series.folder} (series {series.case_id})"
    slices = list(series.slices)
    if len(slices) < 2:
        raise DataError(f"{where}: a single slice is not a volume")
    ref = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, ref.orientation, atol=_ORIENTATION_TOL):
            raise DataError(f"{where}: mixed slice orientations ({s.path.name} differs from {ref.path.name}); "
                            "split the series")
        if (s.rows, s.columns) != (ref.rows, ref.columns):
            raise DataError(f"{where}: mixed slice sizes ({s.path.name} is {s.columns}x{s.rows}, "
                            f"{ref.path.name} {ref.columns}x{ref.rows})")
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, atol=GEOMETRY_TOL_MM):
            raise DataError(f"{where}: mixed pixel spacings ({s.path.name} {s.pixel_spacing}, "
                            f"{ref.path.name} {ref.pixel_spacing} mm)")
    frames = sorted({s.frame_of_reference for s in slices})
    if len(frames) > 1:
        raise DataError(f"{where}: {len(frames)} Frames of Reference in one series; its slices do not share one "
                        "patient coordinate system")
    row, col = np.asarray(ref.orientation[:3]), np.asarray(ref.orientation[3:])
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DataError(f"{ref.path}: ImageOrientationPatient {list(ref.orientation)} is not two orthogonal unit "
                        "vectors")
    normal = np.cross(row, col)
    positions = np.asarray([s.position for s in slices])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    slices, positions, depth = [slices[i] for i in order], positions[order], depth[order]
    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise DataError(f"{where}: two slices at one position ({slices[i].path.name}, {slices[i + 1].path.name} "
                        f"at {depth[i]:.3f} mm along the normal); several acquisitions in one series?")
    offsets = positions - positions[0] - np.outer(depth - depth[0], normal)
    tilt = float(np.abs(offsets).max())
    if tilt > _TILT_TOL_MM:
        raise DataError(f"{where}: slice positions leave the slice normal by up to {tilt:.2f} mm (gantry tilt or "
                        "a sheared series); this reader does not resample it: correct the tilt first (e.g. dcm2niix)")
    step = float(np.median(steps))
    tol = max(min(_SPACING_REL_TOL * step, 0.01), 1e-3) if step < 1 else _SPACING_REL_TOL * step
    bad = np.flatnonzero(np.abs(steps - step) > tol)
    if bad.size:
        i = int(bad[0])
        gap = steps[i]
        if gap > 1.5 * step:
            missing = int(round(gap / step)) - 1
            raise DataError(f"{where}: {missing} slice(s) missing between {slices[i].path.name} and "
                            f"{slices[i + 1].path.name} (a {gap:.2f} mm gap in {step:.2f} mm steps)")
        raise DataError(f"{where}: uneven slice spacing (steps from {steps.min():.3f} to {steps.max():.3f} mm, "
                        f"first off at {slices[i].path.name}); resample it first (this reader does not)")
    spacing = (ref.pixel_spacing[1], ref.pixel_spacing[0], (depth[-1] - depth[0]) / (len(slices) - 1))
    direction = np.stack([row, col, normal], axis=1)
    props = ImageProperties(shape=(ref.columns, ref.rows, len(slices)), spacing=tuple(float(v) for v in spacing),
                            origin=tuple(float(v) for v in positions[0]),
                            direction=tuple(tuple(float(v) for v in r) for r in direction), dtype="16-bit signed integer")
    return props, [s.path for s in slices]


def read_series_properties(path: str | os.PathLike, series: str | None = None) -> ImageProperties:
    """The grid of a DICOM folder's series from its headers (no voxels read)."""
    return series_geometry(choose_series(path, series))[0]


def _read_voxels(files: list[Path], where: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetImageIO("GDCMImageIO")
    try:
        return reader.Execute()
    except RuntimeError as err:
        for f in files:  # name the file at fault
            try:
                one = sitk.ImageFileReader()
                one.SetImageIO("GDCMImageIO")
                one.SetFileName(str(f))
                one.Execute()
            except RuntimeError as one_err:
                msg = (str(one_err).strip().splitlines() or ["unreadable"])[-1]
                raise DataError(f"{f}: pixel data of this slice cannot be read ({msg[:200]}); the series in "
                                f"{where} is incomplete") from None
        msg = (str(err).strip().splitlines() or ["unreadable"])[-1]
        raise DataError(f"{where}: the series' voxels cannot be read ({msg[:200]})") from None


def read_series(path: str | os.PathLike, series: str | None = None) -> tuple[np.ndarray, ImageProperties]:
    """Read a DICOM series as ``(array in voxel order (i, j, k), properties)``.

    Rescale slope and intercept are applied (CT in HU); integer results stay integers (int16 where they
    fit), others come as float32. The properties are the header geometry of :func:`series_geometry`.
    """
    chosen = choose_series(path, series)
    props, files = series_geometry(chosen)
    image = _read_voxels(files, str(chosen.folder))
    arr = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    if image.GetNumberOfComponentsPerPixel() != 1 or tuple(arr.shape) != props.shape:
        raise DataError(f"{chosen.folder}: series {chosen.case_id} is not a scalar volume of shape {props.shape} "
                        f"(read {tuple(arr.shape)}, {image.GetNumberOfComponentsPerPixel()} component(s))")
    itk_props = ImageProperties.of(image)
    if not itk_props.same_grid(props):
        logger.warning("%s: GDCM's geometry differs from the headers' (%s); the headers' is used", chosen.folder,
                       itk_props.difference(props, "headers"))
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize > 2 and \
            arr.min(initial=0) >= np.iinfo(np.int16).min and arr.max(initial=0) <= np.iinfo(np.int16).max:
        arr = arr.astype(np.int16)
    elif np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    else:
        arr = np.array(arr)
    dtype = sitk.GetPixelIDValueAsString(sitk.GetImageFromArray(arr[:1, :1, :1]).GetPixelID())
    return arr, ImageProperties(shape=props.shape, spacing=props.spacing, origin=props.origin,
                                direction=props.direction, dtype=dtype)


def identity_rows(paths: Iterable[str | os.PathLike]) -> list[dict[str, str]]:
    """For a mapping file the user asks for: each series' pseudonym with PatientID, PatientName, StudyDate,
    StudyInstanceUID and SeriesInstanceUID (read from one file of the series)."""
    rows = []
    for path in paths:
        chosen = choose_series(path)
        ds = pydicom.dcmread(chosen.slices[0].path, stop_before_pixels=True,
                             specific_tags=["PatientID", "PatientName", "StudyDate", "StudyInstanceUID"])
        rows.append({"case_id": chosen.case_id, "source": str(path), "PatientID": str(ds.get("PatientID", "")),
                     "PatientName": str(ds.get("PatientName", "")), "StudyDate": str(ds.get("StudyDate", "")),
                     "StudyInstanceUID": chosen.study_uid, "SeriesInstanceUID": chosen.uid})
    return rows


def write_identity_map(paths: Iterable[str | os.PathLike], dest: str | os.PathLike,
                       outside: str | os.PathLike | None = None) -> Path | None:
    """Write :func:`identity_rows` of the DICOM series among ``paths`` as CSV to ``dest`` (atomically), only when
    the user asked for it; None when no path is a DICOM series.

    Raises:
        DataError: ``dest`` lies inside ``outside`` (the folder of outputs that get shared).
    """
    from monai_pipeline.io.atomic import atomic_write_text

    dest = Path(dest)
    if outside is not None and dest.resolve().is_relative_to(Path(outside).resolve()):
        raise DataError(f"{dest}: the identity map must lie outside {outside}, whose files carry only pseudonyms")
    series = [p for p in paths if dicom_source(p) is not None]
    if not series:
        return None
    import csv
    import io

    rows = identity_rows(series)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(dest, buf.getvalue())
    logger.info("identity map (pseudonym -> patient fields) of %d series written to %s on request", len(rows), dest)
    return dest


def _ds(value: float) -> str:
    """A decimal string (DS: at most 16 characters) as precise as it allows."""
    for digits in range(14, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def write_series(array: np.ndarray, props: ImageProperties, folder: str | os.PathLike, *, modality: str = "CT",
                 patient_id: str = "anonymous", study_uid: str | None = None, series_uid: str | None = None,
                 frame_of_reference: str | None = None, description: str = "monai-pipeline") -> list[Path]:
    """Write a volume as a DICOM series, one file per slice (``slice_0000.dcm`` ...), Explicit VR Little Endian.

    Args:
        array: int16-representable values in voxel order (i, j, k) (HU for CT; stored with slope 1, intercept 0).
        props: the grid. Its third direction column must lie along the slice normal (row x column cosines); a
            left-handed grid is stored with its slices in reverse order (the same voxels in space, read back as
            a right-handed grid).
        folder: created if needed; existing ``slice_*.dcm`` files are replaced.
        patient_id: written as PatientID and PatientName (nothing else identifies a patient).
        study_uid, series_uid, frame_of_reference: new UIDs when not given.

    Returns:
        The files written, in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    arr = np.asarray(array)
    if arr.shape != tuple(props.shape[:3]) or arr.ndim != 3:
        raise ValueError(f"array shape {arr.shape} is not the grid's {props.shape}")
    direction = np.asarray(props.direction, dtype=float)[:3, :3].copy()
    normal = np.cross(direction[:, 0], direction[:, 1])
    origin = np.asarray(props.origin[:3], dtype=float)
    if np.allclose(normal, -direction[:, 2], atol=1e-6):  # a left-handed grid: slices stored in reverse order
        arr = arr[:, :, ::-1]
        origin = origin + (arr.shape[2] - 1) * props.spacing[2] * direction[:, 2]
        direction[:, 2] = normal
    elif not np.allclose(normal, direction[:, 2], atol=1e-6):
        raise ValueError("the grid's third axis is not along the slice normal (row x column): DICOM cannot store it")
    values = np.round(arr).astype(np.int32) if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.int32)
    if values.min(initial=0) < -32768 or values.max(initial=0) > 32767:
        raise ValueError("values outside int16: DICOM CT slices are written as int16")
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(arr.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"slice_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = modality, patient_id, f"{patient_id}^"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.StudyID = "", "", "", "", ""
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.Manufacturer = "", "", "monai-pipeline"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_of_reference
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = origin + k * props.spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [_ds(props.spacing[1]), _ds(props.spacing[0])]
        ds.SliceThickness = _ds(props.spacing[2])
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU" if modality == "CT" else "US"
        ds.PixelData = np.ascontiguousarray(values[:, :, k].T.astype("<i2")).tobytes()
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
