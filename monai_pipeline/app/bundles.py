"""Run this project's MONAI bundles from Python, exactly as ``python -m monai.bundle run`` would.

The CLI and the Python API call :func:`run_bundle`; it passes the same config files and the same ``key=value``
overrides to MONAI's own ``monai.bundle.run``, so all three faces share one engine. The files of a workflow
(``WORKFLOW_FILES``) are merged in order, a later file overriding an earlier one's keys, then any overlays:
``inference.json`` stands on its own (the Model Zoo's ``verify_bundle``, MONAI Label and 3D Slicer read it
alone); ``train.json`` adds the data split, augmentation and trainer over it; ``evaluate.json`` reads the
split, so it comes after ``train.json`` (inference + train + evaluate, the Model Zoo's train-then-evaluate
order).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from monai.bundle import ConfigParser, create_workflow

from monai_pipeline.errors import DataError
from monai_pipeline.io.atomic import FolderLockedError, held_locks, release_locks

__all__ = ["BUNDLES", "bundle_dir", "bundle_configs", "run_bundle", "resolve", "parse_overrides", "device_override"]

logger = logging.getLogger(__name__)

BUNDLES = {
    "lung": "lung_ct_tumor_segmentation",
    "brain": "brain_mri_tumor_segmentation_2d",
    "nodule": "lung_nodule_ct_delineation",
}

WORKFLOW_FILES = {
    "train": ["inference.json", "train.json"],
    "evaluate": ["inference.json", "train.json", "evaluate.json"],
    "inference": ["inference.json"],
    "multi_gpu_train": ["inference.json", "train.json", "multi_gpu_train.json"],
}


def bundle_dir(name: str) -> Path:
    """Folder of bundle ``name`` (short name like ``"lung"``, a bundle folder name, or a path).

    Looks in ``$MONAI_PIPELINE_BUNDLES`` first, then in the ``bundles/`` folder beside the package.
    """
    candidate = Path(name)
    if (candidate / "configs").is_dir():
        return candidate.resolve()
    folder = BUNDLES.get(name, name)
    roots = [Path(p) for p in os.environ.get("MONAI_PIPELINE_BUNDLES", "").split(os.pathsep) if p]
    roots.append(Path(__file__).resolve().parents[2] / "bundles")
    for root in roots:
        if (root / folder / "configs").is_dir():
            return (root / folder).resolve()
    raise FileNotFoundError(
        f"bundle {name!r} not found in {', '.join(map(str, roots))}; set MONAI_PIPELINE_BUNDLES to the folder "
        "holding the bundles or pass a bundle folder path"
    )


def bundle_configs(name: str, workflow: str, overlays: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Config files for ``workflow`` (train, evaluate, inference, multi_gpu_train) of a bundle, then overlays."""
    if workflow not in WORKFLOW_FILES:
        raise ValueError(f"unknown workflow {workflow!r}; choose one of {sorted(WORKFLOW_FILES)}")
    root = bundle_dir(name)
    files = [str(root / "configs" / f) for f in WORKFLOW_FILES[workflow]]
    for overlay in overlays:
        if not Path(overlay).is_file():
            raise FileNotFoundError(f"{overlay}: config overlay not found")
        files.append(str(Path(overlay).resolve()))
    return files


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "patch_size=[64,64,32]"]`` -> ``{"epochs": 5, "patch_size": [64, 64, 32]}`` (JSON values
    where they parse, strings otherwise)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def device_override(device: str | None) -> dict[str, str]:
    """The ``device`` override for a device name (``"cpu"``, ``"cuda:1"``); empty for None (automatic)."""
    return {"device": f"$torch.device({device!r})"} if device else {}


@contextlib.contextmanager
def _root_logging_restored() -> Iterator[None]:
    """Leave the root logger as it was: a bundle run applies its ``configs/logging.conf`` (as ``python -m
    monai.bundle run`` does), which replaces the root handlers with one bound to this moment's ``sys.stdout``. A
    process that runs bundles many times (the Python API in a notebook or 3D Slicer's console, the tests) keeps
    its own logging set-up between runs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _data_errors() -> Iterator[None]:
    """Re-raise this project's own errors (a bad input file, a locked folder, and errors that carry an
    ``exit_code`` of their own, such as training that turned non-finite) as themselves where MONAI's config
    machinery wrapped them in ``RuntimeError``s."""
    try:
        yield
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, (DataError, FolderLockedError)) or isinstance(getattr(cause, "exit_code", None), int):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise


def resolve(name: str, workflow: str, ids: Sequence[str], overlays: Sequence[str | os.PathLike] = (),
            **overrides: Any) -> list[Any]:
    """Instantiate config items ``ids`` of a bundle workflow (e.g. its datalists, which validates them)."""
    root = bundle_dir(name)
    parser = ConfigParser()
    parser.read_config(bundle_configs(name, workflow, overlays))
    parser.update({"bundle_root": str(root), **overrides})
    with _data_errors():
        return [parser.get_parsed_content(i) for i in ids]


def run_bundle(name: str, workflow: str, overlays: Sequence[str | os.PathLike] = (), tracking: str | None = None,
               **overrides: Any) -> Any:
    """Run a bundle workflow in this process; ``overrides`` are the bundle's config ids (``epochs=2``).

    Does what ``monai.bundle.run`` does (create the workflow, run it, finalize it) and returns the finished
    workflow, so the caller can read what the run made (``workflow.parser.get_parsed_content("progress")``).
    A :class:`DataError` raised while the config is built (a bad input file) comes out as itself.
    """
    root = bundle_dir(name)
    overrides.setdefault("bundle_root", str(root))
    logger.info("running %s %s with %s", root.name, workflow, overrides)
    before = held_locks()
    try:
        with _root_logging_restored(), _data_errors():
            flow = create_workflow(
                config_file=bundle_configs(name, workflow, overlays),
                meta_file=str(root / "configs" / "metadata.json"),
                logging_file=str(root / "configs" / "logging.conf"),
                tracking=tracking,
                **overrides,
            )
            flow.run()
            flow.finalize()
            return flow
    finally:
        release_locks(keep=before)  # locks the run took (output folders) end with it
