"""Where and how a run executes: device, data-loading workers, torchrun's process group."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["default_device", "default_num_workers", "init_distributed", "dist_rank", "end_distributed",
           "rank_zero_only", "git_revision", "bundle_metadata", "algorithm_id"]


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


def init_distributed(backend: str | None = None, timeout_hours: float | None = None) -> torch.device:
    """Initialise ``torch.distributed`` from torchrun's environment and return this rank's device.

    NCCL and ``cuda:<local_rank>`` when GPUs exist, gloo and the CPU otherwise (or as ``backend`` says);
    ``timeout_hours`` sets the collectives' timeout (torch's default when None).
    """
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




def dist_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def end_distributed() -> None:
    """Wait for every rank, then leave torchrun's process group (the multi-process configs' ``finalize``)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_zero_only(items: list, keep: int = 0) -> list:
    """``items`` on rank 0 (or without a process group); only the first ``keep`` of them on the other ranks.

    The multi-process configs give every rank the handlers that must run everywhere (the non-finite guard, the
    LR schedule, validation, early stopping), listed first, and leave logging and checkpoint saving to rank 0.
    """
    return list(items) if dist_rank()[0] == 0 else list(items)[:keep]


@lru_cache(maxsize=None)
def git_revision() -> str | None:
    """The commit of the monai-pipeline checkout this package runs from (``+dirty`` with uncommitted changes to
    tracked files), or None when it does not run from a git checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0 or not rev.stdout.strip():
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def bundle_metadata(bundle_root: str | os.PathLike | None) -> dict:
    """``<bundle_root>/configs/metadata.json`` as a dict; empty when there is none."""
    if bundle_root is None:
        return {}
    try:
        return json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def algorithm_id(bundle_root: str | os.PathLike) -> dict[str, str]:
    """``{"name", "version"}`` of a bundle's model for derived objects (DICOM SEG): the bundle's name, its
    version and the code's git revision (``Lung CT tumour segmentation``, ``0.4.0 (git 1a2b3c4d5e6f)``)."""
    meta = bundle_metadata(bundle_root)
    name = str(meta.get("name") or Path(bundle_root).resolve().name)[:64]
    rev = git_revision()
    return {"name": name, "version": f"{meta.get('version', 'unknown')} (git {rev[:12] if rev else 'unknown'})"}
