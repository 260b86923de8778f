"""Faults: training killed with SIGKILL resumes to the end, output folders are locked, checkpoints are
loaded without running pickled code."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BRAIN_BUNDLE, CFG_INFER, CFG_TRAIN, TINY, VENV_BIN, bundle, run_cmd

EPOCHS = 20  # long enough that a random kill always lands before the end


def _train_cmd(dataset: Path, ckpt: Path, resume: bool, epochs: int = EPOCHS) -> list[str]:
    return bundle("run", "--config_file", CFG_TRAIN, "--dataset_dir", str(dataset), "--epochs", str(epochs),
                  "--val_interval", "1", "--val_fraction", "0.34", "--ckpt_dir", str(ckpt),
                  "--output_dir", str(ckpt.parent / "eval"), "--resume", str(resume), *TINY)


def _popen(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs_saved(ckpt: Path) -> int:
    found = [int(m.group(1)) for p in ckpt.glob("checkpoint_epoch=*.pt") if (m := re.search(r"=(\d+)\.pt$", p.name))]
    return max(found, default=0)


def test_sigkill_at_random_points_resumes_to_the_end(tiny_msd, bundle_copy, tmp_path):
    """Kill training with SIGKILL three times at random moments after a new checkpoint appears; each rerun
    with ``--resume True`` goes on from the latest complete checkpoint; the last one finishes all epochs."""
    rng = random.Random(1234)
    ckpt = tmp_path / "run" / "models"
    kills, last_seen = 0, 0
    while kills < 3:
        proc = _popen(_train_cmd(tiny_msd, ckpt, resume=kills > 0), bundle_copy)
        deadline = time.time() + 300
        while _epochs_saved(ckpt) <= last_seen and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.fail(f"training ended (code {proc.returncode}) before the kill:\n{proc.stdout.read()[-3000:]}")
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere in the next epoch, checkpoint writes included
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        last_seen = _epochs_saved(ckpt)
        assert last_seen < EPOCHS, "the run ended before the kill: make epochs longer"
        # whatever the moment of the kill: every checkpoint file on disk is complete
        for f in ckpt.glob("*.pt"):
            torch.load(f, map_location="cpu", weights_only=True)
        # at most a temporary file ("tmp...", ".tmp-...") is left, never a partial .pt: the loop above loaded each
    assert kills == 3
    out = run_cmd(_train_cmd(tiny_msd, ckpt, resume=True), cwd=bundle_copy, timeout=600)
    log = out.stdout + out.stderr
    assert not [p for p in ckpt.iterdir() if p.name.startswith(("tmp", ".tmp-"))]  # a killed save's leftovers
    assert f"Epoch: {EPOCHS}/{EPOCHS}" in log and "Epoch: 1/" not in log  # resumed, not restarted
    final = torch.load(ckpt / f"checkpoint_epoch={EPOCHS}.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"]
    assert (ckpt / "model.pt").is_file()


class _Killed(BaseException):
    """Stands for SIGKILL inside a save: nothing after it runs."""


def test_a_save_killed_midway_keeps_the_checkpoint_it_was_replacing(tmp_path, monkeypatch):
    """ignite removes the file a save replaces before writing the new one: a kill in between left no
    checkpoint at all. Ours removes it only once the new file is written."""
    from ignite.engine import Engine

    from monai_pipeline.engine import CheckpointSaver

    net = torch.nn.Linear(2, 1)
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "optimizer": torch.optim.SGD(
        net.parameters(), lr=0.1)}, save_interval=1, n_saved=1, epoch_level=True, file_prefix="")
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert first == ["checkpoint_epoch=1.pt"]

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(_Killed):
        engine.run([0], max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == first  # the old checkpoint, whole, and no temporary file
    torch.load(tmp_path / first[0], map_location="cpu", weights_only=True)
    monkeypatch.undo()
    engine.state.epoch = 3
    saver._interval_checkpoint(engine)  # the next save removes the older files once the new one is written
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=3.pt"]


def test_a_best_model_gone_from_disk_does_not_stop_the_resumed_run(tmp_path):
    """A run killed while the best model was being replaced resumes with state that lists ``model.pt``; the
    next best metric writes it again instead of failing to remove the absent file."""
    from ignite.engine import Engine

    from monai_pipeline.engine import CheckpointSaver, new_contract

    net = torch.nn.Linear(2, 1)
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                            key_metric_name="val_mean_dice", key_metric_filename="model.pt",
                            contract=new_contract({}, BRAIN_BUNDLE))
    best = saver._key_metric_checkpoint
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"val_mean_dice": 0.5}
    best(engine)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.contract.json").is_file()
    engine.state.metrics = {"val_mean_dice": 0.7}
    best(engine)  # replaced in place: the fixed name is not removed after its own write
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.contract.json").is_file()
    (tmp_path / "model.pt").unlink()  # as a kill between ignite's removal and the write left it
    state = best.state_dict()
    resumed = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                              key_metric_name="val_mean_dice", key_metric_filename="model.pt")._key_metric_checkpoint
    resumed.load_state_dict(state)
    engine.state.metrics = {"val_mean_dice": 0.9}
    resumed(engine)
    assert torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True).keys() == net.state_dict().keys()


@pytest.mark.parametrize("killed_in", ["torch.save", "write_contract", "rename"])
def test_a_best_model_save_killed_at_any_step_leaves_a_pair_a_resume_accepts(tmp_path, monkeypatch, caplog,
                                                                               killed_in):
    """The contract is put in place before the weights it describes: a kill while staging or writing it leaves
    the old pair whole; a kill at the rename itself (the one step between them) leaves new contract and old
    weights, which inference refuses in one line and a resumed training reads with a warning."""
    import monai_pipeline.engine.checkpoints as checkpoints
    from ignite.engine import Engine

    from monai_pipeline.engine import CheckpointSaver, new_contract, read_contract
    from monai_pipeline.errors import DataError

    net = torch.nn.Linear(2, 1)
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True,
                            key_metric_name="val_mean_dice", key_metric_filename="model.pt",
                            contract=new_contract({}, BRAIN_BUNDLE))
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"val_mean_dice": 0.5}
    saver._key_metric_checkpoint(engine)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(old) == ["model.contract.json", "model.pt"] and read_contract(tmp_path) is not None

    def killed(*args, **kwargs):
        raise _Killed

    if killed_in == "torch.save":
        monkeypatch.setattr(torch, "save", killed)
    elif killed_in == "write_contract":
        monkeypatch.setattr(checkpoints, "write_contract", killed)
    else:
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda src, dst: killed() if Path(dst).name == "model.pt" else real(src, dst))
    with torch.no_grad():
        net.weight.add_(1.0)
    engine.state.metrics = {"val_mean_dice": 0.7}
    with pytest.raises(_Killed):
        saver._key_metric_checkpoint(engine)
    monkeypatch.undo()
    now = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(now) == sorted(old), "a staged file was left behind"
    assert now["model.pt"] == old["model.pt"]
    if killed_in != "rename":
        assert now == old
        return
    assert now["model.contract.json"] != old["model.contract.json"]
    with pytest.raises(DataError, match="describes other weights than"):
        read_contract(tmp_path)
    with caplog.at_level("WARNING"):
        assert read_contract(tmp_path, check_weights=False) is not None
    assert "its settings resume the training" in caplog.text


def test_two_runs_on_one_folder_are_refused_and_a_killed_run_frees_it(tiny_msd, bundle_copy, tmp_path):
    ckpt = tmp_path / "run" / "models"
    first = _popen(_train_cmd(tiny_msd, ckpt, resume=False, epochs=500), bundle_copy)  # still running when asked
    try:
        deadline = time.time() + 300
        while _epochs_saved(ckpt) < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "first run ended too early"
        second = run_cmd(_train_cmd(tiny_msd, ckpt, resume=True), cwd=bundle_copy, check=False)
        assert second.returncode != 0
        assert "in use by train pid" in second.stdout + second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait()
        # the kernel dropped the dead run's lock: a new run takes the folder and finishes
        third = run_cmd(_train_cmd(tiny_msd, ckpt, resume=False), cwd=bundle_copy)
        assert f"Epoch: {EPOCHS}/{EPOCHS}" in third.stdout + third.stderr
    finally:
        if first.poll() is None:
            first.kill()


def test_lock_is_per_folder_and_reentrant(tmp_path):
    from monai_pipeline.io.atomic import FolderLockedError, held_locks, lock_folder, release_locks

    before = held_locks()
    lock_folder(tmp_path / "a")
    lock_folder(tmp_path / "a")  # same process: no-op
    lock_folder(tmp_path / "b")
    assert not (tmp_path / "a").exists()  # nothing is written inside the locked folder
    code = ("import sys; from monai_pipeline.io import lock_folder\n"
            "try:\n    lock_folder(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
    other = subprocess.run([str(VENV_BIN / "python"), "-c", code, str(tmp_path / "a")], capture_output=True, text=True)
    assert other.returncode == 3 and "FolderLockedError" in other.stdout and f"pid {os.getpid()}" in other.stdout
    release_locks(keep=before)
    other = subprocess.run([str(VENV_BIN / "python"), "-c", code, str(tmp_path / "a")], capture_output=True, text=True)
    assert other.returncode == 0
    assert FolderLockedError.__mro__[1] is RuntimeError


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for an attacker's code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("workflow", ["inference", "resume"])
def test_pickle_payload_checkpoint_executes_nothing(trained, tiny_msd, tmp_path, workflow):
    marker = tmp_path / "PWNED"
    models = tmp_path / "models"
    models.mkdir()
    name = "model.pt" if workflow == "inference" else "checkpoint_epoch=9.pt"
    torch.save({"model": _Payload(str(marker))}, models / name)
    if workflow == "inference":
        cmd = bundle("run", "--config_file", CFG_INFER, "--dataset_dir", str(tiny_msd), "--ckpt_dir", str(models),
                     "--output_dir", str(tmp_path / "out"), *TINY)
    else:
        cmd = _train_cmd(tiny_msd, models, resume=True)
    proc = run_cmd(cmd, cwd=trained, check=False)
    assert proc.returncode != 0
    assert "Weights only load failed" in proc.stdout + proc.stderr or "weights_only" in proc.stdout + proc.stderr
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("*.nii.gz")) if (tmp_path / "out").exists() else True


def test_full_disk_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch, capsys):
    """A write that fails with ENOSPC (simulated at the flush, where a full disk shows) leaves the previous
    file intact and no temporary file; the CLI reports it in one line (exit 3)."""
    import errno

    import monai_pipeline.io.atomic as mio
    from monai_pipeline.app import cli
    from monai_pipeline.io.atomic import atomic_write_text
    from monai_pipeline.io.images import write_nifti

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mio.os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(target, "new content")
    with pytest.raises(OSError):
        write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "mask.nii.gz")
    monkeypatch.setattr(mio.os, "fsync", real_fsync)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]

    pred, lab = tmp_path / "pred", tmp_path / "lab"
    for folder, name in ((pred, "c1_seg.nii.gz"), (lab, "c1.nii.gz")):
        write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), folder / name)
    monkeypatch.setattr(mio.os, "fsync", full_disk)
    code = cli.main(["evaluate", "--pred", str(pred), "--label", str(lab), "--out", str(tmp_path / "out")])
    assert code == 3
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'out' / 'metrics.csv'}: No space left on device" in err  # the first file it wrote
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
