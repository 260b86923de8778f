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

__all__ = ["train", "default_device", "latest_checkpoint", "resume_handlers", "attach_handlers", "init_distributed",
           "load_weights"]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint_(?:epoch|iteration)=(\d+)\.pt$")


def default_device(device: str | None = None) -> torch.device:
    """``device`` when given (``"cpu"``, ``"cuda"``, ``"cuda:1"``); otherwise the GPU if one exists, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` (highest N), or None.

    Checkpoints are written atomically (ignite's ``DiskSaver(atomic=True)``), so any file with that name
    is complete.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.search(p.name))]
    return max(found)[1] if found else None


def resume_handlers(resume: bool, ckpt_dir: str | os.PathLike, load_dict: Mapping[str, Any],
                    map_location: Any = "cpu") -> list:
    """Handlers that restore the latest checkpoint of ``ckpt_dir`` when ``resume`` is true.

    Returns ``[CheckpointLoader]`` (model, optimizer, scheduler and trainer state: the run goes on from
    the saved epoch up to the configured ``epochs``) or ``[]`` when not resuming or nothing was saved yet.
    """
    if not resume:
        return []
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        logger.warning("resume asked but no checkpoint in %s: starting from scratch", ckpt_dir)
        return []
    from monai.handlers import CheckpointLoader

    logger.info("resuming from %s", path)
    return [CheckpointLoader(load_path=str(path), load_dict=dict(load_dict), map_location=map_location)]


def attach_handlers(engine, handlers: list) -> list:
    """Attach ``handlers`` to ``engine`` (for handlers that need the engine itself, e.g. its checkpoint).

    Handlers that save or restore the trainer's own state cannot be given to the trainer's constructor
    in a config (that reference would be circular), so the bundle attaches them here before ``run()``.
    """
    for handler in handlers:
        handler.attach(engine)
    return handlers


def init_distributed(backend: str | None = None) -> torch.device:
    """Initialise ``torch.distributed`` from torchrun's environment and return this rank's device.

    NCCL and ``cuda:<local_rank>`` when GPUs exist, gloo and the CPU otherwise (or as ``backend`` says).
    """
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def load_weights(network: torch.nn.Module, path: str | os.PathLike, device: Any = "cpu") -> torch.nn.Module:
    """Load a ``model.pt`` state dict (or a checkpoint dict holding ``model``) into ``network``.

    Loads with ``weights_only=True``: a checkpoint cannot run code.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model weights not found; train first or point ckpt_dir at a trained model")
    state = torch.load(p, map_location=device, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    network.load_state_dict(state)
    return network


def train(dataset_dir: str | os.PathLike, bundle: str = "lung", overlays: tuple = (), distributed: bool = False,
          tracking: str | None = None, **overrides: Any) -> None:
    """Validate every file of the dataset, then run the bundle's train (or multi_gpu_train) workflow.

    ``overrides`` are bundle config ids (``epochs``, ``ckpt_dir``, ``output_dir``, ``resume``, ...).
    """
    from monai_pipeline.bundles import run_bundle
    from monai_pipeline.data import msd_datalist

    msd_datalist(dataset_dir, split="all")  # every input checked before any work starts
    run_bundle(bundle, "multi_gpu_train" if distributed else "train", overlays, tracking,
               dataset_dir=str(Path(dataset_dir).resolve()), **overrides)
