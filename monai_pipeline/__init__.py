"""monai-pipeline: CT and MRI tumour segmentation with MONAI, from images to masks that open in 3D Slicer.

Stages (one module each, data flowing one way): :mod:`data` -> :mod:`transforms` -> :mod:`networks` ->
:mod:`training` -> :mod:`inference` -> :mod:`export` -> :mod:`evaluation`. Bundle configs reach them as
``monai_pipeline.<stage>.<name>`` after ``"$import monai_pipeline"``.
"""

__version__ = "0.1.0"

from monai_pipeline import data, evaluation, export, io, networks, training, transforms  # noqa: E402,F401

# `inference`, `bundles`, `demo`, `synthetic` and `cli` are imported on use
