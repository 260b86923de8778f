"""``monai-pipeline report``: the HTML report of a run, with everything present, with pieces missing, refused
when there is nothing to report, and opened in headless Chromium (screenshot, images loaded, no errors)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import debian_tool
from monai_pipeline.report import plots as visualize
from monai_pipeline.app.cli import main
from monai_pipeline.report.html import build_report

EVIL = "case<script>alert(1)</script>&"


# ------------------------------------------------------------------------------------------ a run
def _write_run(root: Path, n_cases: int = 3) -> Path:
    """A run folder as evaluate --out writes it, from small generated volumes, plus TensorBoard logs."""
    from torch.utils.tensorboard import SummaryWriter

    from monai_pipeline.evaluation.lesions import detection_summary, match_lesions

    from monai_pipeline.evaluation.run import score_pairs

    from monai_pipeline.evaluation.metrics import CASE_METRIC_KEYS, summarise
    from monai_pipeline.io.images import write_nifti

    run, data = root / "run", root / "data"
    aff = np.diag([4.0, 4.0, 5.0, 1.0])
    aff[:3, 3] = [-48.0, -48.0, -30.0]
    pairs, images, matches, lesion_rows = [], {}, [], []
    x, y, z = np.mgrid[:24, :24, :12]
    for c in range(n_cases):
        body = ((x - 11.5) ** 2 / 100 + (y - 11.5) ** 2 / 64) <= 1
        lungs = np.zeros((24, 24, 12), np.uint8)
        lungs[(((x - 16) ** 2 + (y - 12) ** 2) <= 16) & (z > 1) & (z < 10)] = 1  # high i: patient right
        lungs[(((x - 7) ** 2 + (y - 12) ** 2) <= 16) & (z > 1) & (z < 10)] = 2
        image = np.where(body, 40, -1000).astype(np.int16)
        image[lungs > 0] = -850
        label = ((((x - 16) ** 2 + (y - 12) ** 2 + (z - 6) ** 2) <= 4 + c)).astype(np.uint8)
        pred = np.roll(label, c, axis=0)
        image[label > 0] = 25
        cid = f"lung_{c:03d}"
        write_nifti(image, aff, data / "images" / f"{cid}.nii.gz")
        write_nifti(label, aff, data / "labels" / f"{cid}.nii.gz")
        write_nifti(pred, aff, data / "pred" / f"{cid}_seg.nii.gz")
        write_nifti(lungs, aff, run / "lungs" / f"{cid}_lungs.nii.gz")
        pairs.append((data / "pred" / f"{cid}_seg.nii.gz", data / "labels" / f"{cid}.nii.gz"))
        images[cid] = data / "images" / f"{cid}.nii.gz"
        m = match_lesions(pred, label, aff)
        matches.append(m)
        for source, rows in m.items():
            for r in rows:
                lesion_rows.append([cid, source, r["id"], r["voxels"], r["volume_ml"], *r["centroid_ras_mm"],
                                    r["longest_axial_diameter_mm"], r.get("confidence_max", ""),
                                    r.get("hit", r.get("detected")), r.get("best_box_iou", "")])
    rows = score_pairs(pairs)
    for r in rows:
        r["case_id"] = r["case_id"].removesuffix(".nii.gz")
        r["image"] = str(images[r["case_id"]])
    rows[0]["case_id"] = EVIL
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"mean_dice": float(np.mean([r["dice"] for r in rows])),
                                                  "summary": summarise(rows, CASE_METRIC_KEYS, n_boot=200),
                                                  "rules": "rules <b>", "tolerance_mm": 2.0, "cases": rows}))
    cols = ["case_id", *CASE_METRIC_KEYS, "prediction", "label", "image"]
    (run / "metrics.csv").write_text(",".join(cols) + "\n" + "".join(
        ",".join("" if r[c] is None else str(r[c]) for c in cols) + "\n" for r in rows[1:]))
    (run / "lesions.csv").write_text(
        "case_id,source,lesion_id,voxels,volume_ml,centroid_ras_x,centroid_ras_y,centroid_ras_z,"
        "longest_axial_diameter_mm,confidence,hit_or_detected,best_box_iou\n"
        + "".join(",".join(str(v) for v in r) + "\n" for r in lesion_rows))
    (run / "detection.json").write_text(json.dumps(detection_summary(matches)))
    (run / "presence.json").write_text(json.dumps(
        {"threshold": 0.5, "threshold_source": "default", "roc_auc": 0.75, "f1": 0.8,
         "confusion": {"tp": 2, "fp": 1, "tn": 0, "fn": 0}, "roc": {"fpr": [0, 0, 1], "tpr": [0, 1, 1]},
         "cases": [{"case_id": r["case_id"], "score": 0.9, "label_present": True, "pred_present": True}
                   for r in rows]}))
    (run / "burden.csv").write_text("case_id,tumour_ml,n_lesions,lung_left_ml,lung_right_ml,involved_left_pct,"
                                    "involved_right_pct\n" + "".join(f"lung_{c:03d},1.5,1,20,21,0,7.5\n"
                                                                     for c in range(n_cases)))
    with SummaryWriter(str(run / "tensorboard")) as w:
        for it in range(1, 7):
            w.add_scalar("train_loss", 1.0 / it, it)
        for ep in (1, 2):
            w.add_scalar("val_mean_dice", 0.3 * ep, ep)
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return _write_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def full_report(full_run) -> Path:
    return build_report(full_run)


def _img_srcs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


# ------------------------------------------------------------------------------------------ tests
def test_full_report(full_run, full_report):
    assert full_report == full_run / "report" / "index.html"
    page = full_report.read_text()
    for title in ("What was found", "Summary", "Overlays", "Per case (3)", "Lesion detection",
                  "Tumour presence per case", "Lesions", "Tumour burden", "3D render", "Training"):
        assert f">{title}</h2>" in page, title
    srcs = _img_srcs(page)
    expected = {"img/overlays.png", "img/froc.png", "img/roc.png", "img/confusion.png", "img/training_curves.png"}
    if visualize.offscreen_unavailable_reason() is None:
        expected.add("img/render3d.png")
    else:
        assert "3D render unavailable: " in page
    assert expected <= set(srcs)
    for s in srcs:
        assert not s.startswith(("/", "http", "file:")) and (full_report.parent / s).is_file()
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(https?:|//|file:)', page) and "<link" not in page and "@import" not in page
    # strings from files are escaped
    assert "<script>alert(1)" not in page and html.escape(EVIL) in page
    assert "rules &lt;b&gt;" in page
    missing = re.search(r"<ul class='missing' id='missing'>(.*?)</ul>", page, re.S).group(1)
    assert missing == "<li>nothing</li>"
    # lesion table: counted, first rows shown
    n_lesions = len((full_run / "lesions.csv").read_text().splitlines()) - 1
    assert f"{n_lesions} lesion row(s)" in page
    # atomic: no temporary or old folders left
    assert not [p.name for p in full_run.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_report_with_pieces_missing_names_them(tmp_path, full_run, monkeypatch):
    monkeypatch.setenv("MONAI_PIPELINE_NO_3D", "1")
    run = tmp_path / "run"
    run.mkdir()
    metrics = json.loads((full_run / "metrics.json").read_text())
    for r in metrics["cases"]:
        r.pop("image")
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "presence.json").write_text("{not json")
    page = build_report(run).read_text()
    missing = re.search(r"<ul class='missing' id='missing'>(.*?)</ul>", page, re.S).group(1)
    for name in ("metrics.csv", "lesions.csv", "detection.json", "burden.csv", "lungs/",
                 "no training logs (events.out.tfevents.*) found under RUN_DIR", "no image paths"):
        assert name in missing, name
    assert "presence.json: unreadable (JSONDecodeError" in page  # a broken file is named, not a crash
    assert "3D render unavailable: disabled by MONAI_PIPELINE_NO_3D" in page
    assert ">Overlays</h2>" in page and "img/overlays.png" in page  # drawn on black without images
    assert ">Summary</h2>" in page and ">Lesions</h2>" not in page


def test_training_logs_from_train_dir_and_replacing_a_report(tmp_path, full_run, monkeypatch):
    monkeypatch.setenv("MONAI_PIPELINE_NO_3D", "1")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(full_run / "detection.json", run)
    out = tmp_path / "rep"
    first = build_report(run, out_dir=out)
    assert "no training logs" in first.read_text() and "training_curves.png" not in first.read_text()
    second = build_report(run, out_dir=out, train_dir=full_run / "tensorboard")
    assert second == first and "img/training_curves.png" in second.read_text()
    assert (out / "img" / "training_curves.png").is_file()
    # a folder that is not a report is never replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["report", str(run), "--out", str(other)]) == 2
    assert (other / "keep.txt").exists()
    assert main(["report", str(run), "--out", str(run)]) == 2


def test_slice_run(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MONAI_PIPELINE_NO_3D", "1")
    d = tmp_path / "slices"
    d.mkdir()
    rows = []
    for k, dice in enumerate([0.9, 0.5, 0.1]):
        img = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + k: 14 + k, 4:14] = 255
        Image.fromarray(np.stack([img] * 3, -1)).save(d / f"P1_{k}.tif")
        Image.fromarray(mask).save(d / f"P1_{k}_mask.tif")
        Image.fromarray(np.roll(mask, 2, 0)).save(d / f"P1_{k}_mask.png")
        rows.append({"patient": "P1", "slice_id": f"P1_{k}", "dice": dice, "iou": dice / 2, "pred_pixels": 100,
                     "label_pixels": 100, "intersection": 80, "both_empty": False,
                     "prediction": str(d / f"P1_{k}_mask.png"), "label": str(d / f"P1_{k}_mask.tif")})
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"mean_patient_dice": 0.5, "n_patients": 1, "n_slices": 3,
                                                  "patients": [{"patient": "P1", "dice": 0.5, "n_slices": 3,
                                                                "n_tumour_slices": 3}], "slices": rows}))
    page = build_report(run).read_text()
    assert "Summary (2D slices)" in page and "Per patient" in page and "img/overlays.png" in page
    missing = re.search(r"<ul class='missing' id='missing'>(.*?)</ul>", page, re.S).group(1)
    assert "slice_metrics.csv" in missing and "lesions.csv" not in missing


def test_nothing_to_report_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: nothing to report: no metrics.json" in err and "training logs" in err
    assert not (empty / "report").exists()
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_cli_prints_where_the_report_is(tmp_path, full_run, capsys, monkeypatch):
    monkeypatch.setenv("MONAI_PIPELINE_NO_3D", "1")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(full_run / "presence.json", run)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    assert f"report: {tmp_path / 'r' / 'index.html'}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- chromium
@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable: on PATH, or installed with apt-get when running as root; else skip, saying why."""
    return debian_tool(("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"), "chromium")


