"""One MONAI ``ImageReader`` for every volume the pipeline reads: NIfTI, NRRD, MHA and DICOM series.

MONAI picks a reader per format (NibabelReader for NIfTI, ITKReader for NRRD and DICOM), and each builds
its own affine and metadata. This reader hands every format to :func:`monai_pipeline.io.images.read_image`,
so the same scan in any format reaches ``Orientationd``/``Spacingd`` as the same array with the same
voxel-to-RAS affine: the grids cannot diverge between formats. The metadata carries geometry only (no
DICOM attributes, so no patient identity travels in a ``MetaTensor``).

The bundles load with :class:`monai_pipeline.transforms.LoadVolumed` (``LoadImaged`` with this reader only). Only
scalar volumes are read: an RGB or vector image is refused by name.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple

from monai_pipeline.io.dicom import is_dicom_path
from monai_pipeline.io.images import ImageProperties, read_image
from monai_pipeline.io.naming import IMAGE_SUFFIXES

__all__ = ["VolumeReader", "volume_meta"]


def volume_meta(props: ImageProperties) -> dict[str, Any]:
    """MONAI metadata of a volume read on the grid ``props``: ``affine`` and ``original_affine`` (voxel to RAS,
    mm; the direction freed of storage noise by :meth:`ImageProperties.orthonormal`, so the network grid is the
    same from every format), ``spatial_shape``, ``spacing``, ``space`` and ``original_channel_dim``."""
    affine = props.orthonormal().affine
    return {"affine": affine.copy(), "original_affine": affine.copy(), "spatial_shape": np.asarray(props.shape[:3]),
            "spacing": np.asarray(props.spacing[:3]), "space": "RAS",
            "original_channel_dim": float("nan")}


class VolumeReader(ImageReader):
    """Reads volumes (``.nii[.gz]``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) and DICOM series (a folder,
    ``FOLDER#SERIES_UID`` or one of the series' files) through the project's I/O layer.

    ``get_data`` returns the array in voxel order (i, j, k) and :func:`volume_meta`. A list of files (one per
    modality, on one grid) is stacked as channels on a new first axis.
    """

    def __init__(self, **_: Any) -> None:
        super().__init__()

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        return all(str(f).lower().endswith(IMAGE_SUFFIXES) or is_dicom_path(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> list[tuple[np.ndarray, ImageProperties]]:
        out = []
        for f in ensure_tuple(data):
            arr, props = read_image(f)
            if props.components != 1:
                raise ValueError(f"{f}: {props.components} values per voxel (an RGB or vector image), not a scalar "
                                 "volume")
            out.append((arr, props))
        return out

    def get_data(self, img: list[tuple[np.ndarray, ImageProperties]]) -> tuple[np.ndarray, dict]:
        arrays = [arr for arr, _ in img]
        props = img[0][1]
        meta = volume_meta(props)
        if len(img) == 1:
            return arrays[0], meta
        for _, other in img[1:]:
            if not other.same_grid(props):
                raise ValueError(f"modalities on different grids: {other.difference(props, 'the first')}")
        meta["original_channel_dim"] = 0
        return np.stack(arrays, axis=0), meta
