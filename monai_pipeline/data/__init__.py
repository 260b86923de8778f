"""Data stage: validate every input once, read datasets into MONAI datalists, split them by patient.

- :mod:`~monai_pipeline.data.validate`: the input checks (:class:`~monai_pipeline.errors.DataError` naming file and fault);
- :mod:`~monai_pipeline.data.datasets`: MSD, image lists, LIDC-IDRI crops, LGG slice folders, brain volumes;
- :mod:`~monai_pipeline.data.splits`: patient-level random, k-fold and three-way splits;
- :mod:`~monai_pipeline.data.check`: the integrity table of ``monai-pipeline check``;
- :mod:`~monai_pipeline.data.masks`: binary-mask helpers (connected components and the rules that keep them, the
  foreground probability threshold's check).

The dataset functions are re-exported here: bundle configs name them ``monai_pipeline.data.msd_datalist``.
"""

from monai_pipeline.data.datasets import (brain_datalist, brain_test_images, declared_labels, gather_paths,
                                          image_datalist, lgg_datalist, lidc_datalist, lidc_images,
                                          lidc_split, msd_datalist,
                                          msd_test_datalist, read_dataset_json, slice_folder, stack_slices)
from monai_pipeline.data.masks import (STACK_COMPONENT_RULES, check_component_rule, check_foreground_threshold,
                                       component_at, keep_components)
from monai_pipeline.data.splits import kfold_split, split_train_val
from monai_pipeline.data.validate import (check_label_values, check_model_weights, check_pair, image_info,
                                          validate_datalist)
from monai_pipeline.errors import DataError

__all__ = ["DataError", "STACK_COMPONENT_RULES", "brain_datalist", "brain_test_images", "check_component_rule",
           "check_foreground_threshold", "check_label_values", "check_model_weights", "check_pair", "component_at",
           "declared_labels", "gather_paths", "image_datalist", "image_info", "keep_components", "kfold_split",
           "lgg_datalist", "lidc_datalist", "lidc_images", "lidc_split", "msd_datalist", "msd_test_datalist",
           "read_dataset_json", "slice_folder", "split_train_val", "stack_slices", "validate_datalist"]
