"""The I/O layer: every stage reads and writes files through it.

- :mod:`~monai_pipeline.io.images`: volumes (NIfTI, NRRD, MHA) with one properties object carrying geometry;
- :mod:`~monai_pipeline.io.slices`: 2D slice images and masks;
- :mod:`~monai_pipeline.io.naming`: case IDs, mask paths, pairing of folders by case;
- :mod:`~monai_pipeline.io.atomic`: atomic file writes, folder swaps and folder locks;
- :mod:`~monai_pipeline.io.dicom`: DICOM series (folders of slices) in, with header geometry and pseudonyms;
- :mod:`~monai_pipeline.io.reader`: one MONAI ``ImageReader`` (:class:`VolumeReader`) over all of the above;
- :mod:`~monai_pipeline.io.terminology`: SNOMED CT codes and colours of segment names;
- :mod:`~monai_pipeline.io.dicom_seg`: DICOM SEG out (highdicom);
- :mod:`~monai_pipeline.io.rtstruct`: DICOM RT Structure Sets, read and rasterised on an image's grid;
- :mod:`~monai_pipeline.io.markups`: 3D Slicer markups JSON: point lists in (LPS or RAS), lines out.

Every public name of these modules is available here too (``monai_pipeline.io.write_nifti``); the
modules are imported on first use, so configs that write ``$monai_pipeline.io.lock_folder(...)`` stay cheap.
"""

import importlib

_MODULES = ("atomic", "images", "naming", "slices", "dicom", "reader", "terminology", "dicom_seg", "rtstruct", "markups")


def __getattr__(name: str):
    for module in _MODULES:
        mod = importlib.import_module(f"monai_pipeline.io.{module}")
        if name == module:
            return mod
        if name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module 'monai_pipeline.io' has no attribute {name!r}")
