"""Inference stage: sliding-window segmentation of image files, masks written in each source's geometry.

The chain (LoadImaged -> ... -> SlidingWindowInferer -> Invertd -> SaveMaskd) is the bundle's
``inference.json``; :func:`predict` validates the inputs first and then runs that same config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from monai_pipeline.bundles import resolve, run_bundle
from monai_pipeline.data import is_slice_file
from monai_pipeline.export import mask_path

__all__ = ["predict"]


def predict(images: str | os.PathLike | Iterable[str | os.PathLike], ckpt_dir: str | os.PathLike,
            output_dir: str | os.PathLike, bundle: str = "lung", output_ext: str = ".nii.gz",
            overlays: Sequence[str | os.PathLike] = (), **overrides: Any) -> list[Path]:
    """Segment ``images`` with ``<ckpt_dir>/model.pt``; return the written mask paths.

    Args:
        images: image files, a folder of images, or a ``.txt`` file listing paths; for the brain bundle
            also 2D slice images (TIFF/PNG/JPEG). The bundle's own ``data`` config item validates them
            first, before the model is built (a bad file raises :class:`~monai_pipeline.data.DataError`,
            or is skipped and logged where the bundle's inference skips bad inputs).
        ckpt_dir: folder holding ``model.pt``.
        output_dir: where ``<case>_<postfix><ext>`` masks go (uint8, source shape/spacing/origin/direction);
            slices give ``<slice>_<postfix>.png`` (0/255, each slice's size).
        bundle: bundle name or folder.
        output_ext: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` (volumes).
        overlays: extra config files merged after the bundle's.
        overrides: bundle config ids (``patch_size=[64, 64, 32]``, ``device=...``).
    """
    if isinstance(images, (str, os.PathLike)):
        datalist: Any = str(images)
    else:
        datalist = [str(p) if isinstance(p, (str, os.PathLike)) else [str(q) for q in p] for p in images]
    weights = Path(ckpt_dir) / "model.pt"
    overrides = {**overrides, "datalist": datalist, "ckpt_dir": str(ckpt_dir), "output_dir": str(output_dir),
                 "output_ext": output_ext}
    items, postfix = resolve(bundle, "inference", ["data", "output_postfix"], overlays, **overrides)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: model weights not found; train first or point ckpt_dir at a trained model")
    overrides["datalist"] = [d["image"] for d in items]  # validated once, not again by the bundle
    run_bundle(bundle, "inference", overlays, **overrides)
    out = []
    for d in items:
        if isinstance(d["image"], list) and is_slice_file(d["image"][0]):
            out.extend(mask_path(f, output_dir, postfix, ".png") for f in d["image"])
        else:
            out.append(mask_path(d["image"] if isinstance(d["image"], str) else d["image"][0], output_dir, postfix,
                                 output_ext))
    return out
