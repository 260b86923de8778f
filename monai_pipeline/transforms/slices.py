"""Brain MRI transforms: stacks of 2D slices (or volumes cut into axial slices), per-slice normalisation."""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, RandomizableTransform

from monai_pipeline.io.images import LPS_TO_RAS
from monai_pipeline.io.naming import is_slice_file
from monai_pipeline.io.reader import VolumeReader
from monai_pipeline.io.slices import read_slice

__all__ = ["LoadBrainImaged", "BrainNormalized", "BrainSlicesd", "RandCopyChanneld", "SliceContextd", "SLICE_STACK_AFFINE"]

# Stacks of 2D slices are arrays (C, W, H, N) in MONAI's (column, row) order with an LPS-aligned affine
# diag(-1, -1, 1): a slice's columns run from the patient's right to left and its rows from anterior to
# posterior, as radiological slices are displayed. A volume oriented to "LPS" lines up with them, so one
# 2D network serves slice folders and 3D volumes cut into axial slices.
SLICE_STACK_AFFINE = LPS_TO_RAS  # identity in LPS: voxel (i, j, k) = (L, P, S) in mm

logger = logging.getLogger(__name__)


class LoadBrainImaged(MapTransform):
    """Load a stack of 2D slices or a 3D volume (one or several modality files) as ``(C, W, H, N)``.

    * ``data[key]`` a slice file or a list of slice files (TIFF/PNG/JPEG, read by
      :func:`monai_pipeline.io.slices.read_slice`): the slices stacked along the last axis, a ``MetaTensor``
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
        files = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        if files and all(is_slice_file(f) for f in files):
            arrays = [read_slice(f, mask=self.label) for f in files]
            arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
            stack = np.stack([a.transpose(2, 1, 0) for a in arrays], axis=-1)  # (C, W, H, N)
            meta = {"filename_or_obj": str(files[0]), "slice_files": "\n".join(str(f) for f in files),
                    "original_affine": SLICE_STACK_AFFINE.copy(), "spatial_shape": np.asarray(stack.shape[1:])}
            return MetaTensor(torch.as_tensor(stack.astype(np.float32)), affine=torch.as_tensor(SLICE_STACK_AFFINE),
                              meta=meta)
        img = LoadImage(image_only=True, ensure_channel_first=True)(files if len(files) > 1 else files[0],
                                                                   reader=VolumeReader())
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

    Works on ``(C, W, H)`` slices and on ``(C, W, H, N)`` stacks. ``"zscore"`` and ``"scale"`` take each of the
    N slices on its own, so a slice is normalised the same way whether it comes alone, in a patient's stack or
    out of a volume; ``"zscore_volume"`` pools the stack's slices (its statistics are the patient's).

    Args:
        keys: image keys.
        mode: ``"zscore"``: (x - mean) / std over the slice's foreground, background set to 0; ``"scale"``: the
            foreground's 0.5-99.5 percentile range mapped to [0, 1], clipped; ``"zscore_volume"``: as ``"zscore"``
            with one mean and std per channel over the foreground of all N slices (keeps the contrast between
            slices; a lone slice is its own volume, so the same slice alone and in its stack differ).
        min_pixels: slices with fewer foreground pixels are set to 0 (nothing to normalise).
    """

    def __init__(self, keys: KeysCollection = "image", mode: str = "zscore", min_pixels: int = 16,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("zscore", "scale", "zscore_volume"):
            raise ValueError(f"mode must be 'zscore', 'scale' or 'zscore_volume', got {mode!r}")
        self.mode, self.min_pixels = mode, int(min_pixels)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 3
        v = x.unsqueeze(-1) if squeeze else x                     # (C, W, H, N)
        c, w, h, n = v.shape
        flat = v.reshape(c, w * h, n).float()
        lo = flat.amin(dim=1, keepdim=True)
        fg = flat > lo + 1e-6
        count = fg.sum(dim=1, keepdim=True)
        sel = fg & (count >= self.min_pixels)                          # head pixels of slices with enough head
        if self.mode in ("zscore", "zscore_volume"):
            dims = (1, 2) if self.mode == "zscore_volume" else (1,)    # pool the slices, or each on its own
            cnt = sel.sum(dim=dims, keepdim=True).clamp(min=1)
            mean = (flat * sel).sum(dim=dims, keepdim=True) / cnt
            var = (((flat - mean) * sel) ** 2).sum(dim=dims, keepdim=True) / cnt
            out = torch.where(sel, (flat - mean) / var.sqrt().clamp(min=1e-6), torch.zeros_like(flat))
        else:
            masked = torch.where(fg, flat, torch.full_like(flat, float("nan")))
            q = torch.nanquantile(masked.transpose(1, 2).reshape(-1, w * h), torch.tensor([0.005, 0.995]), dim=1)
            q_lo, q_hi = (t.reshape(c, n).unsqueeze(1) for t in q)
            out = torch.where(sel, ((flat - q_lo) / (q_hi - q_lo).clamp(min=1e-6)).clamp(0, 1),
                              torch.zeros_like(flat))
        out = out.reshape(c, w, h, n)
        return out.squeeze(-1) if squeeze else out

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if self.mode == "zscore_volume" and (img.ndim == 3 or img.shape[-1] == 1):
                name = img.meta.get("filename_or_obj", key) if isinstance(img, MetaTensor) else key
                logger.warning("%s: one slice normalised as its own volume (zscore_volume); a model trained on "
                               "whole stacks sees other numbers than it learnt from: give the patient's slices "
                               "together (a folder or a volume)", name)
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


class RandCopyChanneld(RandomizableTransform, MapTransform):
    """Replace channels with a copy of ``source``, as the LGG collection did for a patient's missing sequence.

    In LGG (kaggle_3m) 8 of 55 patients have a FLAIR copy where the pre- or post-contrast T1 is missing; training
    with this transform (``channels`` ``[0, 1, 2]``, ``source`` 1 = FLAIR) shows the network such patients, so it
    can lean on T1 where T1 exists without failing where it does not.

    Args:
        keys: image keys, ``(C, ...)`` (any spatial shape).
        source: index of the channel copied (within its block).
        prob: probability, per channel other than ``source``, that it becomes a copy of ``source``.
        block: channels per slice when the image holds several slices' channels in blocks (the output of
            :class:`SliceContextd`): channel ``c`` of every block becomes a copy of that block's ``source``, one draw
            for all blocks (a patient's missing sequence is missing on every slice). ``None``: one block.
    """

    def __init__(self, keys: KeysCollection = "image", source: int = 1, prob: float = 0.15,
                 block: int | None = None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be within [0, 1], got {prob}")
        self.source, self.channel_prob = int(source), float(prob)
        self.block = None if block is None else int(block)
        self._copy: list[int] = []

    def randomize(self, num_channels: int) -> None:
        draws = self.R.random_sample(num_channels)
        self._copy = [c for c in range(num_channels) if c != self.source and draws[c] < self.channel_prob]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        first = next(iter(self.key_iterator(d)), None)
        if first is None:
            return d
        total = d[first].shape[0]
        channels = self.block or total
        if total % channels:
            raise ValueError(f"an image of {total} channels is not made of blocks of {channels}")
        if not 0 <= self.source < channels:
            raise ValueError(f"source channel {self.source} does not exist in an image of {channels} channels")
        self.randomize(channels)
        for key in self.key_iterator(d):
            if self._copy:
                img = d[key].clone()
                for start in range(0, total, channels):
                    img[[start + c for c in self._copy]] = img[start + self.source].clone()
                d[key] = img
        return d


class SliceContextd(MapTransform):
    """Give each axial slice its neighbours as channels (2.5D input to a 2D network).

    ``(C, W, H, N)`` becomes ``(C * (2k + 1), W, H, N)``: channel block ``j`` (``C`` channels each, ``j`` = 0..2k)
    of slice ``n`` is slice ``n + j - k`` of the stack, so block ``k`` is the slice itself. At the ends of the
    stack the nearest slice stands in for a missing neighbour (slice 0 for slice -1). A lone slice ``(C, W, H)``
    is its own neighbour: ``(C * (2k + 1), W, H)``. Slices are neighbours in stack order (a slice folder's
    ``<patient>_<n>`` order, a volume's axial order), whatever the slice spacing. The spatial shape and the
    meta data do not change, so predictions invert through the other transforms as before.

    Args:
        keys: image keys (not labels: a label stays one slice).
        context: ``k``, neighbours on each side (0: unchanged).
    """

    def __init__(self, keys: KeysCollection = "image", context: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(context) < 0:
            raise ValueError(f"context must be 0 or more slices, got {context}")
        self.context = int(context)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.context == 0:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            x = torch.as_tensor(img)
            if x.ndim == 3:
                out = x.repeat(2 * self.context + 1, 1, 1)
            else:
                n = x.shape[-1]
                idx = torch.arange(n)
                out = torch.cat([x[..., (idx + j).clamp(0, n - 1)] for j in range(-self.context, self.context + 1)])
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = out
        return d
