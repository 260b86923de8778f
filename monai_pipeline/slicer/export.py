"""Slicer folders: one folder per case with everything 3D Slicer needs to show a mask on its image.

A folder holds the mask as NIfTI, a ``.seg.nrrd`` segmentation (segment names, colours, label values, in LPS
like Slicer's own files), a colour table, surface meshes per segment (STL + VTK, LPS millimetres: Slicer's
default for model files) and a ``load_in_slicer.py`` script that loads the (referenced, not copied) image
with all of them. Inputs are checked by :mod:`monai_pipeline.data.validate` before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from monai_pipeline.data.validate import check_export_target, read_label_map, segment_names
from monai_pipeline.io.atomic import atomic_write_text, staged_folder
from monai_pipeline.io.dicom import is_dicom_path
from monai_pipeline.io.images import read_image, read_properties, write_image, write_mask_like
from monai_pipeline.io.naming import case_id as default_case_id
from monai_pipeline.io.naming import pair_folders
from monai_pipeline.slicer.meshes import segment_mesh, write_mesh
from monai_pipeline.slicer.segmentation import SLICER_SMOOTHING, SlicerSegment, slicer_segments, write_color_table, \
    write_seg_nrrd

__all__ = ["export_slicer", "export_slicer_folders", "MANIFEST"]

logger = logging.getLogger(__name__)

MANIFEST = "export_manifest.json"


_LOADER_TEMPLATE = '''"""Load case {case} into 3D Slicer: the image, its segmentation and the surface meshes.

Written by monai-pipeline export-slicer. Run it in Slicer's Python console (View > Python Console):

    exec(open({script!r}).read())

or start Slicer with it: Slicer --python-script {script!r}

The image is not copied: it is read from IMAGE (absolute path), or from IMAGE_RELATIVE (relative to
this folder) when the absolute path is gone. The segmentation (.seg.nrrd) is on the image's own voxel
grid. Mesh files (.vtk loaded below; .stl copies for other software) are in LPS millimetres, Slicer's
default for model files (their headers say SPACE=LPS); Slicer converts them to its internal RAS on
loading, so they lie on the image.
"""
from pathlib import Path

import slicer

FOLDER = Path({folder!r})  # where export-slicer wrote this case
IMAGE = Path({image!r})  # the source image (absolute path)
IMAGE_RELATIVE = {image_relative!r}  # the same image relative to FOLDER
SEGMENTATION = {segmentation!r}  # segments, label values and colours in the header
COLOR_TABLE = {color_table!r}  # the same names and colours as a Slicer colour table
MASK_NIFTI = {mask!r}  # the label map as NIfTI, with the image's geometry (not loaded here)
# (segment name, label value, colour RGB 0-1, VTK mesh, STL mesh); meshes are in LPS mm
MODELS = {models}
# segments without any voxel: they are in the segmentation, but no mesh was written for them
EMPTY_SEGMENTS = {empty}

if "__file__" in globals() and (Path(__file__).resolve().parent / SEGMENTATION).exists():
    FOLDER = Path(__file__).resolve().parent  # the folder was moved: use the script's own folder
image_path = IMAGE if IMAGE.exists() else (FOLDER / IMAGE_RELATIVE).resolve()
if not image_path.exists():
    raise FileNotFoundError(f"source image not found: {{IMAGE}} (nor {{FOLDER / IMAGE_RELATIVE}})")

volume = slicer.util.loadVolume(str(image_path))  # CT/MR volume, geometry from its header
segmentation = slicer.util.loadSegmentation(str(FOLDER / SEGMENTATION))
segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # edit segments on the image grid
slicer.util.loadColorTable(str(FOLDER / COLOR_TABLE))
for name, label, colour, vtk_file, stl_file in MODELS:
    model = slicer.util.loadModel(str(FOLDER / vtk_file))  # LPS file -> RAS scene
    model.SetName(f"{{name}} (label {{label}}) surface")
    model.GetDisplayNode().SetColor(*colour)
    model.GetDisplayNode().SetOpacity(0.6)
for name in EMPTY_SEGMENTS:
    print(f"segment {{name}} is empty: no mesh was written")
slicer.util.setSliceViewerLayers(background=volume, fit=True)
'''

_README_TEMPLATE = """Case {case}: 3D Slicer folder written by monai-pipeline export-slicer

source image  {image}   (not copied; referenced by load_in_slicer.py)
source mask   {mask_src}

