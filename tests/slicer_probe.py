"""Read files with 3D Slicer's own MRML code (the ``slicer-core`` wheel) and print what Slicer sees, as JSON.

Run it with the Python of ``.venv-slicer`` (``scripts/setup_slicer_env.sh`` makes it), never with the main venv:
slicer-core pins a VTK that conflicts with the main venv's. Standard library + slicer-core (and the numpy
its VTK brings) only.

Input: a JSON list of ``{"path": ..., "kind": ...}`` (volumes may add ``"threshold"``: report where the
voxels at or above it lie; segmentations ``"closed_surface": true``: also make Slicer's closed surface of
each segment, as its Segmentations module does for 3D display) from the file named by the first argument, or from
stdin when there is none (or it is ``-``). Kinds and the Slicer code that reads them (the calls Slicer's
own readers make when a file is dropped on the application):

- ``volume`` / ``labelmap``: ``vtkSlicerVolumesLogic.AddArchetypeVolume`` (volume archetype storage node:
  NRRD, NIfTI, MHA...), with the labelmap option for ``labelmap`` as ``slicer.util.loadLabelVolume`` sets it.
- ``segmentation``: ``vtkSlicerSegmentationsModuleLogic.LoadSegmentationFromFile``
  (``vtkMRMLSegmentationStorageNode``, ``.seg.nrrd``).
- ``model``: ``vtkSlicerModelsLogic.AddModel`` (``vtkMRMLModelStorageNode``; ``.stl``/``.vtk``/``.ply``),
  coordinate system LPS unless the file's header says ``SPACE=RAS``, as Slicer's model reader does.
- ``markups``: ``vtkSlicerMarkupsLogic.LoadMarkups`` (markups JSON storage node, ``.mrk.json``).
- ``colortable``: ``vtkSlicerColorLogic.LoadColorFile`` (colour table storage node, ``.ctbl``/``.txt``).

Output (stdout): ``{"slicer": {...versions and capabilities...}, "results": [...]}``, one result per input
in order, each ``{"path", "kind", "ok", "error", ...}``. A file Slicer cannot read gives ``ok: false`` and
``error`` holding Slicer's messages; the probe goes on with the next file. The files are read in a worker
process (``--worker``: JSON list on stdin, one JSON result per line): when a reader kills it, that file is
reported as a crash and a new worker reads the rest. Units: millimetres, RAS
(Slicer's world coordinates); matrices are 4x4 row-major lists; bounds are
``[xmin, xmax, ymin, ymax, zmin, zmax]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Callable, Iterator

# imported in the worker only (_import_slicer), so the supervising process stays light and cannot crash
np: Any = None  # numpy, brought by slicer-core's VTK
slicer: Any = None  # slicer-core: Slicer's MRML, logic and I/O libraries without Qt
vtk: Any = None
numpy_support: Any = None

# vtkSlicerVolumesLogic loading option bits as Slicer's volumes reader sets them from its properties; neither
# option changes the geometry (the others: 2 centre, 4 single file, 16 discard orientation, all left off)
LABELMAP_OPTION = 1
AUTO_WINDOW_LEVEL_OPTION = 8  # on in Slicer's Add Data dialog; it only sets the display window/level


def _import_slicer() -> None:
    global np, slicer, vtk, numpy_support
    import numpy as np
    import slicer
    import vtk
    from vtk.util import numpy_support


class SlicerScene:
    """An MRML scene with the module logics Slicer's file readers use, wired as the application wires them."""

    def __init__(self) -> None:
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
        self.log = vtk.vtkStringOutputWindow()  # VTK/MRML errors and warnings, attached to each result
        vtk.vtkOutputWindow.SetInstance(self.log)
        self._seen = 0  # characters of the log already reported
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.colors = self._logic(slicer.vtkSlicerColorLogic, "Colors")
        self.app.SetColorLogic(self.colors)
        self.volumes = self._logic(slicer.vtkSlicerVolumesLogic, "Volumes")
        self.segmentations = self._logic(slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations")
        self.models = self._logic(slicer.vtkSlicerModelsLogic, "Models")
        self.markups = self._logic(slicer.vtkSlicerMarkupsLogic, "Markups")
        self.messages()  # drop set-up noise (the colour logic has no Slicer home folder to read presets from)

    def _logic(self, cls: type, name: str) -> Any:
        logic = cls()
        logic.SetMRMLApplicationLogic(self.app)
        logic.SetMRMLScene(self.scene)
        self.app.SetModuleLogic(name, logic)
        return logic

    def messages(self) -> str:
        """VTK/MRML output since the last call (and forget it)."""
        text = self.log.GetOutput() or ""
        new, self._seen = text[self._seen:], len(text)
        return new.strip()


def _matrix(m: vtk.vtkMatrix4x4) -> list[list[float]]:
    return [[m.GetElement(r, c) for c in range(4)] for r in range(4)]


def _corner_bounds(ijk_to_ras: vtk.vtkMatrix4x4, lo: list[float], hi: list[float]) -> list[float]:
    """RAS bounds of the box of voxel centres ``lo..hi`` (IJK) mapped by ``ijk_to_ras``."""
    pts = []
    for i in (lo[0], hi[0]):
        for j in (lo[1], hi[1]):
            for k in (lo[2], hi[2]):
                pts.append(ijk_to_ras.MultiplyPoint((float(i), float(j), float(k), 1.0))[:3])
    return [v for axis in range(3) for v in (min(p[axis] for p in pts), max(p[axis] for p in pts))]


def _value_bounds(extent: list[int], ijk_to_ras: Any, selected: Any) -> dict:
    """Count and RAS voxel-centre bounds of the voxels where ``selected`` (a boolean (k, j, i) array over the
    image ``extent``) holds; bounds ``None`` when there is none."""
    inside = np.argwhere(selected)
    if not len(inside):
        return {"voxels": 0, "ras_bounds": None}
    lo = [int(inside[:, 2].min()) + extent[0], int(inside[:, 1].min()) + extent[2], int(inside[:, 0].min()) + extent[4]]
    hi = [int(inside[:, 2].max()) + extent[0], int(inside[:, 1].max()) + extent[2], int(inside[:, 0].max()) + extent[4]]
    return {"voxels": int(len(inside)), "ras_bounds": _corner_bounds(ijk_to_ras, lo, hi)}


def _voxels(image: Any) -> Any:
    """The scalars of a vtkImageData as a (k, j, i) array (no copy)."""
    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def read_volume(s: SlicerScene, path: str, labelmap: bool, threshold: float | None = None) -> dict:
    messages = slicer.vtkMRMLMessageCollection()
    options = AUTO_WINDOW_LEVEL_OPTION | (LABELMAP_OPTION if labelmap else 0)
    node = s.volumes.AddArchetypeVolume(path, "probe_volume", options, None, messages)
    if node is None or node.GetImageData() is None:
        raise RuntimeError(messages.GetAllMessagesAsString() or "Slicer's volumes logic returned no volume")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)  # outer faces of the voxels, RAS
    image = node.GetImageData()
    result = {"node_class": node.GetClassName(), "ijk_to_ras": _matrix(m), "dimensions": list(image.GetDimensions()),
              "scalar_range": list(image.GetScalarRange()), "scalar_type": image.GetScalarTypeAsString(),
              "ras_bounds": bounds, "storage_node_class": node.GetStorageNode().GetClassName()}
    values, extent = _voxels(image), list(image.GetExtent())
    if threshold is not None:  # where the bright voxels are, in RAS: catches data flipped against its matrix
        result["above_threshold"] = _value_bounds(extent, m, values >= threshold)
    if labelmap:
        result["labels"] = {str(int(v)): _value_bounds(extent, m, values == v)
                            for v in np.unique(values) if v != 0}
    return result


