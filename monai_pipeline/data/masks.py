"""Binary-mask helpers shared by the stages above (anatomy, input checks, synthetic data, post-processing)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from monai_pipeline.errors import DataError


def _components(mask: np.ndarray, full_connectivity: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mask`` as booleans, its component labels (0: background) and each label's voxel count (background's
    counted as 0)."""
    mask = np.asarray(mask) != 0
    structure = np.ones((3,) * mask.ndim, bool) if full_connectivity else None
    labels, _ = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=1)  # an array with no elements has no background either
    sizes[0] = 0
    return mask, labels, sizes


def largest_component(mask: np.ndarray, full_connectivity: bool = False) -> np.ndarray:
    """The largest connected component of a binary mask.

    Args:
        mask: binary array of any dimension (``(H, W)``, ``(H, W, D)``...); non-zero is foreground.
        full_connectivity: neighbours that share only an edge or a corner connect too (26 in 3D, 8 in 2D);
            otherwise only face neighbours do (6 in 3D, 4 in 2D: SciPy's default).

    Returns:
        boolean array of ``mask``'s shape, true on the largest component only (all false for an empty mask;
        on a tie, the component SciPy numbers first).
    """
    mask, labels, sizes = _components(mask, full_connectivity)
    if len(sizes) < 3:  # background and at most one component
        return mask
    return labels == int(np.argmax(sizes))


