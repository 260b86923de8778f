"""Post-processing of a segmentation into a mask, by the settings the lever benchmarks choose: the foreground
probability threshold and the connected components kept (a rule name)."""

from __future__ import annotations

from typing import Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_pipeline.data.masks import check_component_rule, check_foreground_threshold, keep_components

__all__ = ["ThresholdForegroundd", "KeepComponentsd"]


class ThresholdForegroundd(MapTransform):
    """Two-class probabilities to a label map: 1 where the foreground probability is above ``threshold``, else 0.

    At 0.5 this is ``AsDiscreted(argmax=True)`` for a two-class softmax, up to rounding where the probability is
    0.5 (an exact tie goes to the background in both); another threshold is the lever
    ``scripts/select_lgg_levers.py`` chooses on a fold's selection patients, applied the way it scores it
    (``probability > threshold``).

    Args:
        keys: probability key(s): ``(2, *spatial)``, channel first, channel 1 the foreground's probability (after
            ``Activationsd(softmax=True)``), a tensor (a ``MetaTensor`` keeps its metadata) or an array.
        threshold: in (0, 1); 0.5 by default.
        allow_missing_keys: as in MONAI.

    Returns:
        the data with each key a ``(1, *spatial)`` label map of the probabilities' type and dtype (0.0 / 1.0).

    Raises:
        DataError: at construction, for a threshold outside (0, 1)
            (:func:`~monai_pipeline.data.masks.check_foreground_threshold`).
        ValueError: at call, for a map without exactly two channels (a label map, or more classes than two).
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = check_foreground_threshold(threshold)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            if prob.ndim < 2 or prob.shape[0] != 2:
                raise ValueError(f"ThresholdForegroundd: {key!r} has shape {tuple(prob.shape)}; it needs two-class "
                                 "probabilities (2, *spatial): apply Activationsd(softmax=True) to the two-class "
                                 "output first")
            foreground = prob[1:] > self.threshold  # (1, *spatial), a MetaTensor keeps its metadata
            d[key] = foreground.to(prob.dtype) if isinstance(prob, torch.Tensor) else foreground.astype(prob.dtype)
        return d


class KeepComponentsd(MapTransform):
    """Keep the foreground components of a label map that a rule of
    :data:`~monai_pipeline.data.masks.COMPONENT_RULES` keeps; every other voxel becomes background (0).

    The rules connect full neighbours over the spatial axes (26 in 3D, 8 in 2D). On one patient's stacked slices
    (the brain bundle: a ``(1, H, W, S)`` map per patient) they act in 3D over the patient, as Buda et al. 2019 and
    ``scripts/select_lgg_levers.py`` do; on a single 2D slice ``(1, H, W)``, within the slice.

    Args:
        keys: label-map key(s): ``(1, *spatial)`` labels, channel first, one channel (after
            :class:`ThresholdForegroundd` or ``AsDiscreted(argmax=True)``), a tensor (a ``MetaTensor`` keeps its
            metadata) or an array; non-zero is foreground; kept voxels keep their label, dtype and device.
        rule: ``"all"`` (no change, the default), ``"over10"`` (components with at least 10 % of the largest's
            voxels), ``"largest"`` or ``"centre"`` (the component at the map's centre voxel, else the nearest within
            :data:`~monai_pipeline.data.masks.SNAP_MM` mm, by the voxel spacing of a ``MetaTensor``'s affine; 1 mm
            per voxel for an array): for a crop centred on its lesion, as the nodule bundle's LIDC-IDRI crops are.
        allow_missing_keys: as in MONAI.

    Raises:
        DataError: at construction, for a rule that is not one of the names above
            (:func:`~monai_pipeline.data.masks.check_component_rule`).
        ValueError: at call, for a map without exactly one channel (a one-hot or probability map: threshold it or
            take the argmax first).
    """

    def __init__(self, keys: KeysCollection, rule: str = "all", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rule = check_component_rule(rule)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.rule == "all":
            return d
        for key in self.key_iterator(d):
            labels = d[key]
            if labels.ndim < 2 or labels.shape[0] != 1:
                raise ValueError(f"KeepComponentsd: {key!r} has shape {tuple(labels.shape)}; it needs a label map "
                                 "(1, *spatial), one channel: apply ThresholdForegroundd or "
                                 "AsDiscreted(argmax=True) first")
            foreground = labels != 0  # on the tensor: also for dtypes NumPy lacks (bfloat16)
            if isinstance(foreground, torch.Tensor):
                foreground = foreground.detach().cpu().numpy()
            spacing = labels.pixdim.tolist() if isinstance(labels, MetaTensor) and not labels.is_batch else None
            kept = keep_components(foreground[0], self.rule, spacing)[None]
            # a boolean factor keeps the labels' values and dtype (and a MetaTensor its metadata)
            d[key] = labels * (torch.as_tensor(kept, device=labels.device) if isinstance(labels, torch.Tensor) else kept)
        return d