def read_segmentation(s: SlicerScene, path: str, closed_surface: bool = False) -> dict:
    messages = slicer.vtkMRMLMessageCollection()
    # autoOpacities=True: the segmentation reader's default (it only sets display opacities)
    node = s.segmentations.LoadSegmentationFromFile(path, True, "probe_segmentation", None, messages)
    if node is None:
        raise RuntimeError(messages.GetAllMessagesAsString() or "Slicer's segmentations logic returned no node")
    seg = node.GetSegmentation()
    rep = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segments, geometry = [], None
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        segment = seg.GetSegment(sid)
        labelmap = segment.GetRepresentation(rep)  # vtkOrientedImageData, shared by the segments of a layer
        terminology = vtk.reference("")
        entry = {"id": sid, "name": segment.GetName(), "color": list(segment.GetColor()),
                 "label_value": segment.GetLabelValue(), "layer": seg.GetLayerIndex(sid), "voxels": 0,
                 "ras_bounds": None,
                 "terminology": str(terminology) if segment.GetTag("TerminologyEntry", terminology) else None}
        if labelmap is not None:
            m = vtk.vtkMatrix4x4()
            labelmap.GetImageToWorldMatrix(m)
            extent = list(labelmap.GetExtent())
            if geometry is None:
                geometry = {"ijk_to_ras": _matrix(m), "extent": extent}
            if labelmap.GetPointData().GetScalars() is not None and extent[1] >= extent[0]:
                entry.update(_value_bounds(extent, m, _voxels(labelmap) == segment.GetLabelValue()))
        segments.append(entry)
    if closed_surface:  # Slicer's own labelmap -> surface conversion, with the parameters stored in the file
        if not node.CreateClosedSurfaceRepresentation():
            raise RuntimeError("Slicer could not make the closed surface representation")
        for entry in segments:
            poly = seg.GetSegment(entry["id"]).GetRepresentation(
                slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
            entry["closed_surface"] = {"points": poly.GetNumberOfPoints() if poly else 0,
                                       "ras_bounds": list(poly.GetBounds()) if poly and poly.GetNumberOfPoints() else None}
    reference = _geometry_string(seg.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()))
    return {"node_class": node.GetClassName(), "storage_node_class": node.GetStorageNode().GetClassName(),
            "source_representation": seg.GetSourceRepresentationName(), "layers": seg.GetNumberOfLayers(),
            "segments": segments, "geometry": geometry, "reference_image_geometry": reference,
            "smoothing_factor": seg.GetConversionParameter("Smoothing factor")}


