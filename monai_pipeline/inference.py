"""Inference stage: sliding-window segmentation of image files, masks written in each source's geometry.

The chain (LoadImaged -> ... -> SlidingWindowInferer -> Invertd -> SaveMaskd) is the bundle's
``inference.json``; :func:`predict` validates the inputs first and then runs that same config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from monai_pipeline.bundles import run_bundle
from monai_pipeline.data import image_datalist
from monai_pipeline.export import mask_path

__all__ = ["predict"]


def predict(images: str | os.PathLike | Iterable[str | os.PathLike], ckpt_dir: str | os.PathLike,
            output_dir: str | os.PathLike, bundle: str = "lung", output_ext: str = ".nii.gz",
            overlays: Sequence[str | os.PathLike] = (), **overrides: Any) -> list[Path]:
    """Segment ``images`` with ``<ckpt_dir>/model.pt``; return the written mask paths.

    Args:
        images: image files, a folder of images, or a ``.txt`` file listing paths (validated first:
            a bad file raises :class:`~monai_pipeline.data.DataError` before the model is built).
        ckpt_dir: folder holding ``model.pt``.
        output_dir: where ``<case>_seg<ext>`` masks go (uint8, source shape/spacing/origin/direction).
        bundle: bundle name or folder.
        output_ext: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``.
        overlays: extra config files merged after the bundle's.
        overrides: bundle config ids (``patch_size=[64, 64, 32]``, ``device=...``).
    """
    datalist = [d["image"] for d in image_datalist(images)]
    weights = Path(ckpt_dir) / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: model weights not found; train first or point ckpt_dir at a trained model")
    overrides = {**overrides, "datalist": datalist, "ckpt_dir": str(ckpt_dir), "output_dir": str(output_dir),
                 "output_ext": output_ext}
    run_bundle(bundle, "inference", overlays, **overrides)
    return [mask_path(p, output_dir, overrides.get("output_postfix", "seg"), output_ext) for p in datalist]
