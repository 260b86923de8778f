"""Inference stage: sliding-window segmentation of image files, masks written in each source's geometry.

The chain (LoadImaged -> ... -> SlidingWindowInferer -> ResampleToSourced or Invertd -> SaveMaskd) is the bundle's
``inference.json``; :func:`run_inference` (and :func:`predict`) run that same config. Over many volumes a
run

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
import functools
import json
import logging
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch
from monai.data import Dataset
from monai.inferers import Inferer

from monai_pipeline.bundles import bundle_dir, resolve, run_bundle
from monai_pipeline.data import IMAGE_SUFFIXES, SLICE_SUFFIXES, DataError, _gather_paths, case_id, image_datalist, \
    is_slice_file
from monai_pipeline.export import mask_path
from monai_pipeline.io import atomic_write_text

__all__ = ["predict", "run_inference", "pending", "Pending", "existing_mask_problem", "InferenceDataset",
           "InferenceProgress", "init_distributed", "FAILED_KEY", "PrecisionInferer",
           "resolve_precision", "verifies", "cpu_flags", "cpu_bf16_supported", "cpu_amx_supported"]

logger = logging.getLogger(__name__)

FAILED_KEY = "inference_error"  # an item that could not be loaded carries this instead of its image
# errors of the machine, not of one volume: they stop the run (the CLI reports them in one line)
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


# ------------------------------------------------------------------------------------ what is left
def _first(entry: str | Sequence[str]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def _dist() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _itk_header(path: str | os.PathLike):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header only
    return reader


def _volume_problem(mask: Path, source: str) -> str | None:
    m, s = _itk_header(mask), _itk_header(source)
    m_size, s_size = tuple(m.GetSize()), tuple(s.GetSize())
    n = len(m_size)
    if m_size != s_size[:n] or any(v != 1 for v in s_size[n:]):
        return f"shape {m_size} is not the source's {s_size}"
    if not (np.allclose(m.GetSpacing(), s.GetSpacing()[:n], rtol=1e-5, atol=1e-6)
            and np.allclose(m.GetOrigin(), s.GetOrigin()[:n], atol=1e-3)
            and np.allclose(np.reshape(m.GetDirection(), (n, n)),
                            np.reshape(s.GetDirection(), (len(s_size),) * 2)[:n, :n], atol=1e-4)):
        return "spacing, origin or direction differ from the source's"
    name = mask.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(mask))  # header only
        needed = int(getattr(img.dataobj, "offset", img.header.get_data_offset())) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        if name.endswith(".gz"):
            # a gzip stream ends with the size of its uncompressed data (mod 2**32): a truncated file does not
            with open(mask, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", fh.read(4))[0]
            if isize != needed % 2**32:
                return f"truncated or corrupt (gzip trailer says {isize} bytes, the header needs {needed})"
        elif mask.stat().st_size < needed:
            return f"truncated ({mask.stat().st_size} bytes, the header needs {needed})"
        return None
    import SimpleITK as sitk

    sitk.ReadImage(str(mask))  # NRRD / MHA: read it (a mask is small); a truncated payload raises
    return None


def _slice_problem(mask: Path, source: str) -> str | None:
    from PIL import Image

    with Image.open(mask) as m, Image.open(source) as s:
        if m.size != s.size:
            return f"size {m.size} is not the source slice's {s.size}"
    with open(mask, "rb") as fh:
        fh.seek(-12, os.SEEK_END)
        if fh.read(12) != b"\0\0\0\0IEND\xaeB`\x82":
            return "truncated PNG (no end chunk)"
    return None


def existing_mask_problem(mask: str | os.PathLike, source: str | os.PathLike,
                          weights: str | os.PathLike | None = None) -> str | None:
    """Why the existing ``mask`` of ``source`` must be made again, or None when it is complete.

    Masks are written atomically, so a file under its final name was complete when written; this also
    catches one damaged or replaced since, cheaply: the mask's header must give the source header's shape
    and geometry, a ``.nii.gz`` must end with the gzip size field its header implies (a truncated one does
    not), a ``.nii`` must be long enough, a PNG must end with its IEND chunk (NRRD/MHA masks are read
    whole). A mask older than ``weights`` (the model file) was made by another model and is redone.
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
        masks: mask path of every case of the input, by case ID.
        order: position of every case in the input, by case ID.
    """

    def __init__(self, items: Iterable[dict] = (), done: list[dict] | None = None,
                 rejected: list[dict] | None = None, masks: dict[str, str] | None = None,
                 order: dict[str, int] | None = None) -> None:
        super().__init__(items)
        self.done = done or []
        self.rejected = rejected or []
        self.masks = masks or {}
        self.order = order or {}


def _scan(entries: list, output_dir: str | os.PathLike, postfix: str, ext: str, overwrite: bool,
          weights: str | os.PathLike | None) -> tuple[list[dict], list[dict]]:
    """Split the inputs into ``(done, todo)`` records by the state of their masks."""
    done, todo, seen = [], [], {}
    for index, entry in enumerate(entries):
        first = _first(entry)
        cid = case_id(first)
        if cid in seen:
            raise DataError(f"{first}: case ID '{cid}' is also used by {seen[cid]}; outputs would collide")
        seen[cid] = first
        mask = mask_path(first, output_dir, postfix, ".png" if is_slice_file(first) else ext)
        rec = {"case_id": cid, "image": entry, "mask": str(mask), "index": index}
        problem = "overwrite" if overwrite else existing_mask_problem(mask, first, weights)
        if problem is None:
            done.append(rec)
            continue
        if problem not in ("missing", "overwrite"):
            logger.warning("%s: existing mask %s; segmenting %s again", mask, problem, first)
        todo.append(rec)
    return done, todo


def pending(datalist: str | os.PathLike | Iterable, output_dir: str | os.PathLike, postfix: str = "seg",
            ext: str = ".nii.gz", overwrite: bool = False, skip_bad: bool = True, ndim: int = 3,
            slices: bool = False, weights: str | os.PathLike | None = None, distributed: bool = False) -> Pending:
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
        distributed: under an initialised ``torch.distributed`` group, rank 0 decides what is pending (so
            no rank sees another's new masks), and each rank keeps and validates its own share
            (``monai.data.partition_dataset``, no padding: every case exactly once).
    """
    from monai.data import partition_dataset

    rank, world = _dist() if distributed else (0, 1)
    entries = _gather_paths(datalist, IMAGE_SUFFIXES + (SLICE_SUFFIXES if slices else ()))
    if world > 1:
        import torch.distributed as dist

        plan: list[Any] = [_scan(entries, output_dir, postfix, ext, overwrite, weights) if rank == 0 else None]
        dist.broadcast_object_list(plan, src=0)
        done, todo = plan[0]
    else:
        done, todo = _scan(entries, output_dir, postfix, ext, overwrite, weights)
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
            image_datalist([rec["image"]], ndim, slices)
            good.append(rec)
        except DataError as err:
            rejected.append({**rec, "error": str(err)})
            logger.warning("skipped: %s", err)
    if rejected:
        logger.warning("skipped %d unusable input(s) of %d:\n  %s", len(rejected), len(todo),
                       "\n  ".join(r["error"] for r in rejected))
        if not good and not done and world == 1:
            raise DataError(f"no usable input among {len(rejected)}: " + "; ".join(r["error"] for r in rejected[:3]))
    items = image_datalist([r["image"] for r in good], ndim, slices) if good else []  # strict: raises here
    recs = done + todo
    return Pending(items, done=done, rejected=rejected, masks={r["case_id"]: r["mask"] for r in recs},
                   order={r["case_id"]: r["index"] for r in recs})


