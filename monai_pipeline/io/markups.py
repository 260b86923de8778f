"""3D Slicer markups JSON (``.mrk.json``): points in (a user's clicks), measurement lines out.

Slicer writes and reads markups as JSON following its schema (``markups-schema-v1.0.3.json``): a file holds a
list of ``markups``, each with a ``type`` (``Fiducial`` for point lists, ``Line``, ``Curve``, ``Plane``...), a
``coordinateSystem`` (``LPS`` or ``RAS``) that its ``controlPoints`` positions (mm) are given in, and optional
``measurements``. This module reads point lists (:func:`read_points`) and writes one line per file
(:func:`write_line`), always in LPS, the DICOM patient system the rest of the package uses; Slicer converts
to its RAS scene on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import atomic_write_text

__all__ = ["SCHEMA", "PointSet", "read_points", "parse_point", "load_points", "write_line", "write_points"]

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
_LPS_RAS = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS: negate x and y
_ORIENTATION_LPS = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]  # identity in RAS, as Slicer writes it in LPS


@dataclass(frozen=True)
class PointSet:
    """Points in patient LPS coordinates (mm), ``(N, 3)``, with a label each and where they came from."""

    lps: np.ndarray
    labels: tuple[str, ...]
    source: str

    @property
    def ras(self) -> np.ndarray:
        return self.lps * _LPS_RAS


def _system(value: object, where: str) -> str:
    system = str(value or "").strip().upper()
    if system not in ("LPS", "RAS"):
        stated = f"coordinate system {value!r} is not LPS or RAS" if value else "no coordinate system stated"
        raise DataError(f"{where}: {stated}; say which "
                        "(markups 'coordinateSystem', or --coordinate-system LPS|RAS for numbers)")
    return system


def read_points(path: str | os.PathLike) -> PointSet:
    """The control points of the point lists (``Fiducial`` markups) of a Slicer ``.mrk.json`` file, in LPS.

    Points whose ``positionStatus`` is not ``defined`` (placed-then-cleared points) are left out.

    Raises:
        DataError: unreadable file, not markups JSON, a markup of another type (line, curve, plane, ...), a
            markup whose ``coordinateSystem`` is missing or not LPS/RAS, or no defined point at all.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: markups file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable markups JSON file ({err})") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups:
        raise DataError(f"{path}: no 'markups' list: not a 3D Slicer markups file (.mrk.json)")
    points, labels = [], []
    for n, markup in enumerate(markups):
        where = f"{path} markup {n + 1}"
        kind = markup.get("type") if isinstance(markup, dict) else None
        if kind not in ("Fiducial", "PointList"):
            raise DataError(f"{where}: type {kind!r}; a point list (Fiducial) is needed, one point per lesion")
        sign = _LPS_RAS if _system(markup.get("coordinateSystem"), where) == "RAS" else np.ones(3)
        for k, cp in enumerate(markup.get("controlPoints") or []):
            if cp.get("positionStatus", "defined") != "defined":
                continue
            try:
                pos = np.asarray(cp["position"], dtype=float)
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where} point {k + 1}: no numeric 'position'") from None
            if pos.shape != (3,) or not np.isfinite(pos).all():
                raise DataError(f"{where} point {k + 1}: position {cp.get('position')!r} is not three finite numbers")
            points.append(pos * sign)
            labels.append(str(cp.get("label") or f"{n + 1}-{k + 1}"))
    if not points:
        raise DataError(f"{path}: the markups hold no defined point; place one point per lesion in Slicer")
    return PointSet(np.asarray(points), tuple(labels), str(path))


def parse_point(text: str, coordinate_system: str | None) -> np.ndarray:
    """``"x,y,z"`` (mm) in ``coordinate_system`` (``LPS`` or ``RAS``) as an LPS point ``(3,)``.

    Raises:
        DataError: not three finite numbers, or no coordinate system stated.
    """
    try:
        pos = np.asarray([float(v) for v in text.split(",")], dtype=float)
    except ValueError:
        pos = np.zeros(0)
    if pos.shape != (3,) or not np.isfinite(pos).all():
        raise DataError(f"point {text!r}: expected three numbers x,y,z in mm (or a .mrk.json file)")
    sign = _LPS_RAS if _system(coordinate_system, f"point {text!r}") == "RAS" else np.ones(3)
    return pos * sign


