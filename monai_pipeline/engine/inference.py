"""Batch inference: what is left to do, progress and failure isolation, and the mask writer.

The chain (LoadImaged -> ... -> SlidingWindowInferer -> ResampleToSourced or Invertd -> SaveMaskd) is the bundle's
``inference.json``; :func:`monai_pipeline.segment` runs that same config. Over many volumes a run

- resumes: :func:`pending` leaves out the cases whose mask already exists and is complete (checked from
  the headers against the source image, before anything is loaded); ``overwrite`` redoes them all;
- survives bad volumes: a file that fails validation, loading, preprocessing, inference or writing is
  logged with its name and skipped (:class:`InferenceDataset`, :meth:`InferenceProgress.iteration`);
- reports: :class:`InferenceProgress` logs one line per case with its time and a summary at the end
  (written, skipped as done, failed with names);
- splits over processes: under ``torchrun`` (``multi_gpu_inference.json``) rank 0 decides what is pending
  and every rank segments its own share, each case exactly once.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import Dataset, MetaTensor, partition_dataset
from PIL import Image

from monai_pipeline.data.datasets import gather_paths, image_datalist, stack_slices
from monai_pipeline.data.validate import check_something_usable, check_unique_case_ids, image_info
from monai_pipeline.engine.runtime import dist_rank
from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import atomic_write_text
from monai_pipeline.io.dicom import is_dicom_path
from monai_pipeline.io.dicom_seg import write_dicom_seg
from monai_pipeline.io.images import (gzip_trailer_size, is_nifti, nifti_data_bytes, read_image, read_properties, to_numpy,
                                      write_mask_like)
from monai_pipeline.io.naming import IMAGE_SUFFIXES, MASK_SUFFIXES, SLICE_SUFFIXES, case_id, first, is_slice_file, mask_path
from monai_pipeline.io.slices import write_overlay, write_slice_mask_like

__all__ = ["pending", "Pending", "existing_mask_problem", "record_settings", "settings_changes", "settings_path",
           "InferenceDataset", "InferenceProgress", "SaveMaskd", "FAILED_KEY", "fatal_os_error"]

logger = logging.getLogger(__name__)

FAILED_KEY = "inference_error"  # an item that could not be loaded carries this instead of its image
OUTPUT_PATH_KEY = "output_path"  # a pending item's mask path; InferenceDataset copies it into the image's metadata
# errors of the machine, not of one volume: they stop the run (the CLI reports them in one line)
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


# ------------------------------------------------------------------------------------ what is left
def _volume_problem(mask: Path, source: str) -> str | None:
    m, src = read_properties(mask), read_properties(source)
    n = m.ndim
    if m.shape != src.shape[:n] or any(v != 1 for v in src.shape[n:]):
        return f"shape {m.shape} is not the source's {src.shape}"
    if not m.same_grid(src, n):
        return f"geometry differs from the source's ({m.difference(src)})"
    if is_nifti(mask):
        needed = nifti_data_bytes(nib.load(str(mask)))  # header only
        if mask.name.lower().endswith(".gz"):
            isize = gzip_trailer_size(mask)
            if isize != needed % 2**32:
                return f"truncated or corrupt (gzip trailer says {isize} bytes, the header needs {needed})"
        elif mask.stat().st_size < needed:
            return f"truncated ({mask.stat().st_size} bytes, the header needs {needed})"
        return None
    read_image(mask)  # NRRD / MHA: read it (a mask is small); a truncated payload raises
    return None


def _slice_problem(mask: Path, source: str) -> str | None:
    with Image.open(mask) as m, Image.open(source) as s:
        if m.size != s.size:
            return f"size {m.size} is not the source slice's {s.size}"
    with open(mask, "rb") as fh:
        fh.seek(-12, os.SEEK_END)
        if fh.read(12) != b"\0\0\0\0IEND\xaeB`\x82":
            return "truncated PNG (no end chunk)"
    return None


def existing_mask_problem(mask: str | os.PathLike, source: str | os.PathLike,
                          weights: str | os.PathLike | None = None,
                          settings: str | os.PathLike | None = None) -> str | None:
    """Why the existing ``mask`` of ``source`` must be made again, or None when it is complete.

    Masks are written atomically, so a file under its final name was complete when written; this also
    catches one damaged or replaced since, cheaply: the mask's header must give the source header's shape
    and geometry, a ``.nii.gz`` must end with the gzip size field its header implies (a truncated one does
    not), a ``.nii`` must be long enough, a PNG must end with its IEND chunk (NRRD/MHA masks are read
    whole). A mask older than ``weights`` (the model file) was made by another model and is redone; one older
    than ``settings`` (the run's settings file, :func:`record_settings`) was made with other inference settings.
    """
    mask = Path(mask)
    try:
        st = mask.stat()
    except OSError:
        return "missing"
    if st.st_size == 0:
        return "empty file"
    if weights is not None and Path(weights).is_file() and st.st_mtime_ns < Path(weights).stat().st_mtime_ns:
        return f"older than the model weights {weights}"
    if settings is not None and Path(settings).is_file() and st.st_mtime_ns < Path(settings).stat().st_mtime_ns:
        return f"older than the inference settings recorded in {settings}"
    try:
        if mask.name.lower().endswith(".png"):
            return _slice_problem(mask, str(source))
        return _volume_problem(mask, str(source))
    except Exception as err:  # any reader error means: not usable as it is
        detail = " ".join(str(err).split())[-300:] or type(err).__name__
        return f"unreadable ({detail})"


class Pending(list):
    """The validated datalist items still to segment (``{"image", "case_id"}``), plus what was left out.

    Attributes:
        done: cases whose mask already exists and is complete (``case_id``, ``image``, ``mask``).
        rejected: inputs refused by validation (``case_id``, ``image``, ``mask``, ``error``).
        files: every mask path of every case of the input, by case ID (a stack of slices: one per slice, in
            stack order).
        masks: the first of each case's ``files``, by case ID (its one mask, unless a stack of slices).
        order: position of every case in the input, by case ID.

    Each item carries its mask's path as ``OUTPUT_PATH_KEY``: computed once here, it reaches
    :class:`SaveMaskd` through the loaded image's metadata (:class:`InferenceDataset`).
    """

    def __init__(self, items: Iterable[dict] = (), done: list[dict] | None = None,
                 rejected: list[dict] | None = None, files: dict[str, list[str]] | None = None,
                 order: dict[str, int] | None = None) -> None:
        super().__init__(items)
        self.done = done or []
        self.rejected = rejected or []
        self.files = files or {}
        self.order = order or {}

    @property
    def masks(self) -> dict[str, str]:
        return {cid: paths[0] for cid, paths in self.files.items() if paths}


def settings_path(output_dir: str | os.PathLike) -> Path:
    """The file recording the inference settings of ``output_dir``'s masks: ``.<folder>.monai-pipeline.settings.json``
    beside the folder (like its lock, so that the folder holds masks only)."""
    folder = Path(output_dir).resolve()
    return folder.parent / f".{folder.name}.monai-pipeline.settings.json"


def _setting_value(value: Any) -> str:
    if isinstance(value, (type, np.dtype, torch.dtype)):  # a dtype given as an object (``$np.float64``)
        return str(value)
    raise TypeError(f"{value!r} is not a JSON value")


def _settings_text(settings: Mapping[str, Any]) -> str:
    try:
        return json.dumps(settings, sort_keys=True, indent=1, default=_setting_value) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"inference settings must be JSON values (numbers, text, lists, mappings): {err}") from None


def settings_changes(output_dir: str | os.PathLike, settings: Mapping[str, Any]) -> list[str] | None:
    """How ``settings`` differ from those recorded beside ``output_dir`` (:func:`record_settings`): None when they are
    the same values (``1`` and ``1.0`` alike), else one ``"name: old -> new"`` per setting that differs
    (``"no settings recorded"`` when there is no record). Reads only."""
    path = settings_path(output_dir)
    new = json.loads(_settings_text(settings))
    try:
        old_text = path.read_text()
    except OSError:
        return ["no settings recorded"]
    try:
        old = json.loads(old_text)
    except ValueError:
        old = None
    if not isinstance(old, dict):
        return [f"unreadable settings file {path}"]
    changes = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return changes or None


def record_settings(output_dir: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """Record the inference ``settings`` that decide ``output_dir``'s masks (:func:`settings_path`); :func:`pending`
    calls it only when they differ from those recorded (:func:`settings_changes`).

    The file's modification time is then the moment the current settings took over: a mask older than it was made
    with other settings (:func:`existing_mask_problem`), one newer was made with these, so an interrupted run with
    new settings resumes where it stopped and a run with other settings redoes every mask.

    Args:
        output_dir: the masks' folder.
        settings: JSON values only, e.g. ``{"tta_flips": [[0]], "prob_threshold": 0.4}``.

    Returns:
        the file written.
    """
    path = settings_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, _settings_text(settings))
    return path


def _scan(entries: list, output_dir: str | os.PathLike, postfix: str, ext: str, overwrite: bool,
          weights: str | os.PathLike | None,
          settings: Mapping[str, Any] | None = None) -> tuple[list[dict], list[dict], list[str] | None]:
    """Split the inputs into ``(done, todo)`` records by the state of their masks; the third item is how ``settings``
    differ from those recorded (:func:`settings_changes`; None: the same, or no settings given)."""
    check_unique_case_ids(first(e) for e in entries)
    stamp, changes = None, None
    if settings is not None:  # the record is (re)written by pending() once the inputs have passed validation
        stamp = settings_path(output_dir)
        changes = settings_changes(output_dir, settings)
        if changes is not None and not overwrite and Path(output_dir).is_dir() and any(Path(output_dir).iterdir()):
            logger.warning("%s: the inference settings differ from those its masks were made with (%s); every existing "
                           "mask is made again", output_dir, "; ".join(changes))
            overwrite = True
    done, todo = [], []
    for index, entry in enumerate(entries):
        head = first(entry)
        cid = case_id(head)
        # a stack of slices (stack_slices) is done when every slice's mask is
        sources = [str(f) for f in entry] if isinstance(entry, list) and is_slice_file(head) else [head]
        masks = [mask_path(f, output_dir, postfix, ".png" if is_slice_file(f) else ext) for f in sources]
        rec = {"case_id": cid, "image": entry, "mask": str(masks[0]), "masks": [str(m) for m in masks], "index": index}
        problem, mask = ("overwrite" if overwrite else None), masks[0]
        if not overwrite:
            for mask, head in zip(masks, sources):
                problem = existing_mask_problem(mask, head, weights, stamp)
                if problem is not None:
                    break
        if problem is None:
            done.append(rec)
            continue
        if problem not in ("missing", "overwrite"):
            logger.warning("%s: existing mask %s; segmenting %s again", mask, problem, head)
        todo.append(rec)
    return done, todo, changes


def pending(datalist: str | os.PathLike | Iterable, output_dir: str | os.PathLike, postfix: str = "seg",
            ext: str = ".nii.gz", overwrite: bool = False, skip_bad: bool = True, ndim: int = 3,
            slices: bool = False, weights: str | os.PathLike | None = None, distributed: bool = False,
            stacks: bool = False, settings: Mapping[str, Any] | None = None) -> Pending:
    """The inference datalist of the cases still to do: the inputs minus those whose mask is complete.

    Runs before anything is loaded: the done check reads headers only (:func:`existing_mask_problem`),
    and only the remaining inputs are validated (:func:`~monai_pipeline.data.image_datalist`).

    Args:
        datalist: image paths (or lists of modality paths), a folder, or a ``.txt`` list of paths.
        output_dir, postfix, ext: where the masks go: ``<output_dir>/<case>_<postfix><ext>`` (2D slices:
            ``.png``), as :class:`~monai_pipeline.export.SaveMaskd` names them.
        overwrite: segment every input again, complete masks included.
        skip_bad: an input that fails validation is logged and left out (listed in ``Pending.rejected``)
            instead of stopping the run; :class:`~monai_pipeline.data.DataError` only when no input is
            usable and none is done. False: the first bad input raises.
        ndim, slices: as for :func:`~monai_pipeline.data.image_datalist`.
        weights: model file; a mask older than it is redone.
        settings: the inference settings that decide the masks besides the model (JSON values, e.g. the flips,
            the threshold, the component rule). They are recorded beside ``output_dir`` (:func:`record_settings`)
            once the inputs have passed validation; when they differ from those recorded (or none are: masks of an
            older version), every existing mask is redone, and after an interruption a mask older than the record is.
            Under ``distributed``, rank 0 records them once its own share is validated.
        distributed: under an initialised ``torch.distributed`` group, rank 0 decides what is pending (so
            no rank sees another's new masks), and each rank keeps and validates its own share
            (``monai.data.partition_dataset``, no padding: every case exactly once).
        stacks: 2D slice files become one stack per patient (:func:`~monai_pipeline.data.stack_slices`), for a
            model that reads a slice's neighbours; a stack is done when all of its slices' masks are, and a bad
            slice leaves its whole patient out.
    """
    rank, world = dist_rank() if distributed else (0, 1)
    if settings is not None:
        _settings_text(settings)  # every rank: a value JSON cannot hold stops them all, before anything is written
    entries = gather_paths(datalist, IMAGE_SUFFIXES + (SLICE_SUFFIXES if slices else ()))
    if stacks:
        entries = stack_slices(entries)
    if world > 1:
        plan: list[Any] = [_scan(entries, output_dir, postfix, ext, overwrite, weights, settings)
                             if rank == 0 else None]
        dist.broadcast_object_list(plan, src=0)
        done, todo, changes = plan[0]
    else:
        done, todo, changes = _scan(entries, output_dir, postfix, ext, overwrite, weights, settings)
    if rank == 0:
        if done:
            logger.info("resume: %d of %d case(s) already have a complete mask in %s and are skipped "
                        "(overwrite=True redoes them)", len(done), len(entries), output_dir)
        if overwrite:
            logger.info("overwrite: all %d case(s) are segmented again", len(entries))
    total_todo = len(todo)
    if world > 1:
        todo = partition_dataset(todo, num_partitions=world, shuffle=False, even_divisible=False)[rank] \
            if len(todo) >= world else todo[rank:rank + 1]
        logger.info("rank %d of %d: %d of the %d pending case(s)", rank, world, len(todo), total_todo)
    good, rejected = [], []
    for rec in todo:
        if not skip_bad:
            good.append(rec)
            continue
        try:
            image_datalist([rec["image"]], ndim, slices, thorough=False, stacks=stacks)
            good.append(rec)
        except DataError as err:
            rejected.append({**rec, "error": str(err)})
            logger.warning("skipped: %s", err)
    if rejected:
        logger.warning("skipped %d unusable input(s) of %d:\n  %s", len(rejected), len(todo),
                       "\n  ".join(r["error"] for r in rejected))
        if world == 1:
            check_something_usable(len(good) + len(done), [r["error"] for r in rejected])
    items = image_datalist([r["image"] for r in good], ndim, slices, thorough=False, stacks=stacks) if good else []  # strict: raises here
    if settings is not None and changes is not None and rank == 0:  # before any mask of this run is written
        record_settings(output_dir, settings)
    recs = done + todo
    for item, rec in zip(items, good):
        item[OUTPUT_PATH_KEY] = rec["mask"]
    return Pending(items, done=done, rejected=rejected, files={r["case_id"]: r["masks"] for r in recs},
                   order={r["case_id"]: r["index"] for r in recs})


# ------------------------------------------------------------------------------ running, one by one
def _chain(err: BaseException) -> list[BaseException]:
    out = [err]
    while out[-1].__cause__ is not None and len(out) < 50:
        out.append(out[-1].__cause__)
    return out


def fatal_os_error(err: BaseException) -> OSError | None:
    """The machine's own error (disk full or read-only) inside an exception chain MONAI wrapped, as itself."""
    for cause in _chain(err):
        if isinstance(cause, OSError) and cause.errno in _FATAL_ERRNOS:
            return OSError(cause.errno, cause.strerror, cause.filename)
    return None


def _describe(err: BaseException) -> str:
    """One line for an exception raised through MONAI's transform chain: the innermost transform named in
    it and the root cause."""
    chain = _chain(err)
    names = [m.group(1) for e in chain for m in [re.search(r"applying transform <([\w.]+)", str(e))] if m]
    root = chain[-1]
    text = " ".join(str(root).split())[:500] or type(root).__name__
    name = names[-1].rsplit(".", 1)[-1] if names else None
    return f"{name + ': ' if name else ''}{type(root).__name__}: {text}"


class InferenceDataset(Dataset):
    """A :class:`monai.data.Dataset` whose item is a failure record, not an exception, when its transform fails.

    An input that passed validation can still fail to load or preprocess (an unusual voxel type, a file
    changed since). The item becomes ``{"case_id": ..., FAILED_KEY: "<transform>: <error>"}``, which
    :meth:`InferenceProgress.iteration` records as failed, and the run goes on with the next case.

    An item's ``OUTPUT_PATH_KEY`` (its mask path, from :func:`pending`) is copied into the metadata of its
    ``image_key`` MetaTensor, where :class:`SaveMaskd` reads it after inference: the path travels with the image.
    """

    def __init__(self, data: Sequence, transform: Callable | None = None, image_key: str = "image") -> None:
        super().__init__(data, transform)
        self.image_key = image_key

    def _transform(self, index: int):
        try:
            out = super()._transform(index)
            path = self.data[index].get(OUTPUT_PATH_KEY) if isinstance(self.data[index], dict) else None
            image = out.get(self.image_key) if isinstance(out, dict) else None
            if path and isinstance(image, MetaTensor):
                image.meta[OUTPUT_PATH_KEY] = path
            return out
        except Exception as err:
            item = self.data[index]
            message = _describe(err)
            logger.error("%s: loading/preprocessing failed (%s); skipped", first(item["image"]), message)
            return {"case_id": item["case_id"], FAILED_KEY: message}


def _batch_cases(batch: Any) -> list[str]:
    """Case IDs of a batch: its ``case_id`` entries, else the case IDs of its images' source files."""
    if isinstance(batch, dict):
        cid = batch.get("case_id")
        if cid is None:
            names = getattr(batch.get("image"), "meta", {}).get("filename_or_obj", [])
            return [case_id(n) for n in ([names] if isinstance(names, str) else names)]
        return [cid] if isinstance(cid, str) else [str(c) for c in cid]
    if isinstance(batch, list):
        return [c for b in batch for c in _batch_cases(b)]
    return []


class InferenceProgress:
    """Ignite handler of an inference run over many volumes: progress, failure isolation, summary.

    - One log line per case, with its time (loading included) and the expected time left:
      ``case 12/300 lung_012: 8.4 s (eta 0:40:12)``.
    - :meth:`iteration` is the evaluator's ``iteration_update``: it runs the evaluator's own step
      (inference, ``Invertd``, ``SaveMaskd``) and, when that raises, logs the file and the error, records
      the case as failed and lets the run go on. A full or read-only disk still stops the run.
    - :meth:`finish` (the bundle's last ``run`` step) gathers the records of every rank, logs the
      summary (N written, M skipped as done, K failed with their files and errors), writes
      ``failures_file`` (JSON) when given and any failed (and removes a stale one when none did), and
      returns the summary.

    Args:
        cases: the run's datalist, as :func:`pending` returns it (its ``done`` and ``rejected`` are counted).
        failures_file: JSON listing of failed cases, written atomically by rank 0; None: none.
    """

    def __init__(self, cases: Sequence[dict], failures_file: str | os.PathLike | None = None) -> None:
        order = getattr(cases, "order", {})
        files = getattr(cases, "files", {})
        self.failures_file = Path(failures_file) if failures_file else None
        self.records: dict[str, dict] = {}
        for status, recs in [("done", getattr(cases, "done", [])), ("failed", getattr(cases, "rejected", [])),
                             ("pending", cases)]:
            for rec in recs:
                r = {**self._rec(rec, order, files), "status": status}
                if "error" in rec:
                    r["error"] = rec["error"]
                self.records[r["case_id"]] = r
        self.total = len(cases)
        self.count = 0
        self.seconds = 0.0
        self._start = time.perf_counter()
        self._cases: list[str] = []
        self._failed: dict[str, str] = {}
        self.summary: dict | None = None  # set by finish()

    @staticmethod
    def _rec(rec: dict, order: dict, files: dict) -> dict:
        cid = rec.get("case_id") or case_id(first(rec["image"]))
        paths = files.get(cid, rec.get("masks", []))
        return {"case_id": cid, "image": first(rec["image"]), "mask": paths[0] if paths else None, "masks": paths,
                "index": order.get(cid, rec.get("index", 0))}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _batch_started(self, engine) -> None:
        self._start = time.perf_counter()

    def _iteration_started(self, engine) -> None:
        self._cases = _batch_cases(engine.state.batch)
        self._failed = {}

    def iteration(self, engine, batchdata: Any) -> Any:
        """The evaluator's step for one batch, or a recorded failure when the batch cannot be segmented."""
        if isinstance(batchdata, dict) and FAILED_KEY in batchdata:
            for cid, msg in zip(_batch_cases(batchdata), batchdata[FAILED_KEY]):
                self._failed[cid] = msg
            return []
        try:
            return engine._iteration(engine, batchdata)
        except Exception as err:
            fatal = fatal_os_error(err)  # MONAI wraps it in RuntimeErrors
            if fatal is not None:
                raise fatal from err
            message = _describe(err)
            for cid in _batch_cases(batchdata):
                self._failed[cid] = message
                logger.error("%s: segmentation failed (%s); skipped",
                             self.records.get(cid, {}).get("image", cid), message)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return []

    def _iteration_completed(self, engine) -> None:
        elapsed = time.perf_counter() - self._start
        cases = self._cases or ["?"]
        for cid in cases:
            self.count += 1
            rec = self.records.setdefault(cid, {"case_id": cid, "image": cid, "mask": None, "masks": [],
                                                       "index": 1 << 30})
            rec["seconds"] = round(elapsed / len(cases), 2)
            if cid in self._failed:
                err, image = self._failed[cid], str(rec["image"])
                rec.update(status="failed", error=err if err.startswith(image) else f"{image}: {err}")
            else:
                rec["status"] = "written"
        self.seconds += elapsed
        eta = self.seconds / self.count * max(self.total - self.count, 0)
        rank, world = dist_rank()
        who = f"rank {rank}: " if world > 1 else ""
        status = " FAILED" if any(c in self._failed for c in cases) else ""
        logger.info("%scase %d/%d %s: %.1f s%s (eta %s)", who, self.count, self.total, ", ".join(cases), elapsed,
                    status, datetime.timedelta(seconds=round(eta)))

    def finish(self) -> dict:
        """Gather every rank's records, log the summary, write/remove ``failures_file``; return the summary."""
        records = dict(self.records)
        rank, world = dist_rank()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, records)
            records = {}
            for part in gathered:
                for cid, rec in part.items():
                    if rec["status"] != "done" or cid not in records:
                        records[cid] = rec
        cases = sorted(records.values(), key=lambda r: r["index"])
        for rec in cases:
            if rec["status"] == "pending":  # never reached (cannot happen unless the run stopped early)
                rec.update(status="failed", error=f"{rec['image']}: not segmented (the run ended before it)")
        count = {s: sum(r["status"] == s for r in cases) for s in ("written", "done", "failed")}
        files = {s: sum(len(r["masks"]) for r in cases if r["status"] == s) for s in count}  # a stack: one per slice
        failures = [{k: r.get(k) for k in ("case_id", "image", "error")} for r in cases if r["status"] == "failed"]
        summary = {**count, "mask_files": files, "cases": [{k: v for k, v in r.items() if k != "index"} for r in cases],
                   "failures": failures}
        if rank == 0:
            logger.info("inference summary: %d written, %d skipped as done, %d failed", count["written"],
                        count["done"], count["failed"])
            for f in failures:
                logger.error("failed: %s", f["error"])
            if self.failures_file is not None:
                if failures:
                    atomic_write_text(self.failures_file, json.dumps(failures, indent=2) + "\n")
                    logger.info("failed cases listed in %s", self.failures_file)
                elif self.failures_file.is_file():
                    self.failures_file.unlink()  # from an earlier run: nothing failed this time
        self.summary = summary
        return summary


class SaveMaskd:
    """Dictionary transform: write ``data[key]`` with the geometry of the file ``data[source_key]`` came from.

    Use after ``Invertd`` and ``AsDiscreted(argmax=True)`` (or ``ThresholdForegroundd``) so the mask is on the source grid.

    Args:
        keys: key(s) of the mask(s), ``(1, *spatial)`` or ``(*spatial)`` arrays or tensors.
        source_key: key of the image whose ``meta["filename_or_obj"]`` is the source file.
        output_dir: folder for the masks (created).
        output_postfix: appended to the case ID (``lung_001_seg.nii.gz``).
        output_ext: ``.nii.gz`` (default), ``.nii``, ``.nrrd`` or ``.mha``.
        one_hot: the mask is one-hot ``(C, *spatial)``; its argmax over C is written.
        overlay: for slice stacks, also write ``<slice>_overlay.png`` (image with the mask shaded).
        overlay_channel: channel shown in grey in the overlays; None shows the image as stored.
        dicom_seg: when the source is a DICOM series, also write the mask as a DICOM SEG object
            ``<case>_<postfix>.dcm`` beside it (:func:`~monai_pipeline.io.dicom_seg.write_dicom_seg`), before the
            mask itself, so a complete mask file means both were written.
        segment_names: segment name per label value for the DICOM SEG (default ``{1: "tumor"}``).
        algorithm: ``{"name", "version"}`` recorded in the DICOM SEG (:func:`~monai_pipeline.engine.algorithm_id`).

    The mask goes to the path :func:`pending` chose for the case (``meta["output_path"]`` of the image, set by
    :class:`InferenceDataset`); an image without one (another dataset class) gets
    ``<output_dir>/<case>_<postfix><ext>``.

    The source's geometry comes from its validated header (:func:`~monai_pipeline.data.validate.image_info`,
    cached per file), not from another read of the file. A stack of 2D slices (``meta["slice_files"]``, one file per
    line, from :class:`~monai_pipeline.transforms.LoadBrainImaged`) is written slice by slice:
    ``<slice>_<postfix>.png`` (0/255, each slice's own size).
    """

    def __init__(self, keys: Hashable | Sequence[Hashable] = "pred", source_key: str = "image",
                 output_dir: str | os.PathLike = "./eval", output_postfix: str = "seg",
                 output_ext: str = ".nii.gz", one_hot: bool = False, overlay: bool = False,
                 overlay_channel: int | None = None, dicom_seg: bool = True,
                 segment_names: Mapping[int, str] | None = None, algorithm: Mapping[str, str] | None = None) -> None:
        self.dicom_seg, self.segment_names, self.algorithm = dicom_seg, segment_names, algorithm
        self.keys = [keys] if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) else list(keys)
        self.source_key = source_key
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        if not output_ext.startswith("."):
            output_ext = "." + output_ext
        if output_ext.lower() not in MASK_SUFFIXES:
            raise ValueError(f"output_ext must be one of {MASK_SUFFIXES}, got {output_ext!r}")
        self.output_ext = output_ext
        self.one_hot = one_hot
        self.overlay, self.overlay_channel = overlay, overlay_channel

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        src = d[self.source_key]
        meta = getattr(src, "meta", None) or d.get(f"{self.source_key}_meta_dict", {})
        source = meta.get("filename_or_obj")
        if not source:
            raise KeyError(f"SaveMaskd: {self.source_key!r} carries no source file name in its metadata")
        if meta.get("slice_files"):
            return self._save_slices(d, str(meta["slice_files"]).split("\n"))
        for i, key in enumerate(self.keys):
            postfix = self.output_postfix if len(self.keys) == 1 else f"{self.output_postfix}_{key}"
            known = meta.get(OUTPUT_PATH_KEY) if len(self.keys) == 1 else None
            dest = Path(known) if known else mask_path(source, self.output_dir, postfix, self.output_ext)
            mask = d[key].argmax(0) if self.one_hot else d[key]
            if self.dicom_seg and is_dicom_path(source):
                seg = write_dicom_seg(to_numpy(mask).astype(np.uint8), source, dest.with_name(
                    dest.name[: -len(self.output_ext)] + ".dcm"), self.segment_names, self.algorithm)
                d.setdefault("saved_masks", []).append(str(seg))
            write_mask_like(mask, image_info(source, None, thorough=False), dest)
            logger.info("wrote %s", dest)
            d.setdefault("saved_masks", []).append(str(dest))
        return d

    def _save_slices(self, d: dict, files: Sequence[str]) -> dict:
        for key in self.keys:
            mask = to_numpy(d[key].argmax(0) if self.one_hot else d[key])
            mask = mask[0] if mask.ndim == 4 else mask
            if mask.ndim != 3 or mask.shape[-1] != len(files):
                raise ValueError(f"SaveMaskd: mask of shape {mask.shape} does not match a stack of {len(files)} slices")
            for k, source in enumerate(files):
                postfix = self.output_postfix if len(self.keys) == 1 else f"{self.output_postfix}_{key}"
                dest = mask_path(source, self.output_dir, postfix, ".png")
                write_slice_mask_like(mask[..., k], source, dest)
                if self.overlay:
                    write_overlay(mask[..., k], source, mask_path(source, self.output_dir, "overlay", ".png"),
                                  self.overlay_channel)
                d.setdefault("saved_masks", []).append(str(dest))
            logger.info("wrote %d slice masks of %s", len(files), Path(files[0]).parent)
        return d