files
  {mask}   label map, NIfTI, on the image's voxel grid (spacing, origin, direction of the image)
  {seg}   Slicer segmentation: segment names, colours, label values; same grid
  {ctbl}   Slicer colour table (label name R G B A)
{mesh_lines}
  load_in_slicer.py   in Slicer's Python console: exec(open(r"<this folder>/load_in_slicer.py").read())
  {manifest}   the same facts as JSON

segments (label, name, voxels, volume)
{segment_lines}

coordinates
  Meshes (.stl, .vtk) are in LPS millimetres (x to the patient's left, y posterior, z superior), the
  coordinate system Slicer assumes for model files (their headers also say SPACE=LPS). Other software in
  RAS must flip the signs of x and y. They are built from the mask with discrete flying edges and
  windowed-sinc smoothing (factor {smoothing:g} on Slicer's 0-1 scale), from the image's own voxel-to-LPS
  matrix (oblique directions included).
"""


def _case_files(case: str, segments: Sequence[SlicerSegment]) -> dict:
    """File names (inside the case folder) of one export."""
    return {"mask": f"{case}_seg.nii.gz", "segmentation": f"{case}.seg.nrrd", "color_table": f"{case}_colors.ctbl",
            "script": "load_in_slicer.py", "readme": "README.txt", "manifest": MANIFEST,
            "meshes": {s.label: (f"{s.file_stem(case)}.vtk", f"{s.file_stem(case)}.stl") for s in segments if s.voxels}}


def _loader_script(case: str, folder: Path, image: Path, segments: Sequence[SlicerSegment], files: dict) -> str:
    models = "[\n" + "".join(
        f"    ({s.name!r}, {s.label}, {tuple(round(c, 4) for c in s.color)!r}, {files['meshes'][s.label][0]!r}, "
        f"{files['meshes'][s.label][1]!r}),\n" for s in segments if s.voxels) + "]"
    empty = repr([f"{s.name!r} (label {s.label})" for s in segments if not s.voxels])
    return _LOADER_TEMPLATE.format(
        case=case, script=str(folder / files["script"]), folder=str(folder), image=str(image),
        image_relative=os.path.relpath(image, folder), segmentation=files["segmentation"],
        color_table=files["color_table"], mask=files["mask"], models=models, empty=empty)


def _readme(case: str, image: Path, mask: Path, segments: Sequence[SlicerSegment], files: dict,
            voxel_ml: float, smoothing: float) -> str:
    mesh_lines = "\n".join(f"  {vtk}, {stl}   surface of segment {label}, LPS mm"
                           for label, (vtk, stl) in files["meshes"].items())
    segment_lines = "\n".join(
        f"  {s.label:5d}  {s.name:24s} {s.voxels:10d} voxels  {s.voxels * voxel_ml:10.3f} ml"
        + ("" if s.voxels else "   EMPTY: no mesh") for s in segments)
    return _README_TEMPLATE.format(case=case, image=image, mask_src=mask, mask=files["mask"],
                                   seg=files["segmentation"], ctbl=files["color_table"],
                                   mesh_lines=mesh_lines or "  (no meshes: every segment is empty)",
                                   manifest=files["manifest"], segment_lines=segment_lines, smoothing=smoothing)


def _manifest(case: str, image: Path, mask: Path, segments: Sequence[SlicerSegment], files: dict,
              voxel_ml: float, smoothing: float) -> str:
    return json.dumps({
        "tool": "monai-pipeline export-slicer", "case_id": case, "image": str(image), "mask": str(mask),
        "files": {k: v for k, v in files.items() if k != "meshes"}, "mesh_coordinate_system": "LPS",
        "mesh_smoothing_factor": smoothing,
        "segments": [{"label": s.label, "name": s.name, "color": list(s.color), "voxels": s.voxels,
                      "volume_ml": round(s.voxels * voxel_ml, 6),
                      "meshes": list(files["meshes"].get(s.label, ()))} for s in segments],
    }, indent=2) + "\n"


def _write_case(tmp: Path, final: Path, case: str, image: Path, mask: Path, labels: np.ndarray,
                segments: Sequence[SlicerSegment], ijk_to_lps: np.ndarray, smoothing: float) -> None:
    """Write every file of one case into the (temporary) folder ``tmp``; paths in the script name ``final``."""
    files = _case_files(case, segments)
    voxel_ml = abs(float(np.linalg.det(ijk_to_lps[:3, :3]))) / 1000.0
    write_mask_like(labels, image, tmp / files["mask"], dtype=labels.dtype)
    volume = image
    if is_dicom_path(image):  # Slicer loads a volume file: the series is written beside the mask, same geometry
        files["image"] = f"{case}_image.nrrd"
        write_image(*read_image(image), tmp / files["image"])
        volume = final / files["image"]
    write_seg_nrrd(labels, ijk_to_lps, segments, tmp / files["segmentation"], smoothing)
    write_color_table(segments, tmp / files["color_table"])
    for s in segments:
        if not s.voxels:
            logger.warning("%s: segment %r (label %d) is empty: no mesh written", case, s.name, s.label)
            continue
        poly = segment_mesh(labels, s.label, ijk_to_lps, smoothing)
        for name in files["meshes"][s.label]:
            write_mesh(poly, tmp / name, f"monai-pipeline {case} {s.name}")
    atomic_write_text(tmp / files["script"], _loader_script(case, final, volume, segments, files))
    atomic_write_text(tmp / files["readme"], _readme(case, image, mask, segments, files, voxel_ml, smoothing))
    atomic_write_text(tmp / files["manifest"], _manifest(case, image, mask, segments, files, voxel_ml, smoothing))


def export_slicer(image: str | os.PathLike, mask: str | os.PathLike, out_dir: str | os.PathLike,
                  names: Mapping[int, str] | Sequence[str] | None = None, case_id: str | None = None,
                  smoothing: float = SLICER_SMOOTHING) -> Path:
    """Write a 3D Slicer folder ``out_dir/<case_id>/`` for a mask of an image; return its path.

    The folder holds ``<case>_seg.nii.gz`` (the label map on the image's grid, the image's header
    geometry), ``<case>.seg.nrrd`` (Slicer segmentation, one segment per label, the header fields Slicer
    writes, space left-posterior-superior), ``<case>_colors.ctbl`` (Slicer colour table), one ``.vtk`` and
    one ``.stl`` surface per non-empty segment (LPS mm, Slicer's convention for model files),
    ``load_in_slicer.py`` (loads image, segmentation and meshes in Slicer's Python console; the image is
    referenced, not copied), ``README.txt`` and ``export_manifest.json``.

    The folder is built under a hidden temporary name beside it and renamed when complete; an existing
    export of the same case is replaced only then, so a failure leaves the old folder or none.

    Args:
        image: source image (NIfTI, NRRD, MHA...): its header geometry is the reference.
        mask: label map on the image's grid (0 = background, whole numbers 1..65535).
        out_dir: parent folder of the case folders.
        names: ``{label: name}`` or ``["1=tumor", "2=lung"]``; a binary mask defaults to label 1 "tumor".
        case_id: folder and file name stem; default the image's case ID (file name without extension).
        smoothing: mesh smoothing factor on Slicer's 0-1 scale (0 = none).

    Raises:
        DataError: missing, unreadable or non-3D file; mask shape or geometry different from the image's
            (the message names both files and the difference); fractional or negative labels; unsafe
            output location. Nothing is written then.
    """
    image, mask, out = Path(image), Path(mask), Path(out_dir)
    labels_map = segment_names(names)
    labels = read_label_map(image, mask)
    case = case_id or default_case_id(image)
    final = check_export_target(case, out, [image, mask], MANIFEST)
    segments = slicer_segments(labels, labels_map)
    with staged_folder(final, lock=out, purpose="export-slicer") as tmp:
        _write_case(tmp, final, case, image.resolve(), mask.resolve(), labels, segments,
                    read_properties(image).lps_affine, smoothing)
    logger.info("%s: wrote %s (%s)", case, final, ", ".join(f"{s.name}: {s.voxels} voxels" for s in segments))
    return final


def export_slicer_folders(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, out_dir: str | os.PathLike,
                          names: Mapping[int, str] | Sequence[str] | None = None,
                          postfix: str = "seg", smoothing: float = SLICER_SMOOTHING) -> list[Path]:
    """:func:`export_slicer` for every mask of ``mask_dir`` paired with its image in ``image_dir``.

    Every pair is validated before the first case is written, so bad input writes nothing.
    """
    labels_map = segment_names(names)
    pairs = [(Path(c["image"]), Path(c["mask"])) for c in pair_folders(mask_dir, {"image": image_dir}, postfix, "skip")]
    for image, mask in pairs:
        read_label_map(image, mask)
        check_export_target(default_case_id(image), Path(out_dir), [image, mask], MANIFEST)
    return [export_slicer(image, mask, out_dir, labels_map, smoothing=smoothing) for image, mask in pairs]
