"""CT transforms: the body and lung region that the lung bundle crops to before the network."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from monai_pipeline.anatomy import lung_mask

__all__ = ["BodyRegion", "LungRegion"]


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


class LungRegion:
    """``select_fn`` for ``CropForegroundd``: the box around both lungs, so the network sees no abdomen or neck.

    The lungs come from :func:`monai_pipeline.anatomy.lung_mask` on a coarse copy of the image (about
    ``coarse_mm`` voxels, a fraction of a second even for a 512 x 512 x 300 CT); the box is widened by
    ``margin_mm`` on every side. When no lungs are found (a crop inside the lung, a CT without lungs)
    it falls back to :class:`BodyRegion`, so nothing is ever cropped away for lack of lungs. With
    ``lungs=False``, or a ``threshold_hu`` below air (e.g. -2000: keep the whole volume, as for crops taken
    inside the lung), it is :class:`BodyRegion`.

    Args:
        threshold_hu: the fallback body threshold (HU).
        lungs: crop to the lungs (True) or to the body (False).
        margin_mm: margin around the lungs' box, in mm.
        coarse_mm: voxel size of the copy the lungs are found on, in mm.

    Call with the ``(C, I, J, K)`` image in HU (a ``MetaTensor`` whose affine gives the spacing); returns a
    boolean mask of that shape, ``True`` inside the box.
    """

    def __init__(self, threshold_hu: float = -500.0, margin_mm: float = 15.0, coarse_mm: float = 3.0,
                 lungs: bool = True) -> None:
        self.threshold_hu, self.margin_mm, self.coarse_mm = float(threshold_hu), float(margin_mm), float(coarse_mm)
        self.lungs = bool(lungs) and self.threshold_hu > -1024.0

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not self.lungs:
            return img > self.threshold_hu
        aff = np.asarray(img.affine if isinstance(img, MetaTensor) else np.eye(4), dtype=float)
        spacing = np.linalg.norm(aff[:3, :3], axis=0)
        step = np.maximum(1, np.round(self.coarse_mm / spacing)).astype(int)
        arr = np.asarray(img[0].detach().cpu().numpy() if isinstance(img, torch.Tensor) else img[0])
        small = arr[::step[0], ::step[1], ::step[2]]
        lungs = lung_mask(small, aff @ np.diag([*step, 1])) if small.ndim == 3 and small.size else np.zeros(1)
        if not lungs.any():
            return img > self.threshold_hu
        idx = np.argwhere(lungs > 0)
        margin = np.ceil(self.margin_mm / spacing).astype(int)
        lo = np.maximum(idx.min(axis=0) * step - margin, 0)
        hi = np.minimum((idx.max(axis=0) + 1) * step + margin, arr.shape)
        out = torch.zeros(img.shape, dtype=torch.bool, device=img.device if isinstance(img, torch.Tensor) else None)
        out[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        return out

    def __repr__(self) -> str:
        return (f"LungRegion(threshold_hu={self.threshold_hu}, margin_mm={self.margin_mm}, coarse_mm={self.coarse_mm}, "
                f"lungs={self.lungs})")