def _geometry_string(text: str) -> dict | None:
    """Slicer's "reference image geometry" conversion parameter (16 IJK-to-RAS values row by row, then the
    6 extent values, ``;``-separated) as ``{"ijk_to_ras", "extent"}``; None when absent."""
    values = [float(v) for v in (text or "").split(";") if v.strip()]
    if len(values) != 22:
        return None
    return {"ijk_to_ras": [values[4 * r:4 * r + 4] for r in range(4)], "extent": [int(v) for v in values[16:]]}


def read_model(s: SlicerScene, path: str) -> dict:
    messages = slicer.vtkMRMLMessageCollection()
    node = s.models.AddModel(path, slicer.vtkMRMLStorageNode.CoordinateSystemLPS, messages)
    if node is None or node.GetPolyData() is None:
        raise RuntimeError(messages.GetAllMessagesAsString() or "Slicer's models logic returned no model")
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    storage = node.GetStorageNode()
    return {"node_class": node.GetClassName(), "storage_node_class": storage.GetClassName(),
            "coordinate_system": slicer.vtkMRMLStorageNode.GetCoordinateSystemTypeAsString(
                storage.GetCoordinateSystem()),
            "points": node.GetPolyData().GetNumberOfPoints(), "cells": node.GetPolyData().GetNumberOfCells(),
            "ras_bounds": bounds}


def read_markups(s: SlicerScene, path: str) -> dict:
    messages = slicer.vtkMRMLMessageCollection()
    node_id = s.markups.LoadMarkups(path, None, messages)
    node = s.scene.GetNodeByID(node_id) if node_id else None
    if node is None:
        raise RuntimeError(messages.GetAllMessagesAsString() or "Slicer's markups logic loaded no node")
    points, labels = [], []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        points.append(p)
        labels.append(node.GetNthControlPointLabel(i))
    result = {"node_class": node.GetClassName(), "name": node.GetName(), "control_points_ras": points,
              "labels": labels, "storage_node_class": node.GetStorageNode().GetClassName()}
    if node.IsA("vtkMRMLMarkupsLineNode"):
        result["line_length"] = node.GetLineLengthWorld()
    return result


def read_color_table(s: SlicerScene, path: str) -> dict:
    node = s.colors.LoadColorFile(path, "probe_colors")
    if node is None:
        raise RuntimeError("Slicer's colors logic could not read the colour table")
    entries = []
    for value in range(node.GetNumberOfColors()):
        if node.GetColorDefined(value):
            rgba = [0.0] * 4
            node.GetColor(value, rgba)
            entries.append({"value": value, "name": node.GetColorName(value), "rgba": rgba})
    return {"node_class": node.GetClassName(), "storage_node_class": node.GetStorageNode().GetClassName(),
            "colors": entries}


