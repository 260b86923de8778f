"""Pictures: orientation, slice choice, windowing, TensorBoard curves read back, plots, off-screen 3D render."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from monai_pipeline import visualize as vis


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _count(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(img - np.asarray(rgb)).max(axis=-1) <= tol).sum())


# ---------------------------------------------------------------------------------------- orientation
def test_axial_display_is_radiological_whatever_the_storage_order():
    # RAS storage, spacing 1 x 2 x 3 mm: i increases towards the patient's right, so voxel i = 0 is the patient's
    # most left column; j increases towards anterior, so j = 4 is the most anterior row
    vol = np.zeros((6, 5, 4))
    vol[0, 4, 2] = 7.0  # patient left, anterior, slice k = 2
    ras = np.diag([1.0, 2.0, 3.0, 1.0])
    stack, aspect = vis.axial_display(vol, ras)
    assert stack.shape == (4, 5, 6)  # (K, rows = A..P, cols = R..L)
    assert stack[2, 0, -1] == 7.0  # anterior = top row, patient left = right-most column
    assert aspect == pytest.approx(2.0)  # row spacing (A) / column spacing (R)
    # the same patient stored LPS (i towards patient left, j towards posterior): the display must not change
    lps = np.diag([-1.0, -2.0, 3.0, 1.0])
    lps[:3, 3] = [5.0, 8.0, 0.0]
    stack2, aspect2 = vis.axial_display(vol[::-1, ::-1, :], lps)
    np.testing.assert_array_equal(stack2, stack)
    assert aspect2 == pytest.approx(2.0)
    # superior-to-inferior slice order in the file: display slices still go from inferior up
    down = np.diag([1.0, 2.0, -3.0, 1.0])
    stack3, _ = vis.axial_display(vol[:, :, ::-1], down)
    np.testing.assert_array_equal(stack3, stack)


def test_best_axial_slice_prefers_label_then_prediction_then_middle():
    lab = np.zeros((8, 10, 10), bool)
    lab[2, 4:6, 4:6] = True  # 4 px
    lab[5, 2:8, 2:8] = True  # 36 px: the largest
    pred = np.zeros_like(lab)
    pred[6, :, :] = True
    assert vis.best_axial_slice(lab, pred) == 5
    assert vis.best_axial_slice(np.zeros_like(lab), pred) == 6
    assert vis.best_axial_slice(np.zeros_like(lab), np.zeros_like(lab)) == 4


def test_window_range_uses_the_lung_window_for_hu_and_percentiles_otherwise():
    rng = np.random.default_rng(0)
    ct = rng.choice([-1000, -850, 40, 450], size=(20, 20, 10)).astype(np.int16)
    assert vis.window_range(ct)[:2] == (-1000.0, 400.0)
    mri = rng.normal(300, 50, size=(20, 20, 10))
    lo, hi, how = vis.window_range(mri)
    assert how == "percentile 1-99"
    assert lo == pytest.approx(np.percentile(mri, 1)) and hi == pytest.approx(np.percentile(mri, 99))


def test_pick_cases_best_median_worst():
    rows = [{"case_id": c, "dice": d} for c, d in zip("abcde", [0.5, 0.9, None, 0.1, 0.7])]
    picks = vis.pick_cases(rows)
    assert [(role, r["case_id"]) for role, r in picks] == [("best", "b"), ("median", "e"), ("worst", "d")]
    assert [role for role, _ in vis.pick_cases(rows[:1])] == ["best"]
    assert vis.pick_cases([{"dice": None}]) == []


def test_overlay_montage_draws_the_largest_label_slice(tmp_path):
    aff = np.diag([2.0, 2.0, 4.0, 1.0])
    image = np.full((24, 24, 8), -1000, np.int16)
    image[4:20, 4:20, :] = 40
    label = np.zeros((24, 24, 8), np.uint8)
    label[8:14, 8:14, 5] = 1
    label[10:11, 10:11, 2] = 1
    pred = np.zeros_like(label)
    pred[8:12, 8:14, 5] = 1
    cases = [{"case_id": "c<1>", "role": "best", "dice": 0.8, "image": (image, aff), "label": (label, aff),
              "prediction": (pred, aff)},
             {"case_id": "c2", "label": (label, aff), "prediction": (np.zeros_like(label), aff)}]
    out = vis.overlay_montage(cases, tmp_path / "m.png")
    assert out == tmp_path / "m.png"
    img = _png(out)
    # overlap (yellow) and label-only (green) appear in the agreement panels; the prediction of case 1 is red
    assert _count(img, (255, 217, 0)) > 20  # tp, first row
    assert _count(img, (26, 230, 51)) > 20  # label outlines / fn
    assert _count(img, (255, 51, 51)) > 10  # prediction outline
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically, nothing left behind


def test_overlay_montage_of_2d_slices(tmp_path):
    img = np.linspace(0, 255, 32 * 32).reshape(32, 32)
    lab = np.zeros((32, 32), np.uint8)
    lab[5:15, 5:15] = 1
    out = vis.overlay_montage([{"case_id": "s1", "image": img, "label": lab, "prediction": lab}], tmp_path / "s.png")
    assert _count(_png(out), (255, 217, 0)) > 20


# ------------------------------------------------------------------------------------ training curves
def test_training_curves_read_back_what_was_written(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    losses = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]  # 3 iterations per epoch, 2 epochs
    with SummaryWriter(str(tmp_path / "tb" / "a")) as w:
        for it, v in enumerate(losses, start=1):
            w.add_scalar("train_loss", v, it)
        w.add_scalar("lr", 1e-3, 1)
        w.add_scalar("lr", 5e-4, 2)
    with SummaryWriter(str(tmp_path / "tb" / "b")) as w:  # a second file, as the evaluator writes
        w.add_scalar("val_mean_dice", 0.25, 1)
        w.add_scalar("val_mean_dice", 0.5, 2)
    scalars = vis.read_scalars(tmp_path)
    assert [v for _, v in scalars["train_loss"]] == pytest.approx(losses)
    assert scalars["val_mean_dice"] == [(1, 0.25), (2, 0.5)]
    curves, xlabel = vis.epoch_curves(scalars)
    assert xlabel == "epoch"
    assert curves["train_loss"][0] == [1, 2]
    assert curves["train_loss"][1] == pytest.approx([0.8, 0.4])  # per-epoch means
    assert curves["val_mean_dice"] == ([1, 2], [0.25, 0.5])
    out = vis.training_curves(tmp_path / "tb", tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and _png(out).std() > 5


def test_training_curves_without_logs_is_none(tmp_path, caplog):
    caplog.set_level("INFO")
    assert vis.training_curves(tmp_path, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
    assert "no TensorBoard scalars" in caplog.text


# ------------------------------------------------------------------------------------------- plots
PRESENCE = {"threshold": 0.5, "threshold_source": "default", "roc_auc": 0.75, "f1": 0.8,
            "confusion": {"tp": 4, "fp": 1, "tn": 2, "fn": 1},
            "roc": {"fpr": [0.0, 0.0, 1 / 3, 1.0], "tpr": [0.0, 0.6, 0.8, 1.0]}}


def test_roc_froc_confusion_plots(tmp_path):
    for fn, data in ((vis.roc_plot, PRESENCE), (vis.confusion_plot, PRESENCE),
                     (vis.froc_plot, {"froc": {"0.125": 0.2, "1.0": 0.5, "8.0": None}, "froc_mean": 0.35})):
        out = fn(data, tmp_path / f"{fn.__name__}.png")
        assert _png(out).std() > 5
    with pytest.raises(ValueError, match="ROC"):
        vis.roc_plot({"roc": {"fpr": [0.0], "tpr": []}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="FROC"):
        vis.froc_plot({"froc": {"1.0": None}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="confusion"):
        vis.confusion_plot({"confusion": {"tp": 1}}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------------------- 3D render
def test_render_3d_off_screen(tmp_path):
    reason = vis.offscreen_unavailable_reason()
    if reason:
        pytest.skip(f"off-screen rendering unavailable here: {reason}")
    aff = np.diag([3.0, 3.0, 4.0, 1.0])
    x, y, z = np.mgrid[:24, :24, :16]
    tumour = ((x - 8) ** 2 + (y - 12) ** 2 + (z - 8) ** 2) <= 16
    lung = np.zeros_like(tumour)
    lung[3:21, 4:20, 2:14] = True
    out = vis.render_3d({"lung": (lung, aff), "tumour": (tumour, aff)}, tmp_path / "r.png",
                        style={"tumour": {"color": "#ff0000"}}, window_size=(400, 300))
    img = _png(out)
    assert img.shape == (300, 400, 3)
    reddish = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert reddish.sum() > 50  # the solid tumour is visible through the translucent lung
    with pytest.raises(ValueError, match="empty"):
        vis.render_3d({"tumour": (np.zeros((4, 4, 4)), aff)}, tmp_path / "e.png")


def test_render_3d_unavailable_is_a_clear_error_not_a_crash(tmp_path, monkeypatch):
    if ctypes.util.find_library("OSMesa"):
        pytest.skip("libOSMesa is installed here, so forcing the OSMesa window does not break rendering")
    # VTK forced onto a missing OSMesa dies with SIGSEGV: the probe must turn that into a reason
    monkeypatch.setenv("VTK_DEFAULT_OPENGL_WINDOW", "vtkOSMesaRenderWindow")
    monkeypatch.setattr(vis, "_PROBE_CACHE", {})
    reason = vis.offscreen_unavailable_reason()
    assert reason and "test render" in reason
    with pytest.raises(vis.RenderUnavailableError, match="test render"):
        vis.render_3d({"t": (np.ones((3, 3, 3)), np.eye(4))}, tmp_path / "r.png")
    monkeypatch.setenv("MONAI_PIPELINE_NO_3D", "1")
    assert vis.offscreen_unavailable_reason() == "disabled by MONAI_PIPELINE_NO_3D"
