"""Checkpoints: atomic saving, finding the latest complete one, resuming a run from it."""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Events
from ignite.handlers.checkpoint import BaseSaveHandler, DiskSaver
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from monai_pipeline.engine.contract import contract_path, write_contract
from monai_pipeline.engine.runtime import dist_rank
from monai_pipeline.io.atomic import atomic_path

__all__ = ["latest_checkpoint", "CheckpointSaver", "remove_partial_files", "resume_handlers", "attach_handlers"]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint_(?:epoch|iteration)=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The most recently written complete ``checkpoint_epoch=N.pt`` in ``ckpt_dir``, or None.

    Newest by modification time, then by N: a fresh run into a folder that still holds a longer, older
    run's checkpoint resumes from its own state, not the stale one. This project's
    :class:`CheckpointSaver` writes atomically, so a checkpoint file is complete; a file that is not a whole
    zip archive (left by another tool killed mid-write) is skipped with a warning.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(p.stat().st_mtime_ns, int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.search(p.name))]
    for _, _, path in sorted(found, reverse=True):
        if zipfile.is_zipfile(path):
            return path
        logger.warning("%s: incomplete checkpoint (not a whole zip archive), skipped", path)
    return None


class CheckpointSaver(_MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments), writing every file atomically and before removing the file
    it replaces, and with ``contract`` the model's contract beside each file.

    MONAI builds ignite ``DiskSaver``s with ``atomic=False``, so a run killed while saving leaves a truncated
    ``checkpoint_epoch=N.pt`` or ``model.pt`` that a resume would then load. Here each file is written to
    a temporary file in the same folder and renamed over the old one (ignite's ``atomic=True`` path, which
    also keeps group/others read permission): a kill leaves the old file or the new one, never a part.

    ignite's ``Checkpoint`` also removes the file a save replaces *before* writing the new one: a kill in
    between left no checkpoint at all (``n_saved=1``) or no ``model.pt``, and a resumed run whose restored
    state still listed the removed ``model.pt`` died with ``FileNotFoundError`` at its next best metric.
    Here removals wait until the new file is written, a removal of the file just written (MONAI's fixed
    ``key_metric_filename``) is dropped, and a file already gone is not an error.

    Args:
        contract: a model contract (:func:`~monai_pipeline.engine.contract.new_contract`): each ``<stem>.pt`` is
            staged, ``<stem>.contract.json`` is written atomically beside it with the sha256 of the staged file,
            and the file is then renamed into place; when a file is removed, its contract goes with it.
    """

    def __init__(self, *args: Any, contract: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._atomic = True
                ckpt.save_handler = _WriteThenRemove(ckpt.save_handler, contract)


class _WriteThenRemove(BaseSaveHandler):
    """An ignite save handler around ``saver`` that defers each removal until the next file is written, and
    with ``contract`` writes the model's contract beside each file."""

    def __init__(self, saver: DiskSaver, contract: Mapping[str, Any] | None = None) -> None:
        self.saver, self.contract = saver, contract
        self._pending: list[str] = []

    def _path(self, filename: str) -> Path:
        # MONAI's saver may replace ignite's file name with a fixed one (key_metric_filename: model.pt)
        return Path(self.saver.dirname) / (getattr(self.saver, "filename", None) or filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        written = self._path(filename)
        if self.contract is None:
            self.saver(checkpoint, filename, metadata)
        elif dist_rank()[0] == getattr(self.saver, "save_on_rank", 0):
            # the contract goes in place before the weights it describes, then one rename: a contract written
            # after the rename left a kill in between a pair that refused a resume (old contract, new weights)
            with atomic_path(written) as staged:
                torch.save(checkpoint, staged, **self.saver.kwargs)
                with open(staged, "rb+") as fh:
                    os.fsync(fh.fileno())
                write_contract(written, self.contract, content=staged)
        pending, self._pending = self._pending, []
        for old in pending:
            path = self._path(old)
            if path == written:  # replaced in place by the write above
                continue
            if path.exists():
                self.saver.remove(old)
            else:
                logger.warning("%s was already gone when its newer checkpoint replaced it", path)
            contract_path(path).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending.append(filename)


def remove_partial_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files an interrupted atomic save left in ``ckpt_dir`` (ignite's ``tmp*`` names and the
    ``.tmp-<8 hex>-<name>`` files :func:`~monai_pipeline.io.atomic.atomic_path` stages).

    Called at the start of training, once this run holds the folder's lock, so no live writer owns them.
    """
    folder = Path(ckpt_dir)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and re.fullmatch(r"tmp[a-z0-9_]{6,}|\.tmp-[0-9a-f]{8}-.+", p.name):
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
    logger.info("resuming from %s", path)
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).keys()
    missing = sorted(k for k in load_dict if k not in saved and k not in _REQUIRED_STATE)
    if missing:  # written before these parts of the state were saved: they start afresh
        logger.warning("%s holds no %s (an older checkpoint): %s start afresh", path, ", ".join(missing),
                       "they" if len(missing) > 1 else "it")
    load_dict = {k: v for k, v in load_dict.items() if k not in missing}
    handlers: list = [CheckpointLoader(load_path=str(path), load_dict=dict(load_dict), map_location=map_location)]
    scheduler = load_dict.get("lr_scheduler")
    if scheduler is not None and hasattr(scheduler, "T_max"):
        handlers.append(_ScheduleHorizon(scheduler))
    return handlers


_REQUIRED_STATE = ("model", "optimizer", "trainer")  # a checkpoint without these is not one of ours


class _ScheduleHorizon:
    """After a checkpoint is loaded (Events.STARTED), stretch the scheduler's ``T_max`` to ``max_epochs``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def attach(self, engine: Any) -> None:
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
