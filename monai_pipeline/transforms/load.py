"""Loading volumes: MONAI's ``LoadImaged`` with the project's one reader and no fallback."""

from __future__ import annotations

from typing import Any, Mapping

from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImaged

from monai_pipeline.io.reader import VolumeReader

__all__ = ["LoadVolumed"]


class LoadVolumed(LoadImaged):
    """``LoadImaged`` (same arguments but ``reader``) reading every key through :class:`~monai_pipeline.io.VolumeReader`.

    NIfTI, NRRD, MHA and DICOM series all come as the same array with the same affine for the same scan.
    Given a ``reader``, ``LoadImaged`` falls back to MONAI's per-format readers when it fails; this one does
    not: a volume the project's reader refuses fails with that reader's message (the file and the fault).
    """

    def __init__(self, keys: KeysCollection, **kwargs: Any) -> None:
        kwargs.pop("reader", None)
        super().__init__(keys, reader=VolumeReader, **kwargs)
        self._volume_reader = VolumeReader()

    def __call__(self, data: Mapping, reader: ImageReader | None = None) -> dict:
        return super().__call__(data, reader or self._volume_reader)
