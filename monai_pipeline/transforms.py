"""Transforms stage: small pieces MONAI lacks, used by the bundles' transform chains.

The chains themselves (LoadImaged -> Orientationd -> Spacingd -> ...) are written in the bundle configs,
MONAI class by MONAI class, so a config reads as the pipeline.
"""

from __future__ import annotations

import torch

__all__ = ["BodyRegion"]


class BodyRegion:
    """``select_fn`` for ``CropForegroundd``: voxels denser than ``threshold_hu`` (Hounsfield units).

    Thresholding the raw CT at -500 HU keeps the body wall and everything inside it (the lungs are
    enclosed by it) while scanner noise in the air around the patient (about -1000 HU) never reaches
    the threshold, so the bounding box is the body's. Set ``threshold_hu`` below the image minimum
    (e.g. -2000) to keep the whole volume, as for small crops taken inside the lung.

    Args:
        threshold_hu: intensity threshold in HU, applied to the image before intensity scaling.
    """

    def __init__(self, threshold_hu: float = -500.0) -> None:
        self.threshold_hu = float(threshold_hu)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img > self.threshold_hu

    def __repr__(self) -> str:
        return f"BodyRegion(threshold_hu={self.threshold_hu})"
