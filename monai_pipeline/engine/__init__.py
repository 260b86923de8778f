"""Engine: how runs execute (device, precision, processes), checkpoints, training guards and batch inference.

- :mod:`~monai_pipeline.engine.runtime`: device, workers, torchrun's process group;
- :mod:`~monai_pipeline.engine.precision`: ``precision auto`` and :class:`PrecisionInferer`;
- :mod:`~monai_pipeline.engine.checkpoints`: atomic saving, latest checkpoint, resume;
- :mod:`~monai_pipeline.engine.contract`: the model's contract (``model.contract.json`` beside ``model.pt``): written
  with the weights, read back by inference, evaluation and export, overrides that contradict it refused;
- :mod:`~monai_pipeline.engine.training`: the non-finite guard and the saved validation state;
- :mod:`~monai_pipeline.engine.inference`: pending work, progress and failure isolation, the mask writer;
- :mod:`~monai_pipeline.engine.tta`: flip test-time augmentation around any inferer.

Bundle configs name these as ``monai_pipeline.engine.<Name>``.
"""

from monai_pipeline.engine.checkpoints import (CheckpointSaver, attach_handlers, latest_checkpoint, remove_partial_files,
                                               resume_handlers)
from monai_pipeline.engine.contract import (SCHEMA_VERSION, ModelContract, check_contract, contract_conflicts,
                                            contract_network, contract_path, contract_value, file_sha256,
                                            network_definition, new_contract, read_contract, write_contract)
from monai_pipeline.engine.inference import (FAILED_KEY, InferenceDataset, InferenceProgress, Pending, SaveMaskd,
                                             existing_mask_problem, pending)
from monai_pipeline.engine.precision import (PrecisionInferer, cpu_amx_supported, cpu_bf16_supported, cpu_flags,
                                             precision_setting, resolve_precision, verifies)
from monai_pipeline.engine.runtime import (algorithm_id, default_device, default_num_workers, dist_rank,
                                           end_distributed, git_revision, init_distributed, rank_zero_only)
from monai_pipeline.engine.tta import FlipInferer
from monai_pipeline.engine.training import (NONFINITE_EXIT_CODE, NonFiniteGuard, NonFiniteTrainingError, ValidationState,
                                            mean_dice_metric)

__all__ = ["CheckpointSaver", "attach_handlers", "latest_checkpoint", "remove_partial_files", "resume_handlers",
           "SCHEMA_VERSION", "ModelContract", "check_contract", "contract_conflicts", "contract_network", "contract_path",
           "contract_value", "file_sha256", "network_definition", "new_contract", "read_contract", "write_contract",
           "FAILED_KEY", "InferenceDataset", "InferenceProgress", "Pending", "SaveMaskd", "existing_mask_problem",
           "pending", "PrecisionInferer", "FlipInferer", "cpu_amx_supported", "cpu_bf16_supported", "cpu_flags",
           "precision_setting", "resolve_precision", "verifies", "default_device", "default_num_workers", "dist_rank",
           "init_distributed", "end_distributed",
           "rank_zero_only", "algorithm_id", "git_revision", "NONFINITE_EXIT_CODE",
           "NonFiniteGuard", "NonFiniteTrainingError", "ValidationState", "mean_dice_metric"]
