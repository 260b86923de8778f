"""Training stage: device choice, checkpoints and resume, distributed set-up.

The trainer itself is MONAI's ``SupervisedTrainer`` with ignite handlers, assembled in the bundle's
``train.json``; these helpers are what the configs call where MONAI has no ready-made piece.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["train", "default_device", "default_num_workers", "latest_checkpoint", "resume_handlers", "attach_handlers",
           "init_distributed", "CheckpointSaver"]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint_(?:epoch|iteration)=(\d+)\.pt$")


def default_device(device: str | None = None) -> torch.device:
    """``device`` when given (``"cpu"``, ``"cuda"``, ``"cuda:1"``); otherwise the GPU if one exists, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_num_workers(cores_for_compute: int = 2, most: int = 2) -> int:
    """Data-loading worker processes: none when the machine has only ``cores_for_compute`` cores (workers
    would take them from the network: on 2 CPU cores the lung bundle trains 34 % faster with 0 workers than
    with 2), else up to ``most``. Counts the cores this process may run on (containers, taskset)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(most, cores - cores_for_compute))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The most recently written complete ``checkpoint_epoch=N.pt`` in ``ckpt_dir``, or None.

    Newest by modification time, then by N: a fresh run into a folder that still holds a longer, older
    run's checkpoint resumes from its own state, not the stale one. This project's
    :class:`CheckpointSaver` writes atomically, so a checkpoint file is complete; a file that is not a whole
    zip archive (left by another tool killed mid-write) is skipped with a warning.
    """
    import zipfile

    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(p.stat().st_mtime_ns, int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.search(p.name))]
    for _, _, path in sorted(found, reverse=True):
        if zipfile.is_zipfile(path):
            return path
        logger.warning("%s: incomplete checkpoint (not a whole zip archive), skipped", path)
    return None


def _monai_checkpoint_saver():
    from monai.handlers import CheckpointSaver as _Saver

    return _Saver


class CheckpointSaver(_monai_checkpoint_saver()):
    """MONAI's ``CheckpointSaver`` (same arguments), writing every file atomically.

    MONAI builds ignite ``DiskSaver``s with ``atomic=False``, so a run killed while saving leaves a truncated
    ``checkpoint_epoch=N.pt`` or ``model.pt`` that a resume would then load. Here each file is written to
    a temporary file in the same folder and renamed over the old one (ignite's ``atomic=True`` path, which
    also keeps group/others read permission): a kill leaves the old file or the new one, never a part.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._atomic = True


def remove_partial_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files an interrupted atomic save left in ``ckpt_dir`` (ignite's ``tmp*`` names).

    Called at the start of training, once this run holds the folder's lock, so no live writer owns them.
    """
    folder = Path(ckpt_dir)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and re.fullmatch(r"tmp[a-z0-9_]{6,}", p.name):
                p.unlink()
                removed.append(p)
    if removed:
        logger.info("removed %d partial file(s) of an interrupted save in %s", len(removed), folder)
    return removed


def resume_handlers(resume: bool, ckpt_dir: str | os.PathLike, load_dict: Mapping[str, Any],
                    map_location: Any = "cpu") -> list:
    """Handlers that restore the latest checkpoint of ``ckpt_dir`` when ``resume`` is true.

    Returns ``[CheckpointLoader, ...]`` (model, optimizer, scheduler and trainer state: the run goes on
    from the saved epoch up to the configured ``epochs``; an epoch-based schedule's horizon ``T_max`` is set
    to the new ``epochs`` after loading, so a longer resumed run does not restart its cosine) or ``[]`` when
    not resuming or nothing was saved yet.
    """
    remove_partial_files(ckpt_dir)
    if not resume:
        return []
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        logger.warning("resume asked but no checkpoint in %s: starting from scratch", ckpt_dir)
        return []
    from monai.handlers import CheckpointLoader

    logger.info("resuming from %s", path)
    handlers: list = [CheckpointLoader(load_path=str(path), load_dict=dict(load_dict), map_location=map_location)]
    scheduler = load_dict.get("lr_scheduler")
    if scheduler is not None and hasattr(scheduler, "T_max"):
        handlers.append(_ScheduleHorizon(scheduler))
    return handlers


class _ScheduleHorizon:
    """After a checkpoint is loaded (Events.STARTED), stretch the scheduler's ``T_max`` to ``max_epochs``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        self.scheduler.T_max = engine.state.max_epochs


def attach_handlers(engine, handlers: list) -> list:
    """Attach ``handlers`` to ``engine`` (for handlers that need the engine itself, e.g. its checkpoint).

    Handlers that save or restore the trainer's own state cannot be given to the trainer's constructor
    in a config (that reference would be circular), so the bundle attaches them here before ``run()``.
    """
    for handler in handlers:
        handler.attach(engine)
    return handlers


def init_distributed(backend: str | None = None, timeout_hours: float | None = None) -> torch.device:
    """Initialise ``torch.distributed`` from torchrun's environment and return this rank's device.

    NCCL and ``cuda:<local_rank>`` when GPUs exist, gloo and the CPU otherwise (or as ``backend`` says);
    ``timeout_hours`` sets the collectives' timeout (torch's default when None).
    """
    import datetime

    import torch.distributed as dist

    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        timeout = {"timeout": datetime.timedelta(hours=timeout_hours)} if timeout_hours else {}
        dist.init_process_group(backend=backend, **timeout)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def train(dataset_dir: str | os.PathLike, bundle: str = "lung", overlays: tuple = (), distributed: bool = False,
          tracking: str | None = None, **overrides: Any) -> None:
    """Validate every file of the training and validation datalists, then run the bundle's train workflow.

    The datalists are the bundle's own (``train_datalist``/``val_datalist``, so an overlay such as
    ``configs/lidc_nodules.json`` is checked the same way); a bad file raises
    :class:`~monai_pipeline.data.DataError` before any output is written. ``overrides`` are bundle config
    ids (``epochs``, ``ckpt_dir``, ``output_dir``, ``resume``, ...).
    """
    from monai_pipeline.bundles import resolve, run_bundle

    workflow = "multi_gpu_train" if distributed else "train"
    overrides = {**overrides, "dataset_dir": str(Path(dataset_dir).resolve())}
    resolve(bundle, "train", ["train_datalist", "val_datalist"], overlays, **overrides)
    run_bundle(bundle, workflow, overlays, tracking, **overrides)