READERS: dict[str, Callable[..., dict]] = {
    "volume": lambda s, p, **kw: read_volume(s, p, labelmap=False, **kw),
    "labelmap": lambda s, p, **kw: read_volume(s, p, labelmap=True, **kw),
    "segmentation": read_segmentation,
    "model": read_model,
    "markups": read_markups,
    "colortable": read_color_table,
}


def capabilities() -> dict:
    """What this slicer-core offers: ``slicer.util``'s functions, and whether ``slicer.app`` (which its loaders
    call) and ``slicer.mrmlScene`` exist."""
    try:
        import slicer.util as util

        util_functions = sorted(n for n in dir(util) if not n.startswith("_") and callable(getattr(util, n)))
    except Exception:  # noqa: BLE001 - reported, not raised: the probe's readers do not need it
        util_functions = []
    return {"slicer_util_functions": util_functions, "slicer_app": hasattr(slicer, "app"),
            "slicer_mrmlScene": hasattr(slicer, "mrmlScene"), "vtk": vtk.vtkVersion.GetVTKVersion()}


def read_all(files: list[dict]) -> Iterator[dict]:
    """Read every ``{"path", "kind"}`` with Slicer's readers in one scene; one result per file, failures included."""
    scene = SlicerScene()
    for item in files:
        path, kind = str(item.get("path", "")), str(item.get("kind", ""))
        result: dict[str, Any] = {"path": path, "kind": kind, "ok": False, "error": None}
        try:
            if kind not in READERS:
                raise ValueError(f"unknown kind {kind!r}: use one of {sorted(READERS)}")
            options: dict[str, Any] = {}
            if item.get("threshold") is not None:
                options["threshold"] = float(item["threshold"])
            if item.get("closed_surface"):
                options["closed_surface"] = True
            result.update(READERS[kind](scene, path, **options))
            result["ok"] = True
        except Exception as err:  # noqa: BLE001 - every failure is reported for its file
            result["error"] = f"{type(err).__name__}: {err}".strip()
        log = scene.messages()
        if log:
            result["vtk_messages"] = log[-4000:]
            if not result["ok"]:
                result["error"] += "\n" + log[-2000:]
        yield result


def worker() -> int:
    """``--worker``: read the JSON list on stdin; print the capabilities, then one JSON result per line as soon
    as it is read."""
    _import_slicer()
    sys.stdout.write(json.dumps({"capabilities": capabilities()}) + "\n")
    for result in read_all(json.loads(sys.stdin.read())):
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


def probe(files: list[dict]) -> dict:
    """Read every file in worker processes; a file whose reader kills its process (some of Slicer's readers
    abort on an uncaught ITK exception, e.g. a malformed ``.seg.nrrd`` header) is reported as a failure
    and a fresh worker goes on with the files after it."""
    results: list[dict] = []
    caps: dict = {}
    while len(results) < len(files):
        todo = files[len(results):]
        proc = subprocess.run([sys.executable, __file__, "--worker"], input=json.dumps(todo), capture_output=True,
                              text=True)
        done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if done and "capabilities" in done[0]:
            caps = done.pop(0)["capabilities"]
        elif not done:
            raise RuntimeError(f"the probe's worker could not start Slicer (exit status {proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}; run scripts/setup_slicer_env.sh")
        results.extend(done)
        if len(done) < len(todo):  # the worker died reading todo[len(done)]
            item = todo[len(done)]
            results.append({"path": str(item.get("path", "")), "kind": str(item.get("kind", "")), "ok": False,
                            "error": f"Slicer's reader crashed the process (exit status {proc.returncode}):\n"
                                     + proc.stderr.strip()[-2000:]})
    return {"slicer": caps, "results": results}


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--worker"]:
        return worker()
    source = argv[1] if len(argv) > 1 else "-"
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    files = json.loads(text)
    if not isinstance(files, list):
        print("slicer_probe: input must be a JSON list of {\"path\": ..., \"kind\": ...}", file=sys.stderr)
        return 2
    json.dump(probe(files), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