# ------------------------------------------------------------------------------ running, one by one
def _chain(err: BaseException) -> list[BaseException]:
    out = [err]
    while out[-1].__cause__ is not None and len(out) < 50:
        out.append(out[-1].__cause__)
    return out


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
    """

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as err:
            item = self.data[index]
            message = _describe(err)
            logger.error("%s: loading/preprocessing failed (%s); skipped", _first(item["image"]), message)
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

    last_summary: ClassVar[dict | None] = None  # the summary of the latest run finished in this process

    def __init__(self, cases: Sequence[dict], failures_file: str | os.PathLike | None = None) -> None:
        masks = getattr(cases, "masks", {})
        order = getattr(cases, "order", {})
        self.failures_file = Path(failures_file) if failures_file else None
        self.records: dict[str, dict] = {}
        for status, recs in [("done", getattr(cases, "done", [])), ("failed", getattr(cases, "rejected", [])),
                             ("pending", cases)]:
            for rec in recs:
                r = {**self._rec(rec, masks, order), "status": status}
                if "error" in rec:
                    r["error"] = rec["error"]
                self.records[r["case_id"]] = r
        self.total = len(cases)
        self.count = 0
        self.seconds = 0.0
        self._start = time.perf_counter()
        self._cases: list[str] = []
        self._failed: dict[str, str] = {}

    @staticmethod
    def _rec(rec: dict, masks: dict, order: dict) -> dict:
        cid = rec.get("case_id") or case_id(_first(rec["image"]))
        return {"case_id": cid, "image": _first(rec["image"]), "mask": masks.get(cid, rec.get("mask")),
                "index": order.get(cid, rec.get("index", 0))}

    def attach(self, engine) -> None:
        from ignite.engine import Events

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
            for cause in _chain(err):  # MONAI wraps it in RuntimeErrors
                if isinstance(cause, OSError) and cause.errno in _FATAL_ERRNOS:
                    raise OSError(cause.errno, cause.strerror, cause.filename) from err
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
            rec = self.records.setdefault(cid, {"case_id": cid, "image": cid, "mask": None, "index": 1 << 30})
            rec["seconds"] = round(elapsed / len(cases), 2)
            if cid in self._failed:
                err, image = self._failed[cid], str(rec["image"])
                rec.update(status="failed", error=err if err.startswith(image) else f"{image}: {err}")
            else:
                rec["status"] = "written"
        self.seconds += elapsed
        eta = self.seconds / self.count * max(self.total - self.count, 0)
        rank, world = _dist()
        who = f"rank {rank}: " if world > 1 else ""
        status = " FAILED" if any(c in self._failed for c in cases) else ""
        logger.info("%scase %d/%d %s: %.1f s%s (eta %s)", who, self.count, self.total, ", ".join(cases), elapsed,
                    status, datetime.timedelta(seconds=round(eta)))

    def finish(self) -> dict:
        """Gather every rank's records, log the summary, write/remove ``failures_file``; return the summary."""
        records = dict(self.records)
        rank, world = _dist()
        if world > 1:
            import torch.distributed as dist

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
        failures = [{k: r.get(k) for k in ("case_id", "image", "error")} for r in cases if r["status"] == "failed"]
        summary = {**count, "cases": [{k: v for k, v in r.items() if k != "index"} for r in cases],
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
        InferenceProgress.last_summary = summary
        return summary


# ------------------------------------------------------------------------------ speed: precision, layout
@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from ``/proc/cpuinfo`` (read once per process; empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_amx_supported() -> bool:
    """Whether this CPU has AMX tiles with bfloat16 (Intel Xeon Sapphire Rapids and later), where oneDNN's
    bf16 kernels are AMX ones."""
    return "amx_bf16" in cpu_flags()


def resolve_precision(precision: str, device: torch.device | str, training: bool = False) -> str:
    """``"auto"`` -> the precision to run in.

    - CUDA: ``"fp16"`` (inference and training; training also uses the trainer's loss scaling);
    - a CPU with native bfloat16: ``"bf16"``, except for **training on a CPU with AMX**, which is ``"fp32"``:
      there oneDNN's AMX bf16 kernels turn the 3D UNet's gradients to NaN at some shapes (LIDC's 8 x 48 x 48
      x 16 batches: NaN at the first step, issue 14; not seen with AVX512-BF16 alone, where the LIDC benchmark
      trains in bf16); explicit ``"bf16"`` still trains in bf16 there, guarded by
      :class:`~monai_pipeline.training.NonFiniteGuard`;
    - any other CPU: ``"fp32"`` (bf16 would be emulated, 10-30x slower).
    """
    device = torch.device(device)
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_bf16_supported():
        return "fp32" if training and cpu_amx_supported() else "bf16"
    return "fp32"


def verifies(precision: str, verify: bool | None = None, training: bool = False) -> bool:
    """Whether a :class:`PrecisionInferer` asked for ``precision`` checks its reduced-precision outputs against
    float32: ``verify`` when given, else only for ``"auto"`` outside training (an explicit choice is the user's)."""
    return (precision == "auto" and not training) if verify is None else bool(verify)


_LAYOUTS = {5: torch.channels_last_3d, 4: torch.channels_last}


def _foreground(logits: torch.Tensor) -> torch.Tensor:
    """Foreground probability ``(B, *spatial)`` of network logits ``(B, C, *spatial)``: 1 - softmax's
    background channel when ``C > 1``, the sigmoid when ``C == 1``."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]


class PrecisionInferer(Inferer):
    """Run another inferer with the network in reduced precision and/or channels-last memory layout.

    MONAI's engines only autocast on CUDA (``amp``); this wrapper autocasts on the CPU too (bfloat16, which
    CPUs with AVX512-BF16/AMX compute natively) and converts each window to ``channels_last_3d`` (the layout
    oneDNN's 3D convolutions are fastest in). Outputs come back as float32 in the default layout, so
    post-processing and losses are unchanged. On 2 CPU cores with AVX512-BF16 the lung bundle's network
    time on a 512 x 512 x 300 CT drops from 2.2 s (fp32) to 1.2 s at the same Dice (0.522 / 0.525;
    ``benchmarks/results/speed_lung_cpu_avx512bf16.json``, ``ablation_big_ct``). As the training inferer it autocasts
    the forward pass (the backward pass follows), with float32 weights and optimiser state.

    **"auto" proves itself** (inference): reduced precision is only kept for an input when it gives the
    float32 answer there. After the reduced-precision run, the window (``roi_size`` of the wrapped inferer,
    the whole input for others) centred on the most confident foreground voxel of that output is run
    again both ways: in reduced precision as a batch of the inferer's ``sw_batch_size`` copies (the shapes
    whose kernels the run used; issue 14's failures followed the batch shape), in float32 alone; the result
    is kept only when both outputs are finite, float32 finds foreground in that window (an all-background
    window proves nothing, so it never passes unless ``verify_background``), and the
    foreground probabilities differ by at most ``verify_tolerance`` at every voxel of the window. Otherwise
    the input is segmented again in float32, with one log line saying why. ``checked`` counts inputs kept
    in reduced precision, inputs redone in float32, and small inputs run in float32 directly: the check costs
    one window batch in reduced precision and one window in float32 per input (measured in the lung bundle's
    docs), more than a float32 run of an input of at most ``sw_batch_size + 2`` windows, which therefore runs
    in float32 straight away (one log line says so). A rejected input costs a float32 run more.

    Args:
        inferer: the inferer to wrap (``SlidingWindowInferer``, ``SimpleInferer``...).
        precision: ``"auto"`` (see :func:`resolve_precision`), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: convert network and inputs to channels-last (``channels_last_3d`` for volumes,
            ``channels_last`` for 2D slices).
        device: where the network runs (for ``"auto"``).
        training: the trainer's inferer (``"auto"`` resolves for training; no output check, the trainer's
            :class:`~monai_pipeline.training.NonFiniteGuard` checks loss and gradients instead).
        verify: check reduced-precision outputs against float32 as above (default: for ``"auto"``, not in
            training). An explicit ``"bf16"``/``"fp16"`` is the user's choice and is not checked by default.
        verify_tolerance: largest foreground-probability difference accepted at a voxel (0-1).
        verify_background: accept a check window in which float32 finds no foreground.
    """

    def __init__(self, inferer: Inferer, precision: str = "auto", channels_last: bool = True,
                 device: torch.device | str = "cpu", training: bool = False, verify: bool | None = None,
                 verify_tolerance: float = 0.1, verify_background: bool = False) -> None:
        super().__init__()
        self.inferer = inferer
        self.device = torch.device(device)
        self.requested = precision
        self.precision = resolve_precision(precision, self.device, training)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_bf16_supported():
            logger.warning("precision bf16 on a CPU without AVX512-BF16/AMX: bfloat16 is emulated there; training "
                           "measured 5.6x slower than float32 on 32 x 32 x 16 patches (benchmarks/results/"
                           "train_precision_lung.json) and 10-30x on larger ones; use precision 'auto' or 'fp32'")
        self.channels_last = bool(channels_last)
        self.verify = verifies(precision, verify, training)
        self.verify_tolerance = float(verify_tolerance)
        self.verify_background = bool(verify_background)
        self.checked = {"kept": 0, "fp32": 0, "fp32_direct": 0}
        self._said_direct = False
        self._converted: set[int] = set()

    @property
    def can_fall_back(self) -> bool:
        """Whether the precision was chosen by ``"auto"`` (so float32 may replace it when it fails)."""
        return self.requested == "auto"

    def fall_back(self) -> None:
        """Run in float32 from now on (the trainer's :class:`~monai_pipeline.training.NonFiniteGuard` calls it)."""
        self.precision = "fp32"

    def _network(self, network: Callable) -> Callable:
        if not (self.channels_last and isinstance(network, torch.nn.Module)):
            return network
        if id(network) not in self._converted:
            with torch.no_grad():  # 3D kernels channels_last_3d, 2D kernels channels_last; the same Parameters
                for p in network.parameters():
                    if p.ndim in _LAYOUTS:
                        p.data = p.data.contiguous(memory_format=_LAYOUTS[p.ndim])
            self._converted.add(id(network))

        def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if x.ndim in _LAYOUTS:
                x = x.contiguous(memory_format=_LAYOUTS[x.ndim])
            return network(x, *args, **kwargs)

        return run

    def _autocast(self, device_type: str):
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device_type, dtype=dtype)

    def _fp32(self, inputs: torch.Tensor, net: Callable, *args: Any, **kwargs: Any) -> Any:
        """The wrapped inferer in float32, even inside a caller's autocast (MONAI's engines autocast the whole
        inferer call when ``amp`` is on)."""
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            return _to_float(self.inferer(inputs, net, *args, **kwargs))

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        net = self._network(network)
        if self.precision == "fp32":
            return self._fp32(inputs, net, *args, **kwargs)
        if self.verify and (windows := self._windows(inputs)) <= self._worth_checking():
            self.checked["fp32_direct"] += 1  # the check would cost more than the float32 run it could save
            logger.debug("precision auto: float32 directly for an input of %d windows", windows)
            if not self._said_direct:
                self._said_direct = True
                logger.info("precision auto: inputs of up to %d sliding windows (this one: %d) run in float32 "
                            "directly: checking %s against float32 would cost more than float32 itself",
                            self._worth_checking(), windows, self.precision)
            return self._fp32(inputs, net, *args, **kwargs)
        with self._autocast(inputs.device.type):
            out = _to_float(self.inferer(inputs, net, *args, **kwargs))
        if not self.verify:
            return out
        reason = self._disproved(inputs, net, out, args, kwargs)
        if reason is None:
            self.checked["kept"] += 1
            return out
        self.checked["fp32"] += 1
        logger.info("precision auto: %s not used for this input (%s); segmented in float32", self.precision, reason)
        return self._fp32(inputs, net, *args, **kwargs)

    def _roi(self, spatial: Sequence[int]) -> list[int]:
        from monai.utils import ensure_tuple_rep

        roi = getattr(self.inferer, "roi_size", None) or spatial
        roi = ensure_tuple_rep(roi, len(spatial))  # MONAI takes one int for every dimension too
        return [s if (r is None or int(r) <= 0) else int(r) for r, s in zip(roi, spatial)]

    def _windows(self, inputs: torch.Tensor) -> int:
        """How many windows the wrapped inferer runs over ``inputs`` (as MONAI's sliding window places them;
        1 for an inferer without ``roi_size``)."""
        if getattr(self.inferer, "roi_size", None) is None:
            return 1
        from monai.utils import ensure_tuple_rep

        spatial = inputs.shape[2:]
        overlaps = ensure_tuple_rep(getattr(self.inferer, "overlap", 0.25), len(spatial))
        count = 1
        for r, s, overlap in zip(self._roi(spatial), spatial, overlaps):
            s = max(s, r)  # the sliding window pads a smaller input up to the window
            step = r if r == s else max(1, int(r * (1 - overlap)))
            count *= 1 if s <= r else -(-(s - r) // step) + 1
        return count

    def _worth_checking(self) -> int:
        """The most windows an input may have and still run in float32 directly. Checking costs one window batch
        in reduced precision and one float32 window on top of the reduced-precision pass; float32 windows take
        about twice as long as bf16 ones (AVX512-BF16), so up to ``sw_batch_size + 2`` windows the float32 run is
        the cheaper way to the float32 answer (LIDC's nodule crops, SimpleInferer's whole inputs)."""
        return self._sw_batch() + 2

    def _sw_batch(self) -> int:
        return max(1, int(getattr(self.inferer, "sw_batch_size", 1)))

    def _window(self, image: torch.Tensor, centre: Sequence[int]) -> torch.Tensor:
        """The ``roi_size`` window of ``image`` (1, C, *spatial) around ``centre``, padded as the sliding
        window pads an input smaller than the window (symmetrically, with zeros)."""
        spatial = image.shape[2:]
        roi = self._roi(spatial)
        index = [slice(None), slice(None)]
        pad: list[int] = []
        for c, r, s in zip(centre, roi, spatial):
            start = min(max(0, int(c) - r // 2), max(0, s - r))
            index.append(slice(start, start + r))
            extra = max(0, r - s)
            pad = [extra // 2, extra - extra // 2] + pad  # torch's pad lists the last dimension first
        window = image[tuple(index)]
        return torch.nn.functional.pad(window, pad) if any(pad) else window

    def _disproved(self, inputs: torch.Tensor, net: Callable, out: Any, args: tuple, kwargs: dict) -> str | None:
        """Why the reduced-precision ``out`` cannot be kept (see the class docstring), or None."""
        if not isinstance(out, torch.Tensor) or out.ndim != inputs.ndim or out.shape[0] != inputs.shape[0]:
            return "an output that cannot be checked"
        if not bool(torch.isfinite(out).all()):
            return "non-finite output"
        prob = _foreground(out)
        b, *centre = np.unravel_index(int(torch.argmax(prob)), tuple(prob.shape))
        window = self._window(inputs[b:b + 1], centre)
        batch = window.expand(self._sw_batch(), *window.shape[1:]).contiguous()  # the batch shape the run's kernels saw
        with torch.no_grad():
            with self._autocast(inputs.device.type):
                low = net(batch, *args, **kwargs)
            with torch.autocast(device_type=inputs.device.type, enabled=False):
                high = net(window, *args, **kwargs)  # the reference: float32 is trusted at any batch size
        if not (isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)):
            return "a network output that cannot be checked"
        if not bool(torch.isfinite(low).all()):
            return "non-finite output in the check window"
        p_low, p_high = _foreground(low), _foreground(high)  # (n, ...) against (1, ...): every copy is compared
        if float(p_high.max()) < 0.5 and not self.verify_background:
            return "no foreground in float32 in its most confident window, so nothing proves it"
        diff = float((p_low - p_high).abs().max())
        if diff > self.verify_tolerance:
            return (f"foreground probability off by up to {diff:.3f} (> {self.verify_tolerance}) in its most "
                    "confident window")
        return None

    def __repr__(self) -> str:
        return (f"PrecisionInferer({self.inferer!r}, precision={self.precision!r}, channels_last={self.channels_last}, "
                f"verify={self.verify})")


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float().contiguous() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out


def init_distributed(timeout_hours: float = 24.0) -> torch.device:
    """Join torchrun's process group (NCCL on GPUs, gloo on the CPU) and return this rank's device.

    Ranks of an inference run finish at different times and wait for each other at the end (summary,
    barrier), so collectives get a long timeout instead of the default 10-30 minutes.
    """
    from monai_pipeline.training import init_distributed as join

    return join(timeout_hours=timeout_hours)


# --------------------------------------------------------------------------------------- entry points
def run_inference(images: str | os.PathLike | Iterable[str | os.PathLike], ckpt_dir: str | os.PathLike,
                  output_dir: str | os.PathLike, bundle: str = "lung", output_ext: str = ".nii.gz",
                  overlays: Sequence[str | os.PathLike] = (), distributed: bool = False, **overrides: Any) -> dict:
    """Segment ``images`` with ``<ckpt_dir>/model.pt`` through the bundle's inference config; return its summary.

    Args:
        images: image files, a folder of images, or a ``.txt`` file listing paths; for the brain bundle
            also 2D slice images (TIFF/PNG/JPEG). Lists of files are one case of several modalities.
        ckpt_dir: folder holding ``model.pt``.
        output_dir: where ``<case>_<postfix><ext>`` masks go (uint8, source shape/spacing/origin/direction);
            slices give ``<slice>_<postfix>.png`` (0/255, each slice's size).
        bundle: bundle name or folder.
        output_ext: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha`` (volumes).
        overlays: extra config files merged after the bundle's.
        distributed: add the bundle's ``multi_gpu_inference.json`` (launch under ``torchrun``).
        overrides: bundle config ids: ``overwrite=True`` (redo complete masks), ``skip_bad_inputs``,
            ``failures_file``, ``patch_size``, ``device``...

    Returns:
        :meth:`InferenceProgress.finish`'s summary: counts ``written``, ``done``, ``failed``, per-case
        ``cases`` (in input order, with ``status``, ``mask``, ``seconds``, ``error``) and ``failures``.

    Raises:
        DataError: no input is usable (and none is done), or a bad input when ``skip_bad_inputs`` is False.
        FileNotFoundError: no ``model.pt`` (reported after any input error).
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
    weights = Path(ckpt_dir) / "model.pt"
    overrides = {**overrides, "datalist": datalist, "ckpt_dir": str(ckpt_dir), "output_dir": str(output_dir),
                 "output_ext": output_ext}
    if not weights.is_file():
        resolve(bundle, "inference", ["data"], overlays, **overrides)  # a bad input is the first thing to report
        raise FileNotFoundError(f"{weights}: model weights not found; train first or point ckpt_dir at a trained model")
    InferenceProgress.last_summary = None
    try:
        run_bundle(bundle, "inference", overlays, **overrides)
    except RuntimeError as err:  # MONAI's config machinery wraps a full disk: report it as itself
        for cause in _chain(err):
            if isinstance(cause, OSError) and cause.errno in _FATAL_ERRNOS:
                raise OSError(cause.errno, cause.strerror, cause.filename) from None
        raise
    summary = InferenceProgress.last_summary
    if summary is None:
        raise RuntimeError("the inference config did not report a summary (is InferenceProgress.finish in its run?)")
    return summary


def predict(images: str | os.PathLike | Iterable[str | os.PathLike], ckpt_dir: str | os.PathLike,
            output_dir: str | os.PathLike, bundle: str = "lung", output_ext: str = ".nii.gz",
            overlays: Sequence[str | os.PathLike] = (), **overrides: Any) -> list[Path]:
    """Segment ``images`` (see :func:`run_inference`); return the mask paths of the cases that have one now
    (written by this run or complete from an earlier one), in input order. Failed cases are logged."""
    summary = run_inference(images, ckpt_dir, output_dir, bundle, output_ext, overlays, **overrides)
    return [Path(rec["mask"]) for rec in summary["cases"] if rec["status"] != "failed" and rec["mask"]]
