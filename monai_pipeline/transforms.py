"""Transforms stage: small pieces MONAI lacks, used by the bundles' transform chains.

The chains themselves (LoadImaged -> Orientationd -> Spacingd -> ...) are written in the bundle configs,
MONAI class by MONAI class, so a config reads as the pipeline.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["BodyRegion", "LungRegion", "ResampleToSourced", "LoadBrainImaged", "BrainNormalized", "BrainSlicesd", "SLICE_STACK_AFFINE"]


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
        from monai_pipeline.anatomy import lung_mask

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


class ResampleToSourced(MapTransform):
    """Bring a network-grid prediction back onto the source image's voxel grid, as a uint8 label map.

    What ``Activationsd -> Invertd -> AsDiscreted`` does, for the common case where the preprocessing
    only reoriented (``Orientationd``), resampled (``Spacingd``), cropped and padded: the voxel map
    between the two grids is then a signed axis permutation with a scale and a shift per axis, so
    trilinear interpolation splits into three 1D passes, and only the part of the source grid the network
    grid covers is computed (the rest is background). Two classes: the tumour probability (softmax of
    the logits, channel 1) is interpolated linearly and thresholded at 0.5, which equals interpolating
    both probabilities and taking the argmax; more classes: argmax labels, nearest neighbour. On a
    512 x 512 x 300 CT this takes about a second where ``Invertd`` of two float channels takes ~20 s.

    The grids come from the metadata MONAI carries: the prediction's ``affine`` (network grid) and the
    source image's ``original_affine`` and ``spatial_shape`` (as loaded). A map that is not axis-aligned
    (a preprocessing step that rotates) is refused with an error naming the file; use ``Invertd`` there.

    Args:
        keys: prediction key(s): logits ``(C, I', J', K')`` on the network grid (a ``MetaTensor``).
        source_key: the image key whose metadata describes the source grid.
        softmax: the prediction holds logits (True) or probabilities (False).

    Output: ``(1, I, J, K)`` uint8 labels on the source grid, in the loaded voxel order.
    """

    def __init__(self, keys: KeysCollection = "pred", source_key: str = "image", softmax: bool = True) -> None:
        super().__init__(keys)
        self.source_key, self.softmax = source_key, softmax

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        meta = d[self.source_key].meta
        src_aff = np.asarray(meta["original_affine"], dtype=float)
        shape = tuple(int(n) for n in np.asarray(meta["spatial_shape"]).ravel()[:3])
        for key in self.key_iterator(d):
            pred = d[key]
            net_aff = np.asarray(pred.affine, dtype=float)
            d[key] = MetaTensor(torch.from_numpy(self._labels(pred, net_aff, src_aff, shape, meta))[None],
                                affine=torch.as_tensor(src_aff))
        return d

    def _labels(self, pred: torch.Tensor, net_aff: np.ndarray, src_aff: np.ndarray, shape: tuple, meta) -> np.ndarray:
        m = np.linalg.inv(net_aff) @ src_aff  # source voxel -> network voxel
        rot = m[:3, :3]
        perm = np.argmax(np.abs(rot), axis=0)  # network axis of each source axis
        off_axis = rot.copy()
        off_axis[perm, np.arange(3)] = 0.0
        if len(set(perm.tolist())) != 3 or np.abs(off_axis).max() > 1e-4 * np.abs(rot).max():
            raise ValueError(f"{meta.get('filename_or_obj')}: the network grid is rotated against the source grid; "
                             "ResampleToSourced handles axis-aligned resampling only (use Invertd)")
        x = pred.detach().float()
        if x.shape[0] == 2:
            vol = (torch.softmax(x, 0)[1] if self.softmax else x[1]).numpy()
            linear = True
        else:
            vol = x.argmax(0).numpy().astype(np.uint8)
            linear = False
        vol = np.transpose(vol, perm)  # now axis a of vol runs along source axis a
        out = np.zeros(shape, np.uint8)
        coords, box = [], []
        for a in range(3):
            c = rot[perm[a], a] * np.arange(shape[a]) + m[perm[a], 3]
            inside = np.flatnonzero((c > -0.5) & (c < vol.shape[a] - 0.5))
            if inside.size == 0:
                return out
            box.append(slice(inside[0], inside[-1] + 1))
            coords.append(c[inside[0]: inside[-1] + 1])
        for a in range(3):
            vol = _resample_axis(vol, coords[a], a, linear)
        out[tuple(box)] = (vol > 0.5) if linear else vol
        return out


def _resample_axis(vol: np.ndarray, coords: np.ndarray, axis: int, linear: bool) -> np.ndarray:
    """``vol`` sampled at fractional indices ``coords`` along ``axis`` (linear, or nearest; edges clamped)."""
    n = vol.shape[axis]
    if not linear:
        return np.take(vol, np.clip(np.rint(coords), 0, n - 1).astype(np.intp), axis=axis)
    c = np.clip(coords, 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
    w = (c - i0).astype(np.float32)
    shape = [1] * vol.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    lo = np.take(vol, i0, axis=axis)
    hi = np.take(vol, np.minimum(i0 + 1, n - 1), axis=axis)
    return lo * (1 - w) + hi * w


# ------------------------------------------------------------------------------------- brain MRI (2D)
# Stacks of 2D slices are arrays (C, W, H, N) in MONAI's (column, row) order with an LPS-aligned affine
# diag(-1, -1, 1): a slice's columns run from the patient's right to left and its rows from anterior to
# posterior, as radiological slices are displayed. A volume oriented to "LPS" lines up with them, so one
# 2D network serves slice folders and 3D volumes cut into axial slices.
SLICE_STACK_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


class LoadBrainImaged(MapTransform):
    """Load a stack of 2D slices or a 3D volume (one or several modality files) as ``(C, W, H, N)``.

    * ``data[key]`` a slice file or a list of slice files (TIFF/PNG/JPEG, read by
      :func:`monai_pipeline.data.read_slice`): the slices stacked along the last axis, a ``MetaTensor``
      with affine diag(-1, -1, 1) and ``meta["slice_files"]`` listing the files, one per line (a string, so
      stacks of different depth still batch; ``filename_or_obj`` is the first).
    * ``data[key]`` a volume or a list of volumes (one per modality, on one grid): MONAI's ``LoadImage``
      with the files stacked as channels; orient with ``Orientationd(axcodes="LPS")`` afterwards.

    Args:
        keys: keys to load.
        channels: keep only these channels (e.g. ``[1]`` for FLAIR in the LGG RGB slices); None keeps all.
        label: the key holds tumour masks: one channel, whole tumour ``> 0`` as 0/1 (float32).
    """

    def __init__(self, keys: KeysCollection, channels: Sequence[int] | None = None, label: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = None if channels is None else [int(c) for c in channels]
        self.label = label

    def _load(self, value) -> MetaTensor:
        from monai.transforms import LoadImage

        from monai_pipeline.data import is_slice_file, read_slice

        files = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        if files and all(is_slice_file(f) for f in files):
            arrays = [read_slice(f, mask=self.label) for f in files]
            arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
            stack = np.stack([a.transpose(2, 1, 0) for a in arrays], axis=-1)  # (C, W, H, N)
            meta = {"filename_or_obj": str(files[0]), "slice_files": "\n".join(str(f) for f in files),
                    "original_affine": SLICE_STACK_AFFINE.copy(), "spatial_shape": np.asarray(stack.shape[1:])}
            return MetaTensor(torch.as_tensor(stack.astype(np.float32)), affine=torch.as_tensor(SLICE_STACK_AFFINE),
                              meta=meta)
        img = LoadImage(image_only=True, ensure_channel_first=True)(files if len(files) > 1 else files[0])
        return img.float() if not self.label else img

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = self._load(d[key])
            if self.label:
                img = (img[:1] > 0).float()
            elif self.channels is not None:
                if max(self.channels) >= img.shape[0]:
                    raise ValueError(f"{img.meta.get('filename_or_obj')}: asks for channels {self.channels} "
                                     f"of an image with {img.shape[0]}")
                img = img[self.channels]
            d[key] = img
        return d


class BrainNormalized(MapTransform):
    """Normalise each channel of each axial slice over its head/brain pixels (those above the slice minimum).

    Works on ``(C, W, H)`` slices and on ``(C, W, H, N)`` stacks (each of the N slices on its own, so a slice
    is normalised the same way whether it comes alone, in a patient's stack or out of a volume).

    Args:
        keys: image keys.
        mode: ``"zscore"``: (x - mean) / std over the foreground, background set to 0; ``"scale"``: the
            foreground's 0.5-99.5 percentile range mapped to [0, 1], clipped.
        min_pixels: slices with fewer foreground pixels are set to 0 (nothing to normalise).
    """

    def __init__(self, keys: KeysCollection = "image", mode: str = "zscore", min_pixels: int = 16,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("zscore", "scale"):
            raise ValueError(f"mode must be 'zscore' or 'scale', got {mode!r}")
        self.mode, self.min_pixels = mode, int(min_pixels)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 3
        v = x.unsqueeze(-1) if squeeze else x                     # (C, W, H, N)
        c, w, h, n = v.shape
        flat = v.reshape(c, w * h, n).float()
        lo = flat.amin(dim=1, keepdim=True)
        fg = flat > lo + 1e-6
        count = fg.sum(dim=1, keepdim=True)
        ok = count >= self.min_pixels
        if self.mode == "zscore":
            cnt = count.clamp(min=1)
            mean = (flat * fg).sum(dim=1, keepdim=True) / cnt
            var = (((flat - mean) * fg) ** 2).sum(dim=1, keepdim=True) / cnt
            out = torch.where(fg & ok, (flat - mean) / var.sqrt().clamp(min=1e-6), torch.zeros_like(flat))
        else:
            masked = torch.where(fg, flat, torch.full_like(flat, float("nan")))
            q = torch.nanquantile(masked.transpose(1, 2).reshape(-1, w * h), torch.tensor([0.005, 0.995]), dim=1)
            q_lo, q_hi = (t.reshape(c, n).unsqueeze(1) for t in q)
            out = torch.where(fg & ok, ((flat - q_lo) / (q_hi - q_lo).clamp(min=1e-6)).clamp(0, 1),
                              torch.zeros_like(flat))
        out = out.reshape(c, w, h, n)
        return out.squeeze(-1) if squeeze else out

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            out = self._normalise(torch.as_tensor(img))
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = out
        return d


class BrainSlicesd(MapTransform):
    """Keep only the slices (last axis) of a ``(C, W, H, N)`` stack where ``source_key`` shows any head/brain.

    For training only (not invertible): slices above and below the head teach nothing. A slice counts
    when any channel has at least ``min_pixels`` pixels above that channel's volume minimum.
    """

    def __init__(self, keys: KeysCollection, source_key: str = "image", min_pixels: int = 64,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key, self.min_pixels = source_key, int(min_pixels)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        src = torch.as_tensor(d[self.source_key])
        lo = src.reshape(src.shape[0], -1).amin(dim=1).reshape(-1, 1, 1, 1)
        keep = ((src > lo + 1e-6).sum(dim=(1, 2)) >= self.min_pixels).any(dim=0)
        if keep.any() and not keep.all():
            idx = torch.nonzero(keep).flatten()
            for key in self.key_iterator(d):
                d[key] = d[key][..., idx]
        return d
