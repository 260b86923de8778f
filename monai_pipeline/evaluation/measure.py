"""Lesion measurements as a reader takes them: RECIST long and short axis on the axial slice, volume, centroid."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist, squareform

from monai_pipeline.anatomy import axial_axis

__all__ = ["axial_diameters", "lesion_measures"]


def _world(affine: np.ndarray, vox: np.ndarray) -> np.ndarray:
    return vox @ affine[:3, :3].T + affine[:3, 3]


def _farthest_pair(pts: np.ndarray) -> tuple[int, int, float]:
    """Indices of the two points of ``pts`` ``(N, 3)`` farthest apart (among the 2D convex hull's vertices when
    there are many; the points are coplanar), and their distance."""
    idx = np.arange(len(pts))
    if len(pts) > 64:
        basis = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(basis, full_matrices=False)
        try:
            idx = ConvexHull(basis @ vt[:2].T).vertices
        except Exception:  # noqa: BLE001 - collinear points: keep them all
            pass
    d = squareform(pdist(pts[idx]))
    a, b = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(idx[a]), int(idx[b]), float(d[a, b])


def axial_diameters(mask: np.ndarray, affine: np.ndarray, axis: int | None = None) -> dict:
    """Longest diameter of a lesion on any axial slice and the longest diameter perpendicular to it on that slice
    (RECIST's long and short axis), measured between voxel centres in world millimetres.

    Args:
        mask: ``(I, J, K)`` boolean lesion mask (one lesion).
        affine: 4x4 voxel-to-world matrix (mm; RAS or LPS: the end points come back in the same system).
        axis: the slice axis; default the voxel axis closest to the patient's superior-inferior direction.

    Returns:
        ``long_mm``, ``short_mm``, ``slice`` (index along ``axis``), ``long_points`` and ``short_points`` (two
        world points each, ``[[x, y, z], [x, y, z]]``). An empty mask gives zeros and no points; a one-voxel
        slice gives 0 mm.
    """
    m = np.asarray(mask) > 0
    aff = np.asarray(affine, dtype=float)
    ax = axial_axis(aff) if axis is None else int(axis)
    out = {"long_mm": 0.0, "short_mm": 0.0, "slice": None, "long_points": [], "short_points": []}
    coords = np.argwhere(m)
    if coords.size == 0:
        return out
    best = None
    for k in np.unique(coords[:, ax]):
        pts = _world(aff, coords[coords[:, ax] == k].astype(float))
        if len(pts) < 2:
            a = b = 0
            length = 0.0
        else:
            a, b, length = _farthest_pair(pts)
        if best is None or length > best[0]:
            best = (length, int(k), pts, a, b)
    length, k, pts, a, b = best
    out.update(long_mm=round(length, 3), slice=k, long_points=[pts[a].round(4).tolist(), pts[b].round(4).tolist()])
    if length == 0.0:
        return out
    u = (pts[b] - pts[a]) / length
    normal = aff[:3, ax] / np.linalg.norm(aff[:3, ax])
    v = np.cross(normal, u)
    v /= np.linalg.norm(v)
    along, across = (pts - pts[a]) @ u, (pts - pts[a]) @ v
    step = float(min(np.linalg.norm(aff[:3, i]) for i in range(3) if i != ax))  # in-plane voxel size
    bins = np.round(along / (step / 2.0)).astype(int)  # chords perpendicular to the long axis, half a voxel apart
    short, ends = 0.0, None
    for n in np.unique(bins):
        sel = np.flatnonzero(bins == n)
        lo, hi = sel[np.argmin(across[sel])], sel[np.argmax(across[sel])]
        # the chord at this position along the long axis: both ends projected onto one perpendicular line
        width = float(across[hi] - across[lo])
        if width > short:
            base = pts[a] + u * float(along[sel].mean())
            short, ends = width, (base + v * across[lo], base + v * across[hi])
    if ends is not None:
        out.update(short_mm=round(short, 3), short_points=[ends[0].round(4).tolist(), ends[1].round(4).tolist()])
    return out


def lesion_measures(mask: np.ndarray, lps_affine: np.ndarray) -> dict:
    """Volume, centroid (LPS and RAS) and RECIST axes (:func:`axial_diameters`, end points in LPS) of one lesion.

    Args:
        mask: ``(I, J, K)`` boolean lesion mask.
        lps_affine: 4x4 voxel-to-LPS matrix (mm), :attr:`~monai_pipeline.io.images.ImageProperties.lps_affine`.
    """
    m = np.asarray(mask) > 0
    aff = np.asarray(lps_affine, dtype=float)
    voxels = int(m.sum())
    voxel_ml = abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0
    centroid = _world(aff, np.argwhere(m).mean(axis=0)[None])[0] if voxels else np.full(3, np.nan)
    return {"voxels": voxels, "volume_ml": round(voxels * voxel_ml, 4),
            "centroid_lps_mm": centroid.round(3).tolist(), "centroid_ras_mm": (centroid * [-1, -1, 1]).round(3).tolist(),
            **axial_diameters(m, aff)}
