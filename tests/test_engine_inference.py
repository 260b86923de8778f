"""Inference over many volumes: resume (skip complete masks), overwrite, bad volumes skipped and named,
per-case progress, and the same run split over two torchrun processes.

The CLI runs use the session's tiny trained model (conftest.trained) on 48 x 48 x 24 phantoms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import TINY, VENV_BIN, run_cmd
from monai_pipeline.errors import DataError
from monai_pipeline.io.images import write_mask_like
from monai_pipeline.engine.inference import existing_mask_problem, pending, settings_path
from monai_pipeline.io.images import write_nifti

CLI = str(VENV_BIN / "monai-pipeline")
SETS = [a for i in range(0, len(TINY), 2) for a in ("--set", f"{TINY[i].lstrip('-')}={TINY[i + 1]}")]
PROGRESS = re.compile(r"case (\d+)/(\d+) (\w+): \d+\.\d s")


def _phantom(path: Path, shape=(20, 18, 6), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return write_nifti((rng.random(shape) * 1000 - 1000).astype(np.int16), np.diag([2.0, 2.5, 4.0, 1.0]), path)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def volumes(tiny_msd, tmp_path_factory) -> Path:
    """Three tiny CT phantoms in one folder (two test cases and one training case of tiny_msd)."""
    folder = tmp_path_factory.mktemp("volumes") / "in"
    folder.mkdir()
    for src in [*sorted((tiny_msd / "imagesTs").glob("*.nii.gz")), tiny_msd / "imagesTr" / "lung_000.nii.gz"]:
        shutil.copy(src, folder / src.name)
    return folder


def _infer(images: Path, trained: Path, out: Path, *extra: str, check: bool = True):
    proc = run_cmd([CLI, "infer", "--images", str(images), "--ckpt-dir", str(trained / "models"), "--output-dir",
                    str(out), *SETS, *extra], cwd=out.parent, check=check)
    return proc, proc.stdout + proc.stderr


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*_seg.nii.gz")}


# ----------------------------------------------------------------------------- pending (no model needed)
def test_existing_mask_problem_reads_headers_only(tmp_path):
    src = _phantom(tmp_path / "a.nii.gz")
    other = _phantom(tmp_path / "b.nii.gz", shape=(20, 18, 7))
    noise = (np.random.default_rng(0).random((20, 18, 6)) > 0.5).astype(np.uint8)  # does not compress to nothing
    mask = write_mask_like(noise, src, tmp_path / "a_seg.nii.gz")
    assert existing_mask_problem(mask, src) is None
    assert existing_mask_problem(tmp_path / "none_seg.nii.gz", src) == "missing"
    assert "shape" in existing_mask_problem(mask, other)  # a mask of another grid
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    os.utime(weights, ns=(mask.stat().st_mtime_ns + 10**9,) * 2)
    assert "older than the model weights" in existing_mask_problem(mask, src, weights)
    _truncate(mask, 0.8)
    assert "truncated" in existing_mask_problem(mask, src)
    mask.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "unreadable" in existing_mask_problem(mask, src)
    nrrd = write_mask_like(noise, src, tmp_path / "a_seg.nrrd")
    assert existing_mask_problem(nrrd, src) is None
    _truncate(nrrd, 0.7)
    assert existing_mask_problem(nrrd, src) is not None


def test_png_slice_mask_check(tmp_path):
    from PIL import Image

    src = tmp_path / "P_1.tif"
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(src)
    mask = tmp_path / "P_1_mask.png"
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(mask)
    assert existing_mask_problem(mask, src) is None
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    assert "size" in existing_mask_problem(mask, src)
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(mask)
    _truncate(mask, 0.9)
    assert existing_mask_problem(mask, src) is not None


def test_pending_skips_done_redoes_damaged_and_lists_rejected(tmp_path):
    srcs = [_phantom(tmp_path / "in" / f"c{i}.nii.gz", seed=i) for i in range(4)]
    out = tmp_path / "out"
    for s in srcs[:3]:
        write_mask_like(np.zeros((20, 18, 6), np.uint8), s, out / s.name.replace(".nii.gz", "_seg.nii.gz"))
    _truncate(out / "c1_seg.nii.gz")
    todo = pending(tmp_path / "in", out)
    assert [d["case_id"] for d in todo] == ["c1", "c3"]  # c1: truncated mask, c3: no mask
    assert [d["case_id"] for d in todo.done] == ["c0", "c2"]
    assert todo.masks["c3"] == str(out / "c3_seg.nii.gz") and todo.order == {"c0": 0, "c1": 1, "c2": 2, "c3": 3}
    assert [d["case_id"] for d in pending(tmp_path / "in", out, overwrite=True)] == ["c0", "c1", "c2", "c3"]
    # a bad input is listed, not fatal, while anything else is usable or done
    _truncate(srcs[3])
    todo = pending(tmp_path / "in", out)
    assert [d["case_id"] for d in todo] == ["c1"]
    assert [r["case_id"] for r in todo.rejected] == ["c3"] and "c3.nii.gz" in todo.rejected[0]["error"]
    with pytest.raises(DataError, match="c3.nii.gz"):
        pending(tmp_path / "in", out, skip_bad=False)
    with pytest.raises(DataError, match="no usable input among 1"):
        pending([str(srcs[3])], out)
    assert pending([str(srcs[3]), str(srcs[0])], out).done  # bad one plus a done one: no error
    with pytest.raises(DataError, match="outputs would collide"):
        pending([str(srcs[0]), str(_phantom(tmp_path / "other" / "c0.nii.gz"))], out)


def test_other_inference_settings_redo_every_mask_and_an_interrupted_run_resumes(tmp_path, caplog):
    """The settings that decide a mask besides the model are recorded beside the folder. Other settings redo every
    mask (with one warning naming what changed); the same settings again skip the masks made since the record, and
    redo the older ones (a run with new settings that was interrupted)."""
    srcs = [_phantom(tmp_path / "in" / f"c{i}.nii.gz", seed=i) for i in range(3)]
    out = tmp_path / "out"

    def write(*names, folder=out):
        for s in srcs:
            if s.name.split(".")[0] in names:
                write_mask_like(np.zeros((20, 18, 6), np.uint8), s, folder / s.name.replace(".nii.gz", "_seg.nii.gz"))

    def age(folder, before):  # the masks now predate ``before`` by a second (coarse file-system clocks too)
        for m in folder.glob("*.nii.gz"):
            os.utime(m, ns=(before - 10**9, before - 10**9))

    plain = {"tta_flips": [], "prob_threshold": 0.5, "pixdim": [1, 1, 2]}
    assert len(pending(tmp_path / "in", out, settings=plain)) == 3
    record = settings_path(out)
    assert record.parent == tmp_path and json.loads(record.read_text()) == plain  # beside the folder, not in it
    write("c0", "c1", "c2")
    assert sorted(os.listdir(out)) == ["c0_seg.nii.gz", "c1_seg.nii.gz", "c2_seg.nii.gz"]
    assert [d["case_id"] for d in pending(tmp_path / "in", out, settings=plain).done] == ["c0", "c1", "c2"]
    stamp = record.stat().st_mtime_ns
    same = {"pixdim": [1.0, 1.0, 2.0], **{k: v for k, v in reversed(plain.items()) if k != "pixdim"}}
    with caplog.at_level("WARNING", logger="monai_pipeline.engine.inference"):
        assert len(pending(tmp_path / "in", out, settings=same)) == 0  # key order, 1 and 1.0: the same settings
    assert record.stat().st_mtime_ns == stamp and "differ" not in caplog.text  # the record is not rewritten

    flipped = {**plain, "tta_flips": [[0]]}
    with caplog.at_level("WARNING", logger="monai_pipeline.engine.inference"):
        todo = pending(tmp_path / "in", out, settings=flipped)
    assert [d["case_id"] for d in todo] == ["c0", "c1", "c2"] and not todo.done
    assert "tta_flips: [] -> [[0]]" in caplog.text and "prob_threshold" not in caplog.text
    assert json.loads(record.read_text()) == flipped
    # the run with the flips stops after c1: the same command again redoes c0's older mask and c2 only
    age(out, record.stat().st_mtime_ns)
    write("c1")
    todo = pending(tmp_path / "in", out, settings=flipped)
    assert [d["case_id"] for d in todo] == ["c0", "c2"] and [d["case_id"] for d in todo.done] == ["c1"]
    assert "older than the inference settings" in existing_mask_problem(out / "c0_seg.nii.gz", srcs[0], None, record)
    # without settings (API use of pending alone) nothing is recorded or compared
    assert len(pending(tmp_path / "in", tmp_path / "bare")) == 3 and not settings_path(tmp_path / "bare").exists()
    # masks made before any record (an older version, or another tool): redone once, then resumed
    legacy = tmp_path / "legacy"
    write("c0", folder=legacy)
    assert [d["case_id"] for d in pending(tmp_path / "in", legacy, settings=plain)] == ["c0", "c1", "c2"]
    write("c0", "c1", folder=legacy)
    assert [d["case_id"] for d in pending(tmp_path / "in", legacy, settings=plain)] == ["c2"]
    # a value JSON cannot hold is refused before anything is recorded; a dtype object is recorded by its name
    with pytest.raises(ValueError, match="JSON values"):
        pending(tmp_path / "in", tmp_path / "odd", settings={"device": object()})
    assert not settings_path(tmp_path / "odd").exists()
    pending(tmp_path / "in", tmp_path / "odd", settings={"resample_dtype": np.float64})
    assert json.loads(settings_path(tmp_path / "odd").read_text()) == {"resample_dtype": str(np.float64)}
    # inputs that fail validation: nothing recorded
    with pytest.raises(DataError):
        pending([str(tmp_path / "in" / "missing.nii.gz")], tmp_path / "none", settings=plain, skip_bad=False)
    assert not settings_path(tmp_path / "none").exists()


# ------------------------------------------------------------------------------------ through the CLI
def test_resume_redoes_only_missing_or_damaged_masks_and_overwrite_redoes_all(trained, volumes, tmp_path):
    out = tmp_path / "masks"
    _, log = _infer(volumes, trained, out)
    names = ["lung_000_seg.nii.gz", "lung_100_seg.nii.gz", "lung_101_seg.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == names
    progress = PROGRESS.findall(log)
    assert [(i, n) for i, n, _ in progress] == [("1", "3"), ("2", "3"), ("3", "3")], log[-3000:]
    assert sorted(c for _, _, c in progress) == ["lung_000", "lung_100", "lung_101"]
    assert "3 written, 0 skipped as done, 0 failed" in log
    first = _mtimes(out)
    reference = {n: np.asarray(nib.load(str(out / n)).dataobj) for n in names}

    (out / "lung_100_seg.nii.gz").unlink()
    _truncate(out / "lung_101_seg.nii.gz")
    _, log = _infer(volumes, trained, out)
    assert "1 of 3 case(s) already have a complete mask" in log
    assert re.search(r"lung_101_seg\.nii\.gz: existing mask truncated", log)
    assert sorted(c for _, _, c in PROGRESS.findall(log)) == ["lung_100", "lung_101"]
    assert "2 written, 1 skipped as done, 0 failed" in log
    second = _mtimes(out)
    assert second["lung_000_seg.nii.gz"] == first["lung_000_seg.nii.gz"]  # untouched
    assert second["lung_101_seg.nii.gz"] != first["lung_101_seg.nii.gz"]
    for n in names:  # the redone masks are the same masks
        assert np.array_equal(np.asarray(nib.load(str(out / n)).dataobj), reference[n])

    _, log = _infer(volumes, trained, out)  # nothing left to do
    assert "0 written, 3 skipped as done, 0 failed" in log and not PROGRESS.findall(log)
    assert _mtimes(out) == second

    _, log = _infer(volumes, trained, out, "--overwrite")
    assert "3 written, 0 skipped as done, 0 failed" in log
    assert all(t != second[n] for n, t in _mtimes(out).items())


def test_bad_volumes_are_skipped_named_and_exit_1(trained, volumes, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(volumes, folder)
    for name in ("lung_000.nii.gz", "lung_101.nii.gz"):
        (folder / name).unlink()
    shutil.copy(volumes / "lung_101.nii.gz", folder / "cut.nii.gz")
    _truncate(folder / "cut.nii.gz", 0.6)  # refused by validation (truncated gzip stream)
    nan = np.full((24, 24, 8), -1000.0, np.float32)
    nan[3, 4, 5] = np.nan
    write_nifti(nan, np.diag([5.0, 5.0, 8.0, 1.0]), folder / "nans.nii.gz")  # refused by validation
    # an RGB NIfTI: its header and payload are fine, loading it as CT fails (the reader wants one value per voxel)
    rgb = np.zeros((24, 24, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.diag([5.0, 5.0, 8.0, 1.0])), str(folder / "rgb.nii.gz"))
    out = tmp_path / "masks"
    proc, log = _infer(folder, trained, out, check=False)
    assert proc.returncode == 1, log[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["failed.json", "lung_100_seg.nii.gz"]
    failed = proc.stderr.splitlines()
    for name, why in [("cut.nii.gz", "truncated gzip"), ("nans.nii.gz", "NaN"), ("rgb.nii.gz", "3 values per voxel")]:
        assert any(ln.startswith("failed: ") and name in ln and why in ln for ln in failed), (name, proc.stderr)
    assert "1 mask(s) written" in proc.stdout and "3 failed" in proc.stdout
    listing = json.loads((out / "failed.json").read_text())
    assert sorted(Path(f["image"]).name for f in listing) == ["cut.nii.gz", "nans.nii.gz", "rgb.nii.gz"]
    assert "Traceback" not in log

    for name in ("cut.nii.gz", "nans.nii.gz", "rgb.nii.gz"):  # fixed: the rerun only reports
        (folder / name).unlink()
    proc, log = _infer(folder, trained, out)
    assert "0 written, 1 skipped as done, 0 failed" in log
    assert not (out / "failed.json").exists()  # the stale listing is gone


def test_failure_while_segmenting_is_isolated(trained, volumes, tmp_path, monkeypatch):
    """A case that fails after loading (inference, Invertd, writing) is recorded and the run goes on;
    a full disk still stops it."""
    import errno

    from monai_pipeline import segment
    from monai_pipeline.engine import inference as export

    def run_inference(*args, **kwargs):
        return segment(*args, **kwargs).summary

    original = export.SaveMaskd.__call__

    def failing(self, data):
        if "lung_100" in str(data["image"].meta["filename_or_obj"]):
            raise ValueError("simulated failure")
        return original(self, data)

    monkeypatch.setattr(export.SaveMaskd, "__call__", failing)
    settings = {TINY[i].lstrip("-"): json.loads(TINY[i + 1]) for i in range(0, len(TINY), 2)}
    out = tmp_path / "masks"
    summary = run_inference(volumes, trained / "models", out, **settings)
    assert (summary["written"], summary["done"], summary["failed"]) == (2, 0, 1)
    (failure,) = summary["failures"]
    assert failure["case_id"] == "lung_100" and "lung_100.nii.gz" in failure["error"]
    assert "simulated failure" in failure["error"]
    assert sorted(p.name for p in out.iterdir()) == ["lung_000_seg.nii.gz", "lung_101_seg.nii.gz"]

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "x"))

    monkeypatch.setattr(export.SaveMaskd, "__call__", full_disk)
    with pytest.raises(OSError) as err:
        run_inference(volumes, trained / "models", out, overwrite=True, **settings)
    assert err.value.errno == errno.ENOSPC


def test_torchrun_two_processes_give_the_single_process_masks(trained, volumes, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads per process in both runs
    single, multi = tmp_path / "single", tmp_path / "multi"
    _infer(volumes, trained, single)
    proc = run_cmd([str(VENV_BIN / "torchrun"), "--nproc_per_node=2", "-m", "monai_pipeline.cli", "infer",
                    "--distributed", "--images", str(volumes), "--ckpt-dir", str(trained / "models"),
                    "--output-dir", str(multi), *SETS], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r"rank 0: case 1/2 lung_\d+", log) and re.search(r"rank 1: case 1/1 lung_\d+", log), log[-3000:]
    assert len(re.findall(r"wrote .*_seg\.nii\.gz", log)) == 3  # every volume exactly once
    assert "3 mask(s) written" in proc.stdout and proc.stdout.count("mask(s) written") == 1  # rank 0 reports
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in multi.iterdir()) and len(names) == 3
    for name in names:
        a, b = nib.load(str(single / name)), nib.load(str(multi / name))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and a.get_data_dtype() == b.get_data_dtype()
        assert a.header.binaryblock == b.header.binaryblock  # same header, byte for byte
