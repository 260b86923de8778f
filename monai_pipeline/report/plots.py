"""Pictures of a run: overlays, training curves, ROC / FROC / confusion plots and a 3D render.

Every function writes one PNG atomically (:func:`monai_pipeline.io.atomic_path`) and returns its path.
Plots are drawn on matplotlib's Agg canvas through :class:`matplotlib.figure.Figure` (no pyplot, no display,
no global state). The 3D render uses pyvista off-screen; whether this machine can render off-screen is
found out once, in a child process (:func:`offscreen_unavailable_reason`), because a broken OpenGL stack
crashes VTK with a segmentation fault rather than raising. Where it cannot, :func:`render_3d` raises
:class:`RenderUnavailableError` with the reason. Without a display, VTK 9.7's Linux wheels fall back from X to
EGL: on a Debian 12 machine without a GPU or X server this renders with Mesa's llvmpipe software renderer
(``libegl-mesa0``); OSMesa is not needed (forcing ``VTK_DEFAULT_OPENGL_WINDOW=vtkOSMesaRenderWindow`` without
libOSMesa crashes VTK, which the probe reports).

Orientation: axial slices are shown in the **radiological convention**: viewed from the feet, patient
anterior at the top, patient right on the image's left (patient left on the image's right), after
reorienting each volume to RAS with its own affine. The 3D render is an anterior view with the same
left/right sense (patient right on the image's left). 2D slice files (PNG/TIFF) have no geometry and are
shown as stored.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from vtkmodules.vtkCommonCore import vtkLogger

from monai_pipeline.io.atomic import atomic_path
from monai_pipeline.io.images import read_mask
from monai_pipeline.io.naming import SLICE_SUFFIXES
from monai_pipeline.io.slices import read_slice

__all__ = ["event_files", "overlay_montage", "training_curves", "read_scalars", "epoch_curves", "roc_plot", "froc_plot",
           "confusion_plot", "render_3d", "axial_display", "best_axial_slice", "window_range", "pick_cases",
           "offscreen_unavailable_reason", "RenderUnavailableError", "LUNG_WINDOW_HU"]

logger = logging.getLogger(__name__)

LUNG_WINDOW_HU = (-1000.0, 400.0)
"""Display window for CT in Hounsfield units (lung window)."""

# a volume given as a file path, or as ``(array, 4x4 RAS affine)``, or as a bare array (identity affine)
VolumeLike = Union[str, os.PathLike, tuple, np.ndarray]


class RenderUnavailableError(RuntimeError):
    """Off-screen 3D rendering cannot run in this environment; the message says why."""


# --------------------------------------------------------------------------------------------- helpers
def _figure(width: float, height: float):
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, dest: str | os.PathLike, dpi: int = 100) -> Path:
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    logger.debug("wrote %s", dest)
    return dest


def _load_volume(x: VolumeLike | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(array, affine)`` of a path (volume via SimpleITK, 2D slice file via PIL), a tuple or an array."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return np.asarray(x[0]), np.asarray(x[1], dtype=float)
    if isinstance(x, np.ndarray):
        return x, np.eye(4)
    if str(x).lower().endswith(SLICE_SUFFIXES):  # 2D slice files: rows/columns as stored, no geometry
        arr = read_slice(x, mask="_mask" in Path(x).name)
        if arr.ndim == 3:  # (H, W, C) image: its middle channel of three (FLAIR in the LGG layout), else the first
            arr = arr[..., 1 if arr.shape[-1] == 3 else 0]
        return arr, np.eye(4)
    return read_mask(x)


def _as_2d_stack(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    """Display stack ``(K, rows, cols)`` and the row/column pixel aspect of a volume or of a 2D slice."""
    a = np.asarray(arr)
    if a.ndim == 2:  # a 2D slice: no geometry, shown as stored
        return a[None], 1.0
    if a.ndim == 4:  # channel-last multi-modal volume: the first channel
        a = a[..., 0]
    return axial_display(a, affine)


def axial_display(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    """Axial slices of a 3D volume in radiological display order.

    Args:
        volume: ``(I, J, K)`` array in voxel order.
        affine: 4x4 voxel-to-world matrix in RAS mm (:func:`monai_pipeline.io.images.read_mask` gives it).

    Returns:
        ``(stack, aspect)``: ``stack[k]`` is the k-th axial slice from inferior to superior as an image
        (row 0 = most anterior, column 0 = most patient-right, so patient left is on the image's right), and
        ``aspect`` is row spacing / column spacing for ``imshow(aspect=...)``.
    """
    vol = np.asarray(volume)
    aff = np.asarray(affine, dtype=float)
    ornt = nib.orientations.io_orientation(aff)
    ras = nib.orientations.apply_orientation(vol, ornt)  # axes now R, A, S (increasing towards them)
    ras_aff = aff @ nib.orientations.inv_ornt_aff(ornt, vol.shape)
    spacing = np.linalg.norm(ras_aff[:3, :3], axis=0)
    # image rows: anterior (high A) first; columns: patient right (high R) first
    stack = np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]
    return np.ascontiguousarray(stack), float(spacing[1] / spacing[0])


def window_range(image: np.ndarray) -> tuple[float, float, str]:
    """Display range of an image: the lung window -1000..400 when the values look like CT Hounsfield units
    (integer-valued, air near -1000 present, nothing below -1100 beyond noise), else the 1st-99th percentile.

    Returns ``(low, high, description)``.
    """
    a = np.asarray(image, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0, "empty"
    p01, p1, p99 = np.percentile(a, [0.1, 1, 99])
    integral = bool(np.allclose(a[:: max(1, a.size // 10000)], np.round(a[:: max(1, a.size // 10000)])))
    if integral and -1100 <= p01 and p1 <= -700 and p99 <= 4000:
        return LUNG_WINDOW_HU[0], LUNG_WINDOW_HU[1], "CT lung window -1000..400 HU"
    lo, hi = float(p1), float(p99)
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max()) if a.max() > a.min() else float(a.min()) + 1.0
    return lo, hi, "percentile 1-99"


def pick_cases(rows: Sequence[Mapping], key: str = "dice") -> list[tuple[str, Mapping]]:
    """Best, median and worst row by ``key`` as ``[(role, row)]`` (fewer when rows are fewer; rows without a
    value are ignored). Ties keep the rows' order."""
    valid = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not valid:
        return []
    ordered = sorted(valid, key=lambda r: -r[key])
    picks = [("best", ordered[0]), ("median", ordered[(len(ordered) - 1) // 2]), ("worst", ordered[-1])]
    out, seen = [], set()
    for role, r in picks:
        if id(r) not in seen:
            seen.add(id(r))
            out.append((role, r))
    return out


# ---------------------------------------------------------------------------------------- overlays
def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def overlay_montage(cases: Sequence[Mapping[str, Any]], dest: str | os.PathLike) -> Path:
    """One row per case: image, label overlay, prediction overlay and their agreement, on one axial slice.

    Args:
        cases: mappings with ``label`` and ``prediction`` (a file path, an ``(array, affine)`` tuple or an
            array) and optionally ``image`` (same forms; without it the masks are drawn on black),
            ``case_id``, ``role`` (e.g. "best") and ``dice`` for the row title. All volumes of a case must
            share one voxel grid.
        dest: PNG to write.

    The slice shown is the axial slice with the largest label area (the largest prediction area when the
    label is empty; the middle slice when both are). Display is radiological (patient right on the image's
    left, anterior up, see the module docstring). CT images get the lung window -1000..400 HU, others their
    1st-99th percentile.

    Returns:
        ``dest``.
    """
    if not cases:
        raise ValueError("overlay_montage: no cases")
    ncol = 4
    fig = _figure(3.0 * ncol, 3.1 * len(cases) + 0.3)
    axes = fig.subplots(len(cases), ncol, squeeze=False)
    notes = set()
    for row, case in zip(axes, cases):
        lab = _load_volume(case["label"])
        pred = _load_volume(case["prediction"])
        img = _load_volume(case.get("image"))
        lab_s, aspect = _as_2d_stack(lab[0], lab[1])
        pred_s, _ = _as_2d_stack(pred[0], pred[1])
        lab_s, pred_s = lab_s > 0, pred_s > 0
        if lab_s.shape != pred_s.shape:
            raise ValueError(f"case {case.get('case_id')}: label {lab_s.shape} and prediction {pred_s.shape} "
                             "differ in shape")
        k = best_axial_slice(lab_s, pred_s)
        if img is not None:
            img_s, _ = _as_2d_stack(img[0], img[1])
            if img_s.shape != lab_s.shape:
                raise ValueError(f"case {case.get('case_id')}: image {img_s.shape} and label {lab_s.shape} "
                                 "differ in shape")
            lo, hi, how = window_range(img_s)
            notes.add(how)
            base = np.clip((img_s[k].astype(float) - lo) / (hi - lo), 0, 1)
        else:
            notes.add("no image: masks on black")
            base = np.zeros(lab_s.shape[1:])
        g, p = lab_s[k], pred_s[k]
        gray = np.stack([base] * 3, axis=-1)
        panels = {
            "image": gray,
            "label": _blend(gray, g, (0.1, 0.9, 0.2)),
            "prediction": _blend(gray, p, (1.0, 0.2, 0.2)),
        }
        agree = gray.copy()
        for m, colour in ((g & p, (1.0, 0.85, 0.0)), (g & ~p, (0.1, 0.9, 0.2)), (p & ~g, (1.0, 0.2, 0.2))):
            agree[m] = colour
        panels["agreement"] = agree
        title = " ".join(str(x) for x in (case.get("role"), case.get("case_id")) if x)
        if isinstance(case.get("dice"), (int, float)):
            title += f"  dice {case['dice']:.3f}"
        three_d = lab_s.shape[0] > 1
        for c, (ax, (name, rgb)) in enumerate(zip(row, panels.items())):
            ax.imshow(rgb, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}\n{name}" + (f" (axial slice {k} from inferior)" if c == 0 and three_d else ""), fontsize=8)
            if three_d:
                h, w = rgb.shape[:2]
                style = dict(color="yellow", fontsize=8, fontweight="bold", va="center", ha="center")
                ax.text(0.03 * w + 1, h / 2, "R", **style)
                ax.text(0.97 * w - 1, h / 2, "L", **style)
                ax.text(w / 2, 0.05 * h + 1, "A", **style)
    orient = ("radiological display: patient right on image left (R | L), anterior up"
              if any(_is_3d(c) for c in cases) else "2D slices shown as stored")
    fig.suptitle(f"{orient}; {', '.join(sorted(notes))}; label green, prediction red, overlap yellow",
                 fontsize=9)
    return _save(fig, dest)


def best_axial_slice(label_stack: np.ndarray, pred_stack: np.ndarray) -> int:
    """Index of the slice with the largest label area in stacks ``(K, rows, cols)`` (as :func:`axial_display`
    gives them); the largest prediction area when the label is empty; the middle slice when both are."""
    area = (np.asarray(label_stack) > 0).reshape(len(label_stack), -1).sum(1)
    if not area.any():
        area = (np.asarray(pred_stack) > 0).reshape(len(pred_stack), -1).sum(1)
    return int(np.argmax(area)) if area.any() else len(label_stack) // 2


def _is_3d(case: Mapping) -> bool:
    lab = case.get("label")
    if isinstance(lab, tuple):
        return np.asarray(lab[0]).ndim >= 3
    if isinstance(lab, np.ndarray):
        return lab.ndim >= 3
    return not str(lab).lower().endswith(SLICE_SUFFIXES)


def _blend(gray: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.45) -> np.ndarray:
    out = gray.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour)
    out[_outline(mask)] = colour
    return out


# ----------------------------------------------------------------------------------- training curves
def event_files(event_dir: str | os.PathLike) -> list[Path]:
    root = Path(event_dir)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("events.out.tfevents.*") if p.is_file())


def read_scalars(event_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under ``event_dir`` (searched recursively; a list of
    folders or files is searched in turn): ``{tag: [(step, value), ...]}`` sorted by step. A step logged twice
    (e.g. a resumed run) keeps its latest value. Unreadable files are skipped with a warning."""
    roots = [event_dir] if isinstance(event_dir, (str, os.PathLike)) else list(event_dir)
    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for f in [f for r in roots for f in event_files(r)]:
        try:
            acc = EventAccumulator(str(f), size_guidance={SCALARS: 0})
            acc.Reload()
            tags = acc.Tags().get("scalars", [])
        except Exception as err:  # noqa: BLE001 - a damaged log must not stop a report
            logger.warning("%s: unreadable TensorBoard file (%s)", f, err)
            continue
        for tag in tags:
            for ev in acc.Scalars(tag):
                old = merged.setdefault(tag, {}).get(ev.step)
                if old is None or ev.wall_time >= old[0]:
                    merged[tag][ev.step] = (ev.wall_time, float(ev.value))
    return {tag: sorted((s, v) for s, (_, v) in pts.items()) for tag, pts in sorted(merged.items())}


def epoch_curves(scalars: Mapping[str, Sequence[tuple[int, float]]]) -> tuple[dict[str, tuple[list, list]], str]:
    """Per-epoch curves of :func:`read_scalars` output.

    The number of epochs is the smallest last step among the tags (epoch-level tags such as ``val_mean_dice``
    are logged once per epoch with step = epoch). A tag logged with more steps than that (the per-iteration
    ``train_loss``) is binned into epochs of equal length and averaged. With one tag only, steps are kept.

    Returns:
        ``({tag: (x, y)}, x_label)`` with ``x_label`` "epoch" or "step".
    """
    tags = {t: list(p) for t, p in scalars.items() if p}
    if not tags:
        return {}, "step"
    n_epochs = min(p[-1][0] for p in tags.values())
    if len(tags) == 1 or n_epochs < 1:
        return {t: ([s for s, _ in p], [v for _, v in p]) for t, p in tags.items()}, "step"
    out = {}
    for tag, pts in tags.items():
        last = pts[-1][0]
        if last <= n_epochs:
            out[tag] = ([s for s, _ in pts], [v for _, v in pts])
            continue
        per_epoch = last / n_epochs
        bins: dict[int, list[float]] = {}
        for s, v in pts:
            bins.setdefault(max(1, math.ceil(s / per_epoch - 1e-9)), []).append(v)
        out[tag] = (sorted(bins), [float(np.mean(bins[e])) for e in sorted(bins)])
    return out, "epoch"


def _is_lr(tag: str) -> bool:
    t = tag.lower()
    return t in ("lr", "learning_rate") or t.endswith(("_lr", "/lr", "learning_rate"))


def training_curves(event_dir: str | os.PathLike | Sequence[str | os.PathLike], dest: str | os.PathLike) -> Path | None:
    """Loss, metric and learning-rate curves per epoch from TensorBoard event files under ``event_dir``.

    Tags containing "loss" go to the loss panel (per-iteration losses also drawn faintly), learning-rate tags
    (``lr``, ``*_lr``, ``learning_rate``) to a log-scale panel, all others (``val_mean_dice``,
    ``train_mean_dice``, ...) to the metric panel. See :func:`epoch_curves` for how steps become epochs.

    Returns:
        ``dest``, or None (logged) when no event file or no scalar is found.
    """
    scalars = read_scalars(event_dir)
    if not scalars:
        logger.info("no TensorBoard scalars found under %s: no training curves", event_dir)
        return None
    curves, xlabel = epoch_curves(scalars)
    groups = {"loss": [t for t in curves if "loss" in t.lower()],
              "metrics": [t for t in curves if "loss" not in t.lower() and not _is_lr(t)],
              "learning rate": [t for t in curves if _is_lr(t)]}
    groups = {k: v for k, v in groups.items() if v}
    fig = _figure(4.2 * len(groups), 3.4)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, tags) in zip(axes, groups.items()):
        for tag in tags:
            x, y = curves[tag]
            raw = scalars[tag]
            (line,) = ax.plot(x, y, marker="o" if len(x) <= 30 else None, ms=3, label=tag)
            if xlabel == "epoch" and len(raw) > len(x) and x:  # per-iteration points behind their epoch means
                per_epoch = raw[-1][0] / max(x)
                ax.plot([s / per_epoch for s, _ in raw], [v for _, v in raw], lw=0.6, alpha=0.35,
                        color=line.get_color())
        if name == "learning rate":
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, dest)


# ------------------------------------------------------------------------------ ROC / FROC / confusion
def roc_plot(presence: Mapping[str, Any], dest: str | os.PathLike) -> Path:
    """ROC curve of case-level tumour presence (``presence.json``: ``roc.fpr``, ``roc.tpr``, ``roc_auc`` and
    the operating point from ``confusion`` at ``threshold``)."""
    roc = presence.get("roc") or {}
    fpr, tpr = list(roc.get("fpr") or []), list(roc.get("tpr") or [])
    if not fpr or len(fpr) != len(tpr):
        raise ValueError("presence.json: no ROC curve (roc.fpr / roc.tpr missing or of different lengths)")
    fig = _figure(4.2, 4.0)
    ax = fig.subplots()
    auc = presence.get("roc_auc")
    ax.plot(fpr, tpr, marker=".", label="ROC" + (f" (AUC {auc:.3f})" if isinstance(auc, (int, float)) else ""))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
    c = presence.get("confusion") or {}
    if all(isinstance(c.get(k), (int, float)) for k in ("tp", "fp", "tn", "fn")):
        neg, pos = c["fp"] + c["tn"], c["tp"] + c["fn"]
        if neg and pos:
            thr = presence.get("threshold")
            ax.plot([c["fp"] / neg], [c["tp"] / pos], "o", color="red",
                    label="operating point" + (f" (threshold {thr:g})" if isinstance(thr, (int, float)) else ""))
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("tumour presence per case: ROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, dest)


def froc_plot(detection: Mapping[str, Any], dest: str | os.PathLike) -> Path:
    """FROC curve of lesion detection (``detection.json``: ``froc`` {false positives per case: sensitivity},
    ``froc_mean``), false positives per case on a log2 axis."""
    froc = detection.get("froc") or {}
    pts = sorted((float(k), v) for k, v in froc.items() if isinstance(v, (int, float)))
    if not pts:
        raise ValueError("detection.json: no FROC points (froc empty or all undefined)")
    fig = _figure(4.6, 4.0)
    ax = fig.subplots()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks([p[0] for p in pts], [f"{p[0]:g}" for p in pts])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("lesion sensitivity")
    mean = detection.get("froc_mean")
    ax.set_title("lesion detection: FROC" + (f" (mean {mean:.3f})" if isinstance(mean, (int, float)) else ""))
    ax.grid(alpha=0.3)
    return _save(fig, dest)


def confusion_plot(presence: Mapping[str, Any], dest: str | os.PathLike) -> Path:
    """2x2 confusion matrix of case-level tumour presence (``presence.json``'s ``confusion``: tp, fp, tn, fn)."""
    c = presence.get("confusion") or {}
    if not all(isinstance(c.get(k), (int, float)) for k in ("tp", "fp", "tn", "fn")):
        raise ValueError("presence.json: confusion needs tp, fp, tn and fn")
    m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], dtype=float)
    fig = _figure(3.8, 3.5)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1.0, m.max()))
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{names[i][j]}\n{int(m[i, j])}", ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=11)
    ax.set_xticks([0, 1], ["no tumour", "tumour"])
    ax.set_yticks([0, 1], ["no tumour", "tumour"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    thr = presence.get("threshold")
    ax.set_title("tumour presence per case" + (f"\nthreshold {thr:g}" if isinstance(thr, (int, float)) else ""),
                 fontsize=9)
    return _save(fig, dest)


# ------------------------------------------------------------------------------------------ 3D render
_PROBE = r"""
from vtkmodules.vtkCommonCore import vtkLogger
vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
import pyvista as pv
pl = pv.Plotter(off_screen=True, window_size=(64, 64))
pl.add_mesh(pv.Sphere(), color="red")
img = pl.screenshot(None, return_img=True)
print("window", type(pl.ren_win).__name__)
pl.close()
if img is None or img.std() == 0:
    raise SystemExit("the test render came out blank")
print("ok")
"""

_PROBE_CACHE: dict[tuple, str | None] = {}


def offscreen_unavailable_reason(timeout: float = 120.0) -> str | None:
    """Why off-screen 3D rendering cannot run here, or None when it can.

    A child process renders a sphere with pyvista off-screen (VTK picks its window: X when ``DISPLAY``
    works, otherwise EGL, then OSMesa; ``VTK_DEFAULT_OPENGL_WINDOW`` forces one). A crash there (VTK without
    a usable OpenGL library dies with SIGSEGV) cannot take this process down. The answer is cached per
    ``DISPLAY`` / ``VTK_DEFAULT_OPENGL_WINDOW``. ``MONAI_PIPELINE_NO_3D=1`` disables rendering.
    """
    if os.environ.get("MONAI_PIPELINE_NO_3D", "") not in ("", "0"):
        return "disabled by MONAI_PIPELINE_NO_3D"
    key = (os.environ.get("DISPLAY"), os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"))
    if key not in _PROBE_CACHE:
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            reason = f"the off-screen test render did not finish within {timeout:g} s"
        else:
            out = proc.stdout.split()
            if proc.returncode == 0 and out[-1:] == ["ok"]:
                reason = None
                logger.debug("off-screen rendering works (%s)", " ".join(out[:-1]))
            else:
                lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in (proc.stderr + proc.stdout).splitlines()]
                lines = [x for x in lines if x]
                detail = lines[-1][-300:] if lines else "no message"
                if proc.returncode < 0:
                    try:
                        sig = signal.Signals(-proc.returncode).name
                    except ValueError:
                        sig = f"signal {-proc.returncode}"
                    reason = f"the off-screen OpenGL test render crashed ({sig}; no usable EGL/OSMesa/X?): {detail}"
                else:
                    reason = f"the off-screen test render failed (exit {proc.returncode}): {detail}"
        _PROBE_CACHE[key] = reason
    return _PROBE_CACHE[key]


_SOLID_COLOURS = ("#e6194b", "#3cb44b", "#f58231", "#911eb4", "#4363d8", "#ffe119")


def render_3d(masks: Mapping[str, tuple[np.ndarray, np.ndarray]], dest: str | os.PathLike,
              style: Mapping[str, Mapping[str, Any]] | None = None, title: str | None = None,
              window_size: tuple[int, int] = (900, 700), max_voxels: int = 8_000_000) -> Path:
    """Surfaces of binary masks rendered off-screen with pyvista, in world mm (RAS), anterior view.

    Args:
        masks: ``{name: (array, 4x4 RAS affine)}``; each array is one structure (> 0), surfaces are taken at
            the 0.5 iso-level of the voxel mask and placed with its own affine, so masks on different grids
            line up in world space. Names containing "lung" are drawn translucent light blue, others solid
            in distinct colours.
        dest: PNG to write.
        style: per name ``{"color": ..., "opacity": ...}`` overriding the defaults.
        title: text drawn in the top left corner.
        max_voxels: larger masks are subsampled by 2 per axis (affine adjusted), as often as needed, before
            surface extraction.

    Returns:
        ``dest``.

    Raises:
        RenderUnavailableError: off-screen rendering cannot run here (see :func:`offscreen_unavailable_reason`).
        ValueError: every mask is empty.
    """
    reason = offscreen_unavailable_reason()
    if reason:
        raise RenderUnavailableError(reason)
    import pyvista as pv  # here, not at the top: only after the probe has shown that rendering works here

    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)  # no "bad X server connection" noise headless
    style = style or {}
    surfaces = []
    solid_i = 0
    for name, (arr, aff) in masks.items():
        m = np.asarray(arr) > 0
        aff = np.asarray(aff, dtype=float)
        if m.ndim != 3 or not m.any():
            continue
        while m.size > max_voxels:  # keep surface extraction and rendering within seconds on a CPU
            m = m[::2, ::2, ::2]
            aff = aff @ np.diag([2.0, 2.0, 2.0, 1.0])
        grid = pv.ImageData(dimensions=np.array(m.shape) + 2, origin=(-1.0, -1.0, -1.0))
        grid.point_data["mask"] = np.pad(m, 1).astype(np.float32).ravel(order="F")
        surf = grid.contour([0.5], scalars="mask").transform(aff, inplace=False)
        if surf.n_points == 0:
            continue
        lung = "lung" in name.lower()
        st = {"color": "#9ecae1", "opacity": 0.2} if lung else {"color": _SOLID_COLOURS[solid_i % 6], "opacity": 1.0}
        solid_i += 0 if lung else 1
        st.update(style.get(name, {}))
        surfaces.append((name, surf, st))
    if not surfaces:
        raise ValueError("render_3d: every mask is empty")
    pl = pv.Plotter(off_screen=True, window_size=list(window_size))
    try:
        pl.set_background("white")
        for name, surf, st in surfaces:
            pl.add_mesh(surf, color=st["color"], opacity=st["opacity"], smooth_shading=True, label=name)
        pl.add_legend(bcolor="white", face="rectangle", size=(0.22, 0.05 + 0.04 * len(surfaces)))
        pl.show_grid(xtitle="R (mm)", ytitle="A (mm)", ztitle="S (mm)", color="grey", font_size=8)
        pl.add_axes(xlabel="R", ylabel="A", zlabel="S")
        pl.view_vector((0.0, 1.0, 0.0), viewup=(0.0, 0.0, 1.0))  # from the front: patient right on image left
        pl.reset_camera()
        pl.add_text((title + "\n" if title else "") + "anterior view, world mm (RAS); patient right on image left",
                    position="upper_left", font_size=9, color="black")
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            pl.screenshot(str(tmp))
    finally:
        pl.close()
    logger.debug("wrote %s", dest)
    return dest