def _run_chromium(exe: str, profile_root: Path, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    profile = profile_root / f"profile-{time.monotonic_ns()}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _page_status(dom: str) -> dict:
    m = re.search(r'<div id="page-status"([^>]*)>', dom)
    assert m, f"no #page-status in the dumped DOM:\n{dom[-2000:]}"
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1)))
    return {k: html.unescape(v) for k, v in attrs.items()}


def test_report_in_headless_chromium(chromium, full_report, tmp_path):
    from PIL import Image

    url = full_report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    proc = _run_chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
                         "--hide-scrollbars", url)
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-3000:]}"
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2000)
        px = np.asarray(im.convert("RGB")).astype(int)
    assert px.std() > 20  # not blank
    assert (np.abs(px - 250).max(axis=-1) > 40).mean() > 0.05  # a real share of the page is not background
    # after load, the page's own script records every image's state and any error into #page-status
    proc = _run_chromium(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", url)
    status = _page_status(proc.stdout)
    assert status["ready"] == "1", proc.stderr[-3000:]
    assert int(status["images"]) == len(_img_srcs(full_report.read_text())) >= 5
    assert json.loads(status["broken"]) == []
    assert json.loads(status["errors"]) == []
    # the check does catch a broken image: a copy of the report with one picture removed
    broken = tmp_path / "broken"
    shutil.copytree(full_report.parent, broken)
    (broken / "img" / "froc.png").unlink()
    proc = _run_chromium(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                         (broken / "index.html").resolve().as_uri())
    status = _page_status(proc.stdout)
    assert json.loads(status["broken"]) == ["img/froc.png"]
    assert any("froc.png" in e for e in json.loads(status["errors"]))
