"""The Python API: the functions behind the CLI and the demo, callable from any interpreter (3D Slicer's
Python console included), as often as wanted in one process.

    from monai_pipeline import segment, train, evaluate, import_dicom

    result = segment("scans/", "runs/lung/models", "masks/")     # -> SegmentationResult
    result.masks                                                  # mask paths, input order
    result.summary["failed"]                                      # counts and per-case records

Each call runs the bundle's own config (``configs/inference.json``, ``train.json``, ``evaluate.json``) through
MONAI's bundle machinery, exactly as ``python -m monai.bundle run`` would; results come back as return values,
never through globals. ``import_dicom`` (CT series + RTSTRUCT -> MSD dataset) is
:func:`monai_pipeline.data.dicom_import.import_dicom`; ``delineate`` (nodules of a whole CT from one point each)
is :func:`monai_pipeline.app.delineate.delineate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from monai_pipeline.app.bundles import bundle_dir, resolve, run_bundle
from monai_pipeline.app.delineate import DelineationResult, delineate
from monai_pipeline.data.dicom_import import import_dicom
from monai_pipeline.data.validate import check_model_weights
from monai_pipeline.engine.inference import fatal_os_error
from monai_pipeline.evaluation.run import evaluate_folders

__all__ = ["segment", "train", "evaluate", "import_dicom", "delineate", "SegmentationResult", "DelineationResult"]


@dataclass
class SegmentationResult:
    """What :func:`segment` did.

    Attributes:
        masks: the mask of every case that has one now (written by this call or complete from an earlier one),
            in input order; a patient's slices stacked for a model with context slices give one mask per slice.
        summary: counts of cases ``written``, ``done`` (skipped: complete mask already there), ``failed``, and
            of their mask files (``mask_files``: the same keys); per-case ``cases`` (in input order: ``case_id``,
            ``image``, ``status``, ``mask`` (the first), ``masks`` (all), ``seconds``, ``error``) and ``failures``.
    """

    masks: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        """The failed cases (``case_id``, ``image``, ``error``)."""
        return list(self.summary.get("failures", []))


def segment(images: str | os.PathLike | Iterable[str | os.PathLike], model_dir: str | os.PathLike,
            output_dir: str | os.PathLike, bundle: str = "lung", output_ext: str = ".nii.gz",
            overlays: Sequence[str | os.PathLike] = (), distributed: bool = False, **overrides: Any) -> SegmentationResult:
    """Segment ``images`` with ``<model_dir>/model.pt`` through the bundle's ``inference.json``.

    The model's settings (spacing, window, channels, network, patch size...) come from its contract,
    ``<model_dir>/model.contract.json``, unless overridden; an override that contradicts a binding entry raises
    :class:`~monai_pipeline.errors.DataError` unless ``contract_override=True``.

    Args:
        images: image files, a folder of images, or a ``.txt`` file listing paths; for the brain bundle
            also 2D slice images (TIFF/PNG/JPEG). A list inside the list is one case of several modalities.
        model_dir: folder holding ``model.pt`` (the bundle's ``ckpt_dir``).
        output_dir: where ``<case>_<postfix><ext>`` masks go (uint8, source shape/spacing/origin/direction);
            slices give ``<slice>_<postfix>.png`` (0/255, each slice's size).
        bundle: bundle short name (``lung``, ``brain``) or folder.
        output_ext: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` (volumes).
        overlays: extra config files merged after the bundle's.
        distributed: add the bundle's ``multi_gpu_inference.json`` (launch under ``torchrun``).
        overrides: bundle config ids: ``overwrite=True`` (redo complete masks), ``skip_bad_inputs``,
            ``failures_file``, ``patch_size``, ``device``...

    Raises:
        DataError: no input is usable (and none is done), or a bad input when ``skip_bad_inputs`` is False, or an
            override contradicts the model's contract.
        DataError: no ``model.pt`` in ``model_dir`` (reported after any input error; the message says to train
            first or where to point ``model_dir``).
        OSError: the disk is full or read-only (the run stops; masks written so far are complete).
    """
    if isinstance(images, (str, os.PathLike)):
        datalist: Any = str(images)
    else:
        datalist = [str(p) if isinstance(p, (str, os.PathLike)) else [str(q) for q in p] for p in images]
    if distributed:
        extra = bundle_dir(bundle) / "configs" / "multi_gpu_inference.json"
        if not extra.is_file():
            raise FileNotFoundError(f"{extra}: bundle {bundle!r} has no multi-process inference config")
        overlays = [str(extra), *overlays]
    weights = Path(model_dir) / "model.pt"
    overrides = {**overrides, "datalist": datalist, "ckpt_dir": str(model_dir), "output_dir": str(output_dir),
                 "output_ext": output_ext}
    if not weights.is_file():
        # a bad input is the first thing to report; nothing is recorded beside output_dir by this check
        resolve(bundle, "inference", ["data"], overlays, **{**overrides, "data#settings": None})
        check_model_weights(model_dir, bundle_dir(bundle))
    try:
        workflow = run_bundle(bundle, "inference", overlays, **overrides)
    except RuntimeError as err:  # MONAI's config machinery wraps a full disk: report it as itself
        fatal = fatal_os_error(err)
        if fatal is not None:
            raise fatal from None
        raise
    summary = workflow.parser.get_parsed_content("progress").summary
    if summary is None:
        raise RuntimeError("the inference config did not report a summary (is progress.finish() in its run?)")
    masks = [Path(m) for rec in summary["cases"] if rec["status"] != "failed" for m in rec["masks"]]
    return SegmentationResult(masks=masks, summary=summary)


def train(dataset_dir: str | os.PathLike, bundle: str = "lung", overlays: Sequence[str | os.PathLike] = (),
          distributed: bool = False, tracking: str | None = None, **overrides: Any) -> Path:
    """Validate every file of the training and validation datalists, then run the bundle's train workflow.

    The datalists are the bundle's own (``train_datalist``/``val_datalist``, after any overlays); a bad file raises
    :class:`~monai_pipeline.errors.DataError` before any output is written. ``overrides`` are bundle config
    ids (``epochs``, ``ckpt_dir``, ``output_dir``, ``resume``, ...).

    Returns:
        the folder holding the trained ``model.pt`` (the run's ``ckpt_dir``).
    """
    workflow = "multi_gpu_train" if distributed else "train"
    overrides = {**overrides, "dataset_dir": str(Path(dataset_dir).resolve())}
    resolve(bundle, "train", ["train_datalist", "val_datalist"], overlays, **overrides)
    run = run_bundle(bundle, workflow, overlays, tracking, **overrides)
    return Path(run.parser.get_parsed_content("ckpt_dir"))


def evaluate(pred_dir: str | os.PathLike, label_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
             postfix: str = "seg", images_dir: str | os.PathLike | None = None,
             prob_dir: str | os.PathLike | None = None, **kwargs: Any) -> dict:
    """Score the masks of ``pred_dir`` (``<case>_<postfix>.*``) against the labels of ``label_dir``.

    With ``out_dir`` the tables are written there (``metrics.csv``/``.json``, ``lesions``, ``detection``,
    ``presence``; with CT ``images_dir`` also lungs and tumour burden). ``kwargs`` go to
    :func:`~monai_pipeline.evaluation.run.evaluate_cases` (``tolerance_mm``, ``resample``, ...).

    Returns:
        ``{"cases", "summary", "detection", "presence", "burden"}``.
    """
    return evaluate_folders(pred_dir, label_dir, out_dir, postfix, images_dir, prob_dir, **kwargs)
