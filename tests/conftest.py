"""Shared fixtures: tiny synthetic MSD datasets, the real data folder, and a runner for bundle commands."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
LUNG_BUNDLE = ROOT / "bundles" / "lung_ct_tumor_segmentation"
BRAIN_BUNDLE = ROOT / "bundles" / "brain_mri_tumor_segmentation_2d"
NODULE_BUNDLE = ROOT / "bundles" / "lung_nodule_ct_delineation"
VENV_BIN = Path(sys.executable).parent

# Under pytest-xdist (pyproject's `-n auto`) the workers share the cores: each gets its share of threads (one each
# on 2 cores with 2 workers), unless the caller set OMP_NUM_THREADS; set before torch is imported, so it holds in the
# worker and in every command it runs. (torchrun needs nothing: with one node and no --master_port it rendezvouses
# on a free port, so two workers' torchrun commands do not meet.)
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if XDIST_WORKER:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // _workers)))

# `--config_file` of each workflow, run from a bundle folder (as monai_pipeline.app.bundles.WORKFLOW_FILES):
# inference.json stands on its own; the other workflows merge their files over it, later files overriding earlier keys
CFG_INFER = "configs/inference.json"
CFG_TRAIN = "['configs/inference.json','configs/train.json']"
CFG_EVAL = "['configs/inference.json','configs/train.json','configs/evaluate.json']"
CFG_MULTI_GPU_TRAIN = "['configs/inference.json','configs/train.json','configs/multi_gpu_train.json']"

# overrides that make bundle runs take seconds on tiny phantoms
TINY = ["--patch_size", "[32,32,16]", "--pixdim", "[4.0,4.0,5.0]", "--num_workers", "0", "--sw_batch_size", "2"]
# the same for the brain bundle's 64 x 64 phantom slices
BRAIN_TINY = ["--image_size", "[64,64]", "--num_workers", "0", "--num_samples", "4"]


def shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (tests read ../shared/data)")
    return path


@functools.lru_cache(maxsize=None)
def _apt_get(*args: str, timeout: int) -> None:
    """``apt-get ARGS`` once per test session (a successful call is remembered: one ``update`` serves every
    tool); a failure or time-out skips the calling test, saying why."""
    cmd = ["apt-get", *args]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`{' '.join(cmd)}` did not finish within {timeout} s")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {tail}")


@contextlib.contextmanager
def _apt_lock():
    """An exclusive lock shared by this machine's test processes around apt-get (dpkg's own lock makes a second
    concurrent apt-get fail instead of wait)."""
    with open(Path(tempfile.gettempdir()) / "monai-pipeline-tests-apt.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, exception or not
        yield


def debian_tool(names: tuple[str, ...], package: str) -> str:
    """An executable from Debian package ``package``: the first of ``names`` on PATH, or installed with apt-get
    when running as root; else the test is skipped, saying why."""
    def found() -> str | None:
        return next((exe for exe in map(shutil.which, names) if exe), None)

    if exe := found():
        return exe
    if not shutil.which("apt-get"):
        pytest.skip(f"{names[0]} is not on PATH and apt-get is not available to install {package}")
    if os.geteuid() != 0:
        pytest.skip(f"{names[0]} is not on PATH and installing {package} with apt-get needs root (running as uid "
                    f"{os.geteuid()})")
    with _apt_lock():  # another xdist worker may be installing the same tool: wait for it, then look again
        if not found():
            _apt_get("update", timeout=900)
            _apt_get("install", "-y", "--no-install-recommends", package, timeout=1800)
    if not (exe := found()):
        pytest.skip(f"apt-get installed {package} but no {names[0]} executable is on PATH")
    return exe


def run_cmd(args: list[str], cwd: Path | str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the venv's executables first on PATH; fail with its output when it fails."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(args, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n--- stdout\n"
                    f"{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_msd(tmp_path_factory) -> Path:
    """A small synthetic Task06_Lung dataset: 6 training and 2 test phantoms of 48x48x24 voxels at ~5x5x8 mm."""
    from monai_pipeline.app.synthetic import PhantomSpec, write_msd_dataset

    out = tmp_path_factory.mktemp("msd") / "Task06_Lung"
    write_msd_dataset(out, num_train=6, num_test=2, seed=3, spec=PhantomSpec((48, 48, 24), (5.0, 5.0, 8.0)))
    return out


@pytest.fixture()
def bundle_copy(tmp_path) -> Path:
    """A copy of the lung bundle folder, so commands run from it can write models/ and eval/ freely."""
    dest = tmp_path / "lung_ct_tumor_segmentation"
    shutil.copytree(LUNG_BUNDLE, dest)
    return dest


def bundle(*args: str) -> list[str]:
    """``python -m monai.bundle <args>`` with the venv's Python."""
    return [str(VENV_BIN / "python"), "-m", "monai.bundle", *args]


def train_bundle_copy(source: Path, root: Path, dataset: Path, epochs: int, tiny: list[str]) -> Path:
    """Copy the bundle folder ``source`` to ``root`` and train it there on ``dataset`` (models/, eval/ and
    train.log inside it), validating on a third of the patients."""
    shutil.copytree(source, root)
    proc = run_cmd(bundle("run", "--config_file", CFG_TRAIN, "--dataset_dir", str(dataset), "--epochs", str(epochs),
                          "--val_interval", "1", "--val_fraction", "0.34", *tiny), cwd=root)
    (root / "train.log").write_text(proc.stdout + proc.stderr)
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_msd) -> Path:
    """A bundle copy trained for 2 epochs on the tiny dataset (models/ and eval/ inside it)."""
    return train_bundle_copy(LUNG_BUNDLE, tmp_path_factory.mktemp("trained") / "lung", tiny_msd, 2, TINY)


