"""The bad-input catalogue: every case through the real command line.

Each case breaks one input (an MSD dataset for the lung bundle, an image list, LGG slice folders or brain
volumes for the brain bundle, prediction/label folders for ``evaluate``) and runs the command a user would.
Each must end with exit code 2, one ``error:`` line on stderr naming the file and the fault (no
traceback), and nothing written to the output folder.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_pipeline.app import cli
from monai_pipeline.io.images import write_nifti

TRAIN_SET = ["--set", "num_workers=0", "--epochs", "1"]


def _json(ds: Path, fn: Callable[[dict], None]) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    fn(meta)
    (ds / "dataset.json").write_text(json.dumps(meta))


def _rewrite(path: Path, fn: Callable[[np.ndarray], np.ndarray], affine=None, dtype=None) -> None:
    img = nib.load(str(path))
    arr = fn(np.asarray(img.dataobj).astype(dtype or img.get_data_dtype()))
    write_nifti(arr, img.affine if affine is None else affine, path)


def _singular(path: Path) -> None:
    """Rewrite ``path`` with an sform whose third column is zero (nibabel cannot even write it as a qform)."""
    img = nib.load(str(path))
    out = nib.Nifti1Image(np.asarray(img.dataobj), None)
    out.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    out.header.set_qform(None, code=0)
    nib.save(out, str(path))


def _huge_header(path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.int16)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 64))


IMG, LAB = "imagesTr/lung_001.nii.gz", "labelsTr/lung_001.nii.gz"

# (id, how to break the MSD dataset, text the message must contain)
LUNG_TRAIN = [
    ("no dataset.json", lambda ds: (ds / "dataset.json").unlink(), "dataset.json: dataset description not found"),
    ("invalid JSON", lambda ds: (ds / "dataset.json").write_text('{"training": [}'), "invalid JSON at line 1"),
    ("JSON array", lambda ds: (ds / "dataset.json").write_text("[]"), "top level must be a JSON object"),
    ("no training key", lambda ds: _json(ds, lambda m: m.pop("training")), "missing key 'training'"),
    ("training not a list", lambda ds: _json(ds, lambda m: m.update(training={"a": 1})), "'training' must be a list"),
    ("empty training", lambda ds: _json(ds, lambda m: m.update(training=[])), "'training' list is empty"),
    ("entry without label", lambda ds: _json(ds, lambda m: m["training"][2].pop("label")), "training[2] must be an object"),
    ("image path a number", lambda ds: _json(ds, lambda m: m["training"][1].update(image=7)), "non-empty path string"),
    ("duplicate case", lambda ds: _json(ds, lambda m: m["training"].append(m["training"][0])), "listed twice"),
    ("parent-dir path", lambda ds: _json(ds, lambda m: m["training"][1].update(image="../x.nii.gz")), "outside the dataset"),
    ("absolute path", lambda ds: _json(ds, lambda m: m["training"][1].update(image="/etc/hostname")), "absolute path"),
    ("symlink outside", lambda ds: (os.symlink(ds.parent / "elsewhere.nii.gz", ds / "imagesTr" / "ln.nii.gz"),
                                    shutil.copy(ds / IMG, ds.parent / "elsewhere.nii.gz"),
                                    _json(ds, lambda m: m["training"][1].update(image="imagesTr/ln.nii.gz"))),
     "points outside the dataset folder"),
    ("missing image", lambda ds: (ds / IMG).unlink(), "points to a missing file"),
    ("image is a folder", lambda ds: ((ds / IMG).unlink(), (ds / IMG).mkdir()), "points to a missing file"),
    ("empty file", lambda ds: (ds / IMG).write_bytes(b""), "lung_001.nii.gz: file is empty"),
    ("truncated gzip", lambda ds: (ds / IMG).write_bytes((ds / IMG).read_bytes()[:2000]), "lung_001.nii.gz: corrupted or truncated"),
    ("corrupt gzip tail", lambda ds: (ds / IMG).write_bytes((ds / IMG).read_bytes()[:-40] + bytes(40)), "lung_001.nii.gz"),
    ("text inside gzip", lambda ds: (ds / IMG).write_bytes(gzip.compress(b"hello " * 100)), "lung_001.nii.gz: not a readable NIfTI"),
    ("plain text named .nii.gz", lambda ds: (ds / IMG).write_text("just text"), "lung_001.nii.gz: corrupted or truncated gzip"),
    ("2D image", lambda ds: _rewrite(ds / IMG, lambda a: a[:, :, 0]), "lung_001.nii.gz: expected a 3D volume"),
    ("4D image", lambda ds: _rewrite(ds / IMG, lambda a: np.stack([a, a], -1)), "lung_001.nii.gz: expected a 3D volume"),
    ("NaN voxels", lambda ds: _rewrite(ds / IMG, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a),
                                       dtype=np.float32), "lung_001.nii.gz: 1 voxels are NaN or infinite"),
    ("inf voxels", lambda ds: _rewrite(ds / IMG, lambda a: np.where(a > 400, np.inf, a), dtype=np.float32),
     "voxels are NaN or infinite"),
    ("singular affine", lambda ds: _singular(ds / IMG),
     "lung_001.nii.gz: singular or non-finite"),
    ("huge header", lambda ds: _huge_header(ds / IMG), "lung_001.nii.gz: header declares (30000, 30000, 30000)"),
    ("label shape differs", lambda ds: _rewrite(ds / LAB, lambda a: a[:, :, :-1]), "labelsTr/lung_001.nii.gz: label shape"),
    ("label geometry differs", lambda ds: _rewrite(ds / LAB, lambda a: a, affine=nib.load(str(ds / LAB)).affine
                                                   + np.pad(np.eye(1) * 9, ((0, 3), (3, 0)))),
     "labelsTr/lung_001.nii.gz: label geometry"),
    ("label value 3", lambda ds: _rewrite(ds / LAB, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, 3, a)),
     "labelsTr/lung_001.nii.gz: label values [3] are not among the declared labels [0, 1]"),
    ("0/255 label", lambda ds: _rewrite(ds / LAB, lambda a: (a > 0).astype(np.uint8) * 255), "(a 0/255 mask? store it as 0/1)"),
    ("fractional label", lambda ds: _rewrite(ds / LAB, lambda a: a * 0.5, dtype=np.float32), "fractional values"),
    ("labels keys not values", lambda ds: _json(ds, lambda m: m.update(labels={"background": 0, "tumour": 1})),
     "'labels' keys must be label values"),
    ("unknown file type", lambda ds: ((ds / "imagesTr" / "x.txt").write_text("hi"),
                                      _json(ds, lambda m: m["training"][1].update(image="imagesTr/x.txt"))),
     "x.txt: unknown image type"),
]


@pytest.mark.parametrize("case", LUNG_TRAIN, ids=[c[0] for c in LUNG_TRAIN])
def test_lung_train_refuses(case, tiny_msd, tmp_path, capsys):
    _, damage, message = case
    ds = tmp_path / "Task06_Lung"
    shutil.copytree(tiny_msd, ds)
    damage(ds)
    out = tmp_path / "out"
    code = cli.main(["train", "--dataset-dir", str(ds), "--ckpt-dir", str(out / "models"), "--output-dir",
                     str(out / "eval"), *TRAIN_SET])
    _assert_refused(code, capsys, message, out)


def _assert_refused(code: int, capsys, message: str, out: Path) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*")), sorted(map(str, out.rglob("*")))


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _nrrd_truncated(folder: Path) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((20, 30, 30), np.int16))
    path = folder / "ct.nrrd"
    sitk.WriteImage(img, str(path))  # uncompressed raw payload after the header
    path.write_bytes(path.read_bytes()[:-500])
    return path


def _nrrd_huge(folder: Path) -> Path:
    path = folder / "huge.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 30000 30000 30000\nencoding: raw\nendian: little\n\n"
                     + b"\0" * 64)
    return path


def _dicom(folder: Path, name: str = "ct", seed: int = 0, **kw) -> list[Path]:
    from monai_pipeline.io.dicom import write_series
    from monai_pipeline.io.images import ImageProperties

    props = ImageProperties(shape=(16, 14, 8), spacing=(1.0, 1.0, 2.5), origin=(-8.0, -7.0, -10.0),
                            direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    arr = np.random.default_rng(seed).integers(-1000, 400, size=props.shape).astype(np.int16)
    return write_series(arr, props, folder / name, **kw)


def _dicom_edit(path: Path, **tags) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _dicom_two_series(folder: Path) -> Path:
    _dicom(folder / "study", "a")
    _dicom(folder / "study", "b", seed=1)
    return folder / "study"


def _dicom_missing_slice(folder: Path) -> Path:
    _dicom(folder)[4].unlink()
    return folder / "ct"


def _dicom_uneven(folder: Path) -> Path:
    files = _dicom(folder)
    _dicom_edit(files[4], ImagePositionPatient=[-8.0, -7.0, 0.7])  # 0.3 mm off its place at 1.0 mm
    return folder / "ct"


def _dicom_corrupt(folder: Path) -> Path:
    files = _dicom(folder)
    files[2].write_bytes(files[2].read_bytes()[:132] + b"\xff" * 64)
    return folder / "ct"


def _dicom_two_frames(folder: Path) -> Path:
    from pydicom.uid import generate_uid

    _dicom_edit(_dicom(folder)[3], FrameOfReferenceUID=generate_uid())
    return folder / "ct"


INFER = [
    ("missing file in list", lambda f: _text(f / "list.txt", "nope.nii.gz\n"), "nope.nii.gz: file not found"),
    ("empty list file", lambda f: _text(f / "list.txt", "\n"), "the inference datalist is empty"),
    ("truncated NRRD", _nrrd_truncated, "ct.nrrd: not a readable image"),
    ("NRRD claiming 30000^3", _nrrd_huge, "huge.nrrd: header declares (30000, 30000, 30000)"),
    ("folder without images", lambda f: (f / "empty").mkdir() or f / "empty", "empty: folder holds no images"),
    ("DICOM: two series, no choice", _dicom_two_series, "holds 2 image series; choose one as FOLDER#SERIES_UID"),
    ("DICOM: missing slice", _dicom_missing_slice, "1 slice(s) missing between slice_0003.dcm and slice_0005.dcm"),
    ("DICOM: uneven spacing", _dicom_uneven, "uneven slice spacing"),
    ("DICOM: corrupt file", _dicom_corrupt, "slice_0002.dcm: corrupt DICOM file"),
    ("DICOM: two Frames of Reference", _dicom_two_frames, "2 Frames of Reference in one series"),
    ("DICOM: not an image", lambda f: (_dicom(f), _rtstruct(f / "rs.dcm", {"GTV": [(2, 2), (6, 6)]}))[1],
     "rs.dcm: a DICOM RTSTRUCT (RT structure set), not an image"),
]


@pytest.mark.parametrize("case", INFER, ids=[c[0] for c in INFER])
def test_lung_infer_refuses(case, tmp_path, capsys):
    _, make, message = case
    (tmp_path / "in").mkdir()
    target = make(tmp_path / "in")
    out = tmp_path / "out"
    code = cli.main(["infer", "--images", str(target), "--ckpt-dir", str(tmp_path / "no_models"), "--output-dir", str(out)])
    _assert_refused(code, capsys, message, out)


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    from monai_pipeline.app.synthetic import write_brain_slices

    return write_brain_slices(tmp_path_factory.mktemp("s") / "lgg", num_patients=3, num_slices=4, size=32)


S = "BRAINPH_001/BRAINPH_001_2"
BRAIN_TRAIN = [
    ("image without mask", lambda r: Path(f"{r}/{S}_mask.tif").unlink(), f"{S}.tif: image without its mask"),
    ("mask without image", lambda r: Path(f"{r}/{S}.tif").unlink(), f"{S}_mask.tif: mask without its image"),
    ("mask size differs", lambda r: Image.fromarray(np.zeros((16, 32), np.uint8)).save(f"{r}/{S}_mask.tif"),
     f"{S}_mask.tif: mask size 32x16 differs"),
    ("mask values 0/128", lambda r: Image.fromarray(np.full((32, 32), 128, np.uint8)).save(f"{r}/{S}_mask.tif"),
     f"{S}_mask.tif: mask values must be 0/255 or 0/1"),
    ("truncated TIFF", lambda r: Path(f"{r}/{S}.tif").write_bytes(Path(f"{r}/{S}.tif").read_bytes()[:120]),
     f"{S}.tif: not a readable image"),
    ("truncated PNG", lambda r: (Image.open(f"{r}/{S}.tif").save(f"{r}/{S}.png"), Path(f"{r}/{S}.tif").unlink(),
                                 Path(f"{r}/{S}.png").write_bytes(Path(f"{r}/{S}.png").read_bytes()[:-60])),
     f"{S}.png: not a readable image"),
    ("text named .png", lambda r: (Path(f"{r}/{S}.tif").unlink(), Path(f"{r}/{S}.png").write_text("text")),
     f"{S}.png: not a readable image"),
    ("slice stored twice", lambda r: Image.open(f"{r}/{S}.tif").save(f"{r}/{S}.png"), "is also stored as"),
]


@pytest.mark.parametrize("case", BRAIN_TRAIN, ids=[c[0] for c in BRAIN_TRAIN])
def test_brain_train_refuses(case, slices, tmp_path, capsys):
    _, damage, message = case
    root = tmp_path / "lgg"
    shutil.copytree(slices, root)
    damage(root)
    out = tmp_path / "out"
    code = cli.main(["train", "--bundle", "brain", "--dataset-dir", str(root), "--ckpt-dir", str(out / "models"),
                     "--output-dir", str(out / "eval"), *TRAIN_SET])
    _assert_refused(code, capsys, message, out)


def test_brain_volume_not_3d_refuses(tmp_path, capsys):
    from monai_pipeline.app.synthetic import write_brain_volumes

    root = tmp_path / "vols"
    write_brain_volumes(root, num_train=3, num_test=0, seed=0, shape=(24, 24, 6))
    _rewrite(root / "imagesTr" / "brainph_001_t1c.nii.gz", lambda a: a[:, :, 0])
    out = tmp_path / "out"
    code = cli.main(["train", "--bundle", "brain", "--dataset-dir", str(root), "--ckpt-dir", str(out / "m"), *TRAIN_SET])
    _assert_refused(code, capsys, "brainph_001_t1c.nii.gz: expected a 3D volume", out)


def test_brain_infer_with_nothing_usable_refuses(tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "A_1.tif").write_bytes(b"II*\0garbage")
    (bad / "B_1.png").write_bytes(b"")
    out = tmp_path / "out"
    code = cli.main(["infer", "--bundle", "brain", "--images", str(bad), "--ckpt-dir", str(tmp_path / "m"),
                     "--output-dir", str(out)])
    _assert_refused(code, capsys, "no usable input among 2", out)


def _pair(tmp_path: Path, shift: float = 0.0, drop_label: bool = False) -> tuple[Path, Path]:
    pred, lab = tmp_path / "pred", tmp_path / "lab"
    pred.mkdir()
    lab.mkdir()
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    write_nifti(np.zeros((8, 8, 4), np.uint8), aff, lab / "c1.nii.gz")
    moved = aff.copy()
    moved[0, 3] += shift
    write_nifti(np.zeros((8, 8, 4), np.uint8), moved, pred / "c1_seg.nii.gz")
    write_nifti(np.zeros((8, 8, 4), np.uint8), aff, pred / "c2_seg.nii.gz")
    if not drop_label:
        write_nifti(np.zeros((8, 8, 4), np.uint8), aff, lab / "c2.nii.gz")
    return pred, lab


EVAL = [
    ("geometry differs", lambda t: _pair(t, shift=3.0), "c1_seg.nii.gz: prediction geometry"),
    ("missing partner", lambda t: _pair(t, drop_label=True), "no partner for case(s) c2"),
    ("prediction folder missing", lambda t: (t / "nothing", _pair(t)[1]), "nothing: folder not found"),
    ("slice without label", lambda t: ((t / "p").mkdir(), Image.fromarray(np.zeros((4, 4), np.uint8)).save(t / "p" / "X_1_mask.png"),
                                       (t / "l").mkdir(), (t / "p", t / "l"))[-1], "X_1_mask.png: no label mask"),
    ("unreadable prediction", lambda t: (lambda p, l: ((p / "c1_seg.nii.gz").write_bytes(b"junk"), (p, l))[1])(*_pair(t)),
     "c1_seg.nii.gz: not a readable mask"),
]


@pytest.mark.parametrize("case", EVAL, ids=[c[0] for c in EVAL])
def test_evaluate_refuses(case, tmp_path, capsys):
    _, make, message = case
    pred, lab = make(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["evaluate", "--pred", str(pred), "--label", str(lab), "--out", str(out)])
    _assert_refused(code, capsys, message, out)


def _rtstruct(path: Path, rois: dict[str, tuple], ct: Path | None = None, series_uid: str | None = None) -> Path:
    """An RTSTRUCT with one square per ROI (voxel corners (i0, j0), (i1, j1) on slice 3 of ``_dicom``'s grid),
    referencing the series in ``ct`` (or ``series_uid``)."""
    import pydicom
    from test_io_rtstruct import rect, write_rtstruct

    from monai_pipeline.io.images import ImageProperties

    props = ImageProperties(shape=(16, 14, 8), spacing=(1.0, 1.0, 2.5), origin=(-8.0, -7.0, -10.0),
                            direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    ref = pydicom.dcmread(sorted(ct.glob("*.dcm"))[0], stop_before_pixels=True) if ct else None
    return write_rtstruct(path, {name: [rect(a[0] - 0.5, b[0] + 0.5, a[1] - 0.5, b[1] + 0.5)] for name, (a, b)
                                 in rois.items()}, props,
                          for_uid=str(ref.FrameOfReferenceUID) if ref else "1.2.3",
                          series_uid=series_uid or (str(ref.SeriesInstanceUID) if ref else "1.2.3.4"))


def _tree(folder: Path, rois: dict | None = None, other_series: bool = False) -> Path:
    tree = folder / "tree"
    _dicom(tree / "patient1", "ct")
    _rtstruct(tree / "patient1" / "rs.dcm", rois or {"GTV-1": ((3, 3), (7, 7))}, tree / "patient1" / "ct",
              series_uid="1.2.826.0.1.3680043.8.498.777" if other_series else None)
    return tree


IMPORT = [
    ("no RTSTRUCT", lambda f: (_dicom(f / "tree"), f / "tree")[1], "no RTSTRUCT found"),
    ("ROI name matching nothing", lambda f: _tree(f, {"Heart": ((3, 3), (7, 7))}),
     "rs.dcm: no ROI name matches 'GTV.*'"),
    ("RTSTRUCT of another series", lambda f: _tree(f, other_series=True),
     "rs.dcm: references series 1.2.826.0.1.3680043.8.498.777, which is not in"),
    ("contour outside the image", lambda f: _tree(f, {"GTV-1": ((10, 10), (40, 12))}),
     "rs.dcm: contour outside the image: ROI 'GTV-1'"),
    ("bad --label", lambda f: _tree(f), "--label 'tumour': expected NAME=REGEX"),
]


@pytest.mark.parametrize("case", IMPORT, ids=[c[0] for c in IMPORT])
def test_import_dicom_refuses(case, tmp_path, capsys):
    name, make, message = case
    tree = make(tmp_path)
    out = tmp_path / "out" / "dataset"
    label = ["--label", "tumour"] if name == "bad --label" else ["--label", "tumour=GTV.*"]
    code = cli.main(["import-dicom", "--input", str(tree), "--out", str(out), *label])
    _assert_refused(code, capsys, message, tmp_path / "out")


def test_catalogue_size():
    n = len(LUNG_TRAIN) + len(INFER) + len(BRAIN_TRAIN) + 2 + len(EVAL) + len(IMPORT)
    assert n >= 40, n


def test_bom_and_crlf_dataset_json_accepted(tiny_msd, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_msd, ds)
    text = (ds / "dataset.json").read_text().replace("\n", "\r\n")
    (ds / "dataset.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    from monai_pipeline.data.datasets import msd_datalist

    assert len(msd_datalist(ds, split="all")) == 6


