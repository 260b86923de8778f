"""Transforms stage: small pieces MONAI lacks, used by the bundles' transform chains.

The chains themselves (LoadImaged -> Orientationd -> Spacingd -> ...) are written in the bundle configs,
MONAI class by MONAI class, so a config reads as the pipeline. Configs name these classes
``monai_pipeline.transforms.<Name>``.

- :mod:`~monai_pipeline.transforms.load`: ``LoadVolumed``, every volume format and DICOM through one reader;
- :mod:`~monai_pipeline.transforms.ct`: body and lung region of a CT;
- :mod:`~monai_pipeline.transforms.slices`: brain MRI slice stacks and their normalisation;
- :mod:`~monai_pipeline.transforms.resample`: predictions back onto the source grid;
- :mod:`~monai_pipeline.transforms.components`: a mask from probabilities: the foreground threshold, then the
  connected components kept, by rule name.
"""

from monai_pipeline.transforms.components import KeepComponentsd, ThresholdForegroundd
from monai_pipeline.transforms.ct import BodyRegion, LungRegion
from monai_pipeline.transforms.load import LoadVolumed
from monai_pipeline.transforms.resample import ResampleToSourced
from monai_pipeline.transforms.slices import (SLICE_STACK_AFFINE, BrainNormalized, BrainSlicesd, LoadBrainImaged,
                                             RandCopyChanneld, SliceContextd)

__all__ = ["LoadVolumed", "BodyRegion", "LungRegion", "ResampleToSourced", "LoadBrainImaged", "BrainNormalized", "BrainSlicesd",
           "RandCopyChanneld", "SliceContextd", "SLICE_STACK_AFFINE", "KeepComponentsd",
           "ThresholdForegroundd"]
