"""Patient-level splits: every case of a patient lands on one side (random, k-fold, provided, three-way)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from monai_pipeline.errors import DataError
from monai_pipeline.io.naming import first, patient_id

__all__ = ["split_train_val", "kfold_split", "select"]


def _patient(item: dict) -> str:
    return item["patient"] if "patient" in item else patient_id(first(item["image"]))


def _groups(datalist: Sequence[dict]) -> list[str]:
    return sorted({_patient(d) for d in datalist})


def split_train_val(datalist: Sequence[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Fixed-seed train/validation split by patient: all cases of a patient land on one side.

    At least one patient goes to each side when there are two or more patients.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = _groups(datalist)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(patients)))
    n_val = int(round(val_fraction * len(patients)))
    if val_fraction > 0 and len(patients) >= 2:
        n_val = min(max(n_val, 1), len(patients) - 1)
    val_patients = {patients[i] for i in order[:n_val]}
    train = [d for d in datalist if _patient(d) not in val_patients]
    val = [d for d in datalist if _patient(d) in val_patients]
    return train, val


def kfold_split(datalist: Sequence[dict], num_folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[list, list]:
    """Fold ``fold`` of a fixed-seed ``num_folds``-fold split by patient: (train, val)."""
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"need num_folds >= 2 and 0 <= fold < num_folds, got {num_folds=} {fold=}")
    patients = _groups(datalist)
    if len(patients) < num_folds:
        raise DataError(f"{len(patients)} patients cannot fill {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for k, i in enumerate(order) if k % num_folds == fold}
    train = [d for d in datalist if _patient(d) not in val_patients]
    val = [d for d in datalist if _patient(d) in val_patients]
    return train, val


def select(datalist: list[dict], provided_val: list[dict], split: str, split_mode: str, val_fraction: float,
            seed: int, num_folds: int, fold: int, source: str) -> list[dict]:
    if split == "all":
        return datalist
    if split_mode == "random":
        train, val = split_train_val(datalist, val_fraction, seed)
    elif split_mode == "kfold":
        train, val = kfold_split(datalist, num_folds, fold, seed)
    elif split_mode == "provided":
        if not provided_val:
            raise DataError(f"{source}: split_mode 'provided' needs a non-empty 'validation' list")
        train, val = datalist, provided_val
    else:
        raise ValueError(f"split_mode must be 'random', 'kfold' or 'provided', got {split_mode!r}")
    if split == "train":
        return train
    if split in ("val", "validation"):
        return val
    raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
