"""monai-pipeline: CT and MRI tumour segmentation with MONAI, from images to masks that open in 3D Slicer.

Python API (the functions behind the CLI)::

    from monai_pipeline import segment, train, evaluate, import_dicom

Layers, each importing only those below it (an import-linter contract in the tests holds this)::

    app          Python API, bundle runner, CLI, demo, synthetic phantoms
    report       HTML report, plots, 3D render, training curves
    slicer       .seg.nrrd, colour tables, meshes, Slicer folders
    evaluation   metrics, lesions and detection, presence, burden, the run over folders
    engine       device, precision, checkpoints, training guards, batch inference and the mask writer
    networks | transforms | anatomy
    data         input validation, datasets, splits, the integrity check
    io           images with their geometry, slices, naming, atomic writes   (+ errors)

Importing the package imports no stage: each is imported on first use (``monai_pipeline.engine`` after
``import monai_pipeline``, as bundle configs write it), so ``monai-pipeline --help`` does not import MONAI.
Module paths of earlier versions (``monai_pipeline.inference``, ``.training``, ``.export``, ``.bundles``,
``.cli``, ...) still import, as aliases of their new homes (see each bundle's changelog).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.3.0"

_SUBPACKAGES = ("anatomy", "app", "data", "engine", "errors", "evaluation", "io", "networks", "report", "slicer",
                "transforms")
_API = {"segment": "monai_pipeline.app.api", "train": "monai_pipeline.app.api", "evaluate": "monai_pipeline.app.api",
        "import_dicom": "monai_pipeline.app.api", "SegmentationResult": "monai_pipeline.app.api",
        "delineate": "monai_pipeline.app.api", "DelineationResult": "monai_pipeline.app.api",
        "DataError": "monai_pipeline.errors"}
# module paths of version 0.1 -> where their contents live now
ALIASES = {
    "monai_pipeline.inference": "monai_pipeline.engine",
    "monai_pipeline.training": "monai_pipeline.engine",
    "monai_pipeline.export": "monai_pipeline.engine",
    "monai_pipeline.check": "monai_pipeline.data.check",
    "monai_pipeline.visualize": "monai_pipeline.report.plots",
    "monai_pipeline.bundles": "monai_pipeline.app.bundles",
    "monai_pipeline.cli": "monai_pipeline.app.cli",
    "monai_pipeline.demo": "monai_pipeline.app.demo",
    "monai_pipeline.synthetic": "monai_pipeline.app.synthetic",
}

__all__ = ["segment", "train", "evaluate", "import_dicom", "delineate", "SegmentationResult", "DelineationResult",
           "DataError", "__version__"]


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec  # the import system set the alias's spec on the shared module: undo it

    def get_code(self, fullname: str):
        """The target's code, so ``python -m monai_pipeline.cli`` (runpy, torchrun) still runs."""
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Imports an old module path (``monai_pipeline.inference``) as the module that holds its contents now."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(ALIASES[fullname]))
        return None


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.append(_AliasFinder())

# python -m monai.bundle run: a DataError is one "error:" line, as in the project's CLI
from monai_pipeline.errors import report_data_errors_in_bundle_cli as _report_data_errors  # noqa: E402

_report_data_errors()


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"monai_pipeline.{name}")
    if f"monai_pipeline.{name}" in ALIASES:
        return importlib.import_module(f"monai_pipeline.{name}")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'monai_pipeline' has no attribute {name!r}")
