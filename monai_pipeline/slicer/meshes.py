"""Surface meshes of segments in LPS millimetres (Slicer's convention for model files), STL and legacy VTK."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D
from vtkmodules.vtkIOGeometry import vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

from monai_pipeline.io.atomic import atomic_path
from monai_pipeline.slicer.segmentation import SLICER_SMOOTHING

__all__ = ["segment_mesh", "write_mesh"]


def segment_mesh(labels: np.ndarray, label: int, ijk_to_lps: np.ndarray, smoothing: float = SLICER_SMOOTHING):
    """Closed surface of ``labels == label`` in LPS mm, or None when the label has no voxel.

    Discrete flying edges (as Slicer) on the label's bounding box padded by one voxel (so the surface is
    closed at the volume's border) in voxel indices, mapped to LPS by ``ijk_to_lps`` (oblique and flipped
    axes included), then windowed-sinc smoothing (pass band ``10 ** (-4 * smoothing)``, 20 iterations)
    and outward normals.

    Returns:
        ``vtkPolyData`` of triangles, points in LPS mm.
    """
    box = ndimage.find_objects((labels == label).astype(np.uint8))
    if not box or box[0] is None:
        return None
    lo = np.array([s.start for s in box[0]])
    crop = np.pad((labels[box[0]] == label).astype(np.uint8), 1)
    image = vtkImageData()
    image.SetDimensions(*crop.shape)
    image.SetOrigin(*(lo - 1).astype(float))
    image.GetPointData().SetScalars(numpy_to_vtk(crop.ravel(order="F"), deep=True))
    surface = vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    surface.ComputeNormalsOff()
    surface.ComputeGradientsOff()
    surface.ComputeScalarsOff()
    surface.Update()
    poly = surface.GetOutput()
    ijk = vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    lps = ijk @ np.asarray(ijk_to_lps)[:3, :3].T + np.asarray(ijk_to_lps)[:3, 3]
    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(lps), deep=True))
    poly.SetPoints(points)
    if smoothing > 0:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputData(poly)
        smoother.SetNumberOfIterations(20)
        smoother.SetPassBand(10.0 ** (-4.0 * smoothing))
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        smoother.Update()
        poly = smoother.GetOutput()
    normals = vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()  # closed surface: outward normals, whatever the handedness of ijk_to_lps
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput()


def write_mesh(poly, dest: str | os.PathLike, description: str = "") -> Path:
    """Write a surface in LPS mm as binary STL or legacy VTK (by ``dest``'s extension), atomically.

    The header says ``SPACE=LPS`` as Slicer's own model files do (Slicer reads it; LPS is also its default
    for model files without it). VTK files use file version 4.2, readable by every Slicer since 4.x.
    """
    dest = Path(dest)
    suffix = dest.suffix.lower()
    if suffix not in (".stl", ".vtk"):
        raise ValueError(f"{dest}: mesh files must end with .stl or .vtk")
    header = f"{' '.join(description.split())[:200]} SPACE=LPS".strip()
    with atomic_path(dest) as tmp:
        writer = vtkSTLWriter() if suffix == ".stl" else vtkPolyDataWriter()
        if suffix == ".stl":
            header = header[-70:]  # binary STL headers hold 80 bytes; keep the SPACE tag
        else:
            writer.SetFileVersion(42)
        writer.SetHeader(header)
        writer.SetFileTypeToBinary()
        writer.SetFileName(str(tmp))
        writer.SetInputData(poly)
        if not writer.Write() or not tmp.exists():
            raise OSError(f"{dest}: VTK could not write the mesh")
    return dest
