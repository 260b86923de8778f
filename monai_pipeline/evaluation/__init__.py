"""Evaluation stage: metrics, lesions and detection, tumour presence and burden, and the run over folders.

- :mod:`~monai_pipeline.evaluation.metrics`: Dice, IoU, surface metrics, summaries, 2D slice rules;
- :mod:`~monai_pipeline.evaluation.lesions`: lesion tables and matching, FROC, ROC of presence, burden per lung;
- :mod:`~monai_pipeline.evaluation.run`: pairing folders, scoring cases, the written tables.
"""

from monai_pipeline.evaluation.lesions import (FROC_RATES, box_iou, detection_summary, lesion_table, match_lesions,
                                               presence_summary, tumour_burden)
from monai_pipeline.evaluation.metrics import (CASE_METRIC_KEYS, METRIC_RULES, case_metrics, dice, iou, patient_dice,
                                               slice_scores, summarise)
from monai_pipeline.evaluation.run import (LESION_COLUMNS, csv_text, evaluate_case, evaluate_cases, evaluate_folders,
                                           evaluate_predictions, read_metric_details, score_pairs,
                                           score_slice_folders)

__all__ = ["FROC_RATES", "box_iou", "detection_summary", "lesion_table", "match_lesions", "presence_summary",
           "tumour_burden", "CASE_METRIC_KEYS", "METRIC_RULES", "case_metrics", "dice", "iou", "patient_dice",
           "slice_scores", "summarise", "LESION_COLUMNS", "csv_text", "evaluate_case", "evaluate_cases",
           "evaluate_folders", "evaluate_predictions", "read_metric_details", "score_pairs", "score_slice_folders"]
