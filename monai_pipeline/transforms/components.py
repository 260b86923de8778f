"""Connected-component post-processing of a label map, by rule name (what the LGG lever benchmark chooses)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_pipeline.data.masks import COMPONENT_RULES, keep_components

__all__ = ["KeepComponentsd"]


class KeepComponentsd(MapTransform):
    """Keep the foreground components of a label map that a rule of
    :data:`~monai_pipeline.data.masks.COMPONENT_RULES` keeps; every other voxel becomes background (0).

    The rules connect full neighbours (26 in 3D, 8 in 2D). On one patient's stacked slices (the brain bundle with
    ``context_slices`` > 0: a ``(1, H, W, S)`` map per patient) they act in 3D over the patient, as Buda et al.
    2019 and ``scripts/select_lgg_levers.py`` do; on single 2D slices they act per slice.

    Args:
        keys: label-map key(s): ``(1, *spatial)`` or ``(*spatial)`` integer labels (after ``AsDiscreted(argmax)``),
            a tensor (``MetaTensor`` kept, metadata and all) or an array; non-zero is foreground, labels kept as
            they are.
        rule: ``"all"`` (no change, the default), ``"over10"`` (components with at least 10 % of the largest's
            voxels) or ``"largest"``.
        allow_missing_keys: as in MONAI.

    Raises:
        ValueError: at construction, for a rule that is not one of the names above.
    """

    def __init__(self, keys: KeysCollection, rule: str = "all", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if rule not in COMPONENT_RULES:
            raise ValueError(f"keep_components {rule!r}: give one of {', '.join(COMPONENT_RULES)}")
        self.rule = rule

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.rule == "all":
            return d
        for key in self.key_iterator(d):
            labels = d[key]
            values = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
            kept = keep_components(values, self.rule)
            if isinstance(labels, torch.Tensor):
                d[key] = labels * torch.as_tensor(kept, device=labels.device).to(labels.dtype)
            else:
                d[key] = values * kept.astype(values.dtype)
        return d
