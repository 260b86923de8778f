"""monai-pipeline: CT and MRI tumour segmentation with MONAI, from images to masks that open in 3D Slicer.

Stages (one module each, data flowing one way): :mod:`data` -> :mod:`transforms` -> :mod:`networks` ->
:mod:`training` -> :mod:`inference` -> :mod:`export` -> :mod:`evaluation`. Bundle configs reach them as
``monai_pipeline.<stage>.<name>`` after ``"$import monai_pipeline"``.
"""

__version__ = "0.1.0"

_STAGES = ("anatomy", "bundles", "check", "cli", "data", "demo", "evaluation", "export", "inference", "io", "networks",
           "report", "synthetic", "training", "transforms", "visualize")


def __getattr__(name: str):
    """Import a stage on first use (``monai_pipeline.training.train`` after ``import monai_pipeline``, as bundle
    configs write it), so that importing the package, and ``monai-pipeline --help``, does not import MONAI."""
    if name in _STAGES:
        import importlib

        return importlib.import_module(f"monai_pipeline.{name}")
    raise AttributeError(f"module 'monai_pipeline' has no attribute {name!r}")