def load_points(points: str | os.PathLike | Sequence[Any] | np.ndarray, coordinate_system: str | None = None) -> PointSet:
    """Points as LPS millimetres from a ``.mrk.json`` file, ``"x,y,z"`` strings, or an ``(N, 3)`` array.

    Numbers need ``coordinate_system`` (``LPS`` or ``RAS``); a markups file states its own.

    Raises:
        DataError: a file that is not a Slicer point list, numbers without a coordinate system, no point.
    """
    if isinstance(points, np.ndarray):
        items: list[Any] = [",".join(str(v) for v in row) for row in np.asarray(points, float).reshape(-1, 3)]
    elif isinstance(points, (str, os.PathLike)):
        items = [points]
    else:
        items = list(points)
    lps, labels, sources = [], [], []
    for item in items:
        text = str(item)
        if text.lower().endswith(".json") or Path(text).is_file():
            found = read_points(text)
            lps.extend(found.lps)
            labels.extend(found.labels)
            sources.append(found.source)
        else:
            lps.append(parse_point(text, coordinate_system))
            labels.append(f"P-{len(labels) + 1}")
            sources.append(f"numbers ({str(coordinate_system).upper()})")
    if not lps:
        raise DataError("no point given: pass --points x,y,z (with --coordinate-system) or a .mrk.json point list")
    return PointSet(np.asarray(lps, dtype=float), tuple(labels), "; ".join(dict.fromkeys(sources)))


def _control_point(k: int, label: str, lps: Sequence[float]) -> dict:
    return {"id": str(k + 1), "label": label, "description": "", "associatedNodeID": "",
            "position": [round(float(v), 4) for v in lps], "orientation": _ORIENTATION_LPS, "selected": True,
            "locked": True, "visibility": True, "positionStatus": "defined"}


def _document(markup: dict) -> str:
    return json.dumps({"@schema": SCHEMA, "markups": [markup]}, indent=2) + "\n"


def write_line(dest: str | os.PathLike, name: str, start_lps: Sequence[float], end_lps: Sequence[float],
               color: Sequence[float] = (0.9, 0.9, 0.2)) -> Path:
    """Write a Slicer ``Line`` markup from ``start_lps`` to ``end_lps`` (mm), named ``name``, with its length as
    a measurement, atomically. Slicer shows it as a ruler with the length in mm."""
    start, end = np.asarray(start_lps, dtype=float), np.asarray(end_lps, dtype=float)
    length = float(np.linalg.norm(end - start))
    markup = {
        "type": "Line", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
        "fixedNumberOfControlPoints": True, "labelFormat": "%N-%d", "lastUsedControlPointNumber": 2,
        "name": name,
        "controlPoints": [_control_point(0, f"{name}-1", start), _control_point(1, f"{name}-2", end)],
        "measurements": [{"name": "length", "enabled": True, "value": round(length, 4), "units": "mm",
                          "printFormat": "%-#4.4g%s"}],
        "display": {"visibility": True, "color": [float(c) for c in color],
                    "selectedColor": [float(c) for c in color], "propertiesLabelVisibility": True,
                    "pointLabelsVisibility": False, "textScale": 3.0},
    }
    return atomic_write_text(dest, _document(markup))


def write_points(dest: str | os.PathLike, points_lps: np.ndarray, labels: Sequence[str] | None = None,
                 coordinate_system: str = "LPS") -> Path:
    """Write a Slicer point list (``Fiducial`` markup) of ``points_lps`` ``(N, 3)`` (mm), stored in
    ``coordinate_system`` (``LPS`` or ``RAS``), atomically."""
    system = _system(coordinate_system, str(dest))
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3) * (_LPS_RAS if system == "RAS" else 1.0)
    labels = list(labels) if labels is not None else [f"P-{k + 1}" for k in range(len(pts))]
    cps = [_control_point(k, lab, p) for k, (lab, p) in enumerate(zip(labels, pts))]
    if system == "RAS":
        for cp in cps:
            cp["orientation"] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    markup = {"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm", "locked": False,
              "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(cps),
              "controlPoints": cps}
    return atomic_write_text(dest, _document(markup))