def large_components(mask: np.ndarray, min_fraction: float, full_connectivity: bool = False) -> np.ndarray:
    """The connected components of a binary mask with at least ``min_fraction`` of the largest one's voxels.

    A milder post-processing step than :func:`largest_component`: a second lesion of comparable size survives, the
    specks a segmentation network scatters around do not.

    Args:
        mask: binary array of any dimension; non-zero is foreground.
        min_fraction: in ``[0, 1]``; a component is kept when its voxel count is at least this fraction of the
            largest component's (0 keeps every component; 1 keeps the largest and any as large).
        full_connectivity: as in :func:`largest_component`.

    Returns:
        boolean array of ``mask``'s shape (all false for an empty mask).
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in [0, 1], got {min_fraction}")
    mask, labels, sizes = _components(mask, full_connectivity)
    if len(sizes) < 3:
        return mask
    return (sizes >= min_fraction * sizes.max())[labels] & mask


#: How far (mm) :func:`component_at` looks for the nearest component when no component holds the voxel itself.
SNAP_MM = 5.0


def component_at(mask: np.ndarray, ijk: Sequence[float], spacing: Sequence[float] | None = None,
                 snap_mm: float = SNAP_MM) -> np.ndarray:
    """The connected component of ``mask`` (full connectivity: 26 neighbours in 3D) that holds voxel ``ijk``, else
    the one nearest to it within ``snap_mm``, else nothing.

    What a click on a lesion means (``monai-pipeline delineate``) and the ``centre`` rule of a crop centred on one.

    Args:
        mask: binary array of any dimension; non-zero is foreground.
        ijk: the voxel (fractional indices are rounded; outside the array: the nearest voxel inside it).
        spacing: voxel size per axis in mm, for the distance to the nearest component (default 1 per axis).
        snap_mm: the farthest a component may be from ``ijk`` and still be taken.

    Returns:
        boolean array of ``mask``'s shape (all false when no component is within ``snap_mm``).
    """
    mask, labels, sizes = _components(mask, full_connectivity=True)
    if len(sizes) < 2:
        return mask
    shape = np.asarray(mask.shape)
    v = tuple(np.clip(np.rint(np.asarray(ijk, dtype=float)).astype(int), 0, shape - 1))
    if labels[v]:
        return labels == labels[v]
    idx = np.argwhere(labels > 0)
    step = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, dtype=float)[: mask.ndim]
    dist = np.linalg.norm((idx - np.asarray(v)) * step, axis=1)
    nearest = int(np.argmin(dist))
    if dist[nearest] > snap_mm:
        return np.zeros(mask.shape, bool)
    return labels == labels[tuple(idx[nearest])]


#: Post-processing rules for a segmentation's foreground, by name, each on a binary mask of any dimension and its
#: voxel spacing (mm per axis, or None: 1), with full connectivity (26 neighbours in 3D): ``all`` keeps the mask as
#: it is, ``over10`` every component with at least 10 % of the largest one's voxels (:func:`large_components`),
#: ``largest`` the largest only (:func:`largest_component`; Buda et al. 2019 keep the largest 3D component of a
#: patient's stacked slices), ``centre`` the component at the array's centre voxel, else the nearest within
#: :data:`SNAP_MM` (:func:`component_at`): for a crop centred on its lesion (the nodule bundle's LIDC-IDRI crops).
COMPONENT_RULES: dict[str, Callable[[np.ndarray, Sequence[float] | None], np.ndarray]] = {
    "all": lambda m, spacing=None: np.asarray(m) != 0,
    "over10": lambda m, spacing=None: large_components(m, 0.1, full_connectivity=True),
    "largest": lambda m, spacing=None: largest_component(m, full_connectivity=True),
    "centre": lambda m, spacing=None: component_at(m, (np.asarray(np.shape(m)) - 1) / 2.0, spacing),
}

#: The rules of :data:`COMPONENT_RULES` for an image that is not a crop centred on its lesion (the brain bundle's
#: stack of a patient's slices): ``centre`` is left out, since the centre voxel there is no lesion's.
STACK_COMPONENT_RULES: tuple[str, ...] = ("all", "over10", "largest")


def check_component_rule(rule: str, offered: Sequence[str] | None = None) -> str:
    """``rule`` when it names a rule of :data:`COMPONENT_RULES` (of ``offered`` only, when given).

    Args:
        rule: the name to check.
        offered: the rules a caller offers, distinct names of :data:`COMPONENT_RULES`, such as
            :data:`STACK_COMPONENT_RULES` (the brain bundle's); ``None``: all of them.

    Raises:
        DataError: (a ``ValueError``) ``rule`` is not offered, naming the rules that are; a bundle run checks its
            ``keep_components`` setting with this before it reads or writes anything.
        ValueError: ``offered`` is not a list of distinct rule names (a programming error, not the user's).
    """
    if isinstance(offered, str):
        raise ValueError(f"offered component rules {offered!r}: give a list of rule names, not one string")
    names = list(COMPONENT_RULES) if offered is None else list(offered)
    if not names or len(set(names)) != len(names) or set(names) - set(COMPONENT_RULES):
        raise ValueError(f"offered component rules {', '.join(map(str, names)) or 'none'}: give distinct rules of "
                         f"{', '.join(COMPONENT_RULES)}")
    if not isinstance(rule, str) or rule not in names:
        if isinstance(rule, str) and rule in COMPONENT_RULES:
            why = " (it is for a crop centred on its lesion)" if rule == "centre" else ""
            raise DataError(f"component rule {rule!r} (keep_components) is not offered here{why}: give one of "
                            f"{', '.join(names)}")
        raise DataError(f"unknown component rule {rule!r} (keep_components): give one of {', '.join(names)}")
    return rule


def check_foreground_threshold(threshold: float, setting: str = "prob_threshold") -> float:
    """``threshold`` as a float when it lies strictly between 0 and 1: a foreground probability above it is
    foreground (0.5 is the argmax's decision for two classes).

    Args:
        threshold: the value to check.
        setting: what the error names as the value's source (a bundle setting, or a transform's argument).

    Raises:
        DataError: (a ``ValueError``) it is not a number in (0, 1); a bundle run checks its ``prob_threshold``
            setting with this before it reads or writes anything.
    """
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not 0.0 < value < 1.0:
        hint = " or the threshold scripts/select_lgg_levers.py chose" if setting == "prob_threshold" else ""
        raise DataError(f"foreground probability threshold {threshold!r} ({setting}): give a number between 0 "
                        f"and 1, such as 0.5 (the argmax){hint}")
    return value


def keep_components(mask: np.ndarray, rule: str, spacing: Sequence[float] | None = None) -> np.ndarray:
    """``mask`` (any dimension; non-zero is foreground) after the component rule ``rule`` of
    :data:`COMPONENT_RULES`, as a boolean array of its shape; ``spacing`` (mm per axis) matters to ``centre`` only.

    Raises:
        DataError: ``rule`` is not one of :data:`COMPONENT_RULES` (:func:`check_component_rule`).
    """
    return COMPONENT_RULES[check_component_rule(rule)](mask, spacing)
