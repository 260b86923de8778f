"""An HTML report of one evaluated run: tables, plots, overlays and a 3D render in one self-contained folder.

``build_report(RUN_DIR)`` reads what ``monai-pipeline evaluate --out RUN_DIR`` wrote (every file optional:
``metrics.json``/``metrics.csv``, ``lesions.csv``, ``detection.json``, ``presence.json``, ``burden.csv``,
``lungs/<case>_lungs.nii.gz``; for 2D slice runs ``metrics.json`` with patients and slices and
``slice_metrics.csv``) and the TensorBoard event files found under RUN_DIR (or ``train_dir``), and writes
``index.html`` + ``img/*.png`` (default ``RUN_DIR/report/``). The page uses relative links only and inline
CSS: no network, no external scripts or fonts. Every string taken from a file is HTML-escaped. The folder is
built under a temporary name and renamed into place (an older report is first renamed aside, then deleted),
so a reader never sees a partly written report.

What is absent is listed on the page ("missing"); a figure that cannot be drawn is replaced by one line
saying why (e.g. "3D render unavailable: <reason>"), never by a crash of the report.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from monai_pipeline.data.validate import check_report_folders, check_something_to_report
from monai_pipeline.evaluation.metrics import CASE_METRIC_KEYS, summarise
from monai_pipeline.io.atomic import atomic_write_text, staged_folder
from monai_pipeline.io.images import read_mask
from monai_pipeline.io.naming import case_id
from monai_pipeline.report.plots import (RenderUnavailableError, confusion_plot, event_files, froc_plot, overlay_montage,
                                         pick_cases, render_3d, roc_plot, training_curves)

__all__ = ["build_report", "EXPECTED_FILES"]

logger = logging.getLogger(__name__)

EXPECTED_FILES = {
    "metrics.json": "per-case metrics and their summary (monai-pipeline evaluate --out)",
    "metrics.csv": "per-case metrics as a table",
    "lesions.csv": "one row per lesion (predicted and reference)",
    "detection.json": "lesion detection: sensitivity, precision, FROC, mAP",
    "presence.json": "tumour presence per case: ROC, confusion matrix",
    "burden.csv": "tumour burden and lung involvement per case",
}
SLICE_FILES = {
    "metrics.json": "per-patient and per-slice Dice (monai-pipeline evaluate --out on 2D slices)",
    "slice_metrics.csv": "per-slice metrics as a table",
}
MARKER = ".monai-pipeline-report"
SUMMARY_COLUMNS = ("mean", "median", "std", "ci95", "n", "n_undefined")
CASE_COLUMNS = ("dice", "iou", "precision", "recall", "specificity", "hd95_mm", "asd_mm", "surface_dice",
                "boundary_f1", "volume_pred_ml", "volume_label_ml", "volume_diff_ml")


# ------------------------------------------------------------------------------------------- reading
def _number(text: str) -> Any:
    if text is None or text == "":
        return None
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in low else v


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _number(v) for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@dataclass
class _Run:
    run_dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    event_roots: list[Path] = field(default_factory=list)
    lungs: dict[str, Path] = field(default_factory=dict)

    @property
    def slice_run(self) -> bool:
        m = self.data.get("metrics.json")
        return isinstance(m, dict) and "slices" in m and "cases" not in m

    def cases(self) -> list[dict]:
        """Per-case rows of a volume run (metrics.json, else metrics.csv)."""
        m = self.data.get("metrics.json")
        if isinstance(m, dict) and isinstance(m.get("cases"), list):
            return [r for r in m["cases"] if isinstance(r, dict)]
        return list(self.data.get("metrics.csv") or [])

    def resolve(self, p: Any) -> Path | None:
        """A file path from a metrics row: as written, else relative to the working folder or the run folder."""
        if not isinstance(p, str) or not p:
            return None
        for cand in (Path(p), Path.cwd() / p, self.run_dir / p):
            if cand.is_file():
                return cand
        return None


def _collect(run_dir: Path, train_dir: Path | None, out_dir: Path) -> _Run:
    run = _Run(run_dir)
    names = list(EXPECTED_FILES) + ["slice_metrics.csv"]
    for name in names:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            run.data[name] = _read_json(path) if name.endswith(".json") else _read_csv(path)
        except (OSError, ValueError, csv.Error, UnicodeDecodeError) as err:
            run.problems.append(f"{name}: unreadable ({type(err).__name__}: {err})")
            logger.warning("%s: unreadable (%s)", path, err)
    expected = SLICE_FILES if run.slice_run else EXPECTED_FILES
    for name, what in expected.items():
        if name not in run.data and not any(p.startswith(f"{name}:") for p in run.problems):
            run.missing.append(f"{name}: not found in the run folder ({what})")
    if not run.slice_run:
        lung_dir = run_dir / "lungs"
        run.lungs = {p.name[: -len("_lungs.nii.gz")]: p for p in sorted(lung_dir.glob("*_lungs.nii.gz"))}
        if not run.lungs:
            run.missing.append("lungs/<case>_lungs.nii.gz: no lung masks (the 3D render shows tumours only)")
        cases = run.cases()
        if cases and not any(r.get("image") for r in cases):
            run.missing.append("images: the metrics have no image paths (evaluate --images DIR): overlays are "
                               "drawn on black")
    # training logs: under the run folder (not the report being replaced) and under --train-dir
    roots = [run_dir] + ([train_dir] if train_dir else [])
    for root in roots:
        files = [f for f in event_files(root) if out_dir not in f.parents]
        if files:
            run.event_roots.extend(files)
    if not run.event_roots:
        where = "RUN_DIR" + (" or TRAIN_DIR" if train_dir else "")
        run.missing.append(f"training logs: no training logs (events.out.tfevents.*) found under {where} "
                           f"({', '.join(str(r) for r in roots)})")
    return run


# ------------------------------------------------------------------------------------------ html bits
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"{_fmt(v[0])} – {_fmt(v[1])}"
    return _e(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in r) + "</tr>"
                     for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _file_cell(p: Any) -> _Raw:
    if not isinstance(p, str) or not p:
        return _Raw("")
    return _Raw(f'<span title="{_e(p)}">{_e(Path(p).name)}</span>')


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.4}
header{background:#1f3b57;color:#fff;padding:14px 24px}header h1{margin:0;font-size:1.4em}
header p{margin:4px 0 0;font-size:.85em;opacity:.85;word-break:break-all}
nav{padding:6px 24px;background:#e8eef4;font-size:.9em}nav a{margin-right:14px;color:#1f3b57}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;margin:14px 0}
h2{font-size:1.15em;margin:4px 0 8px;color:#1f3b57}
table{border-collapse:collapse;font-size:.82em;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f3f6}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:8px 0;display:inline-block;vertical-align:top}figcaption{font-size:.8em;color:#555}
ul.missing li{color:#8a4b00}ul.problems li{color:#b00020}ul.found li{color:#225522}
.note{font-size:.85em;color:#555}.unavailable{color:#8a4b00;font-style:italic}
#page-status{display:none}#broken-warning{display:none;background:#fdd;color:#900;padding:8px 24px}
"""

# records, after the page has loaded, whether every image decoded and any script or resource error, into
# #page-status (data-* attributes); shows a warning bar when an image is broken
STATUS_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener('error', function (ev) {
    var t = ev.target;
    errors.push(t && t !== window && t.tagName ? 'failed to load ' + t.tagName.toLowerCase() + ' ' +
      (t.getAttribute('src') || '') : String(ev.message));
  }, true);
  var orig = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, ' '));
    if (orig) { orig.apply(console, arguments); }
  };
  window.addEventListener('load', function () {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute('src'); });
    var s = document.getElementById('page-status');
    s.setAttribute('data-images', String(imgs.length));
    s.setAttribute('data-broken', JSON.stringify(broken));
    s.setAttribute('data-errors', JSON.stringify(errors));
    s.setAttribute('data-ready', '1');
    if (broken.length) {
      var w = document.getElementById('broken-warning');
      w.textContent = broken.length + ' image(s) failed to load: ' + broken.join(', ');
      w.style.display = 'block';
    }
  });
})();
"""


# ---------------------------------------------------------------------------------------- the report
class _Builder:
    def __init__(self, run: _Run, img_dir: Path, max_lesion_rows: int):
        self.run = run
        self.img_dir = img_dir
        self.max_lesion_rows = max_lesion_rows
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, html)

    def figure(self, name: str, what: str, draw: Callable[[Path], Path | None], caption: str = "") -> str:
        """Run a picture function into img/<name>.png; on failure one line saying why."""
        dest = self.img_dir / f"{name}.png"
        try:
            out = draw(dest)
        except RenderUnavailableError as err:
            msg = f"{what} unavailable: {err}"
        except Exception as err:  # noqa: BLE001 - a picture that fails must not stop the report
            logger.warning("%s failed", what, exc_info=True)
            msg = f"{what} unavailable: {type(err).__name__}: {err}"
        else:
            if out is None:
                msg = f"{what}: nothing to draw"
            else:
                cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
                return f'<figure><img src="img/{_e(name)}.png" alt="{_e(what)}">{cap}</figure>'
        self.run.notes.append(msg)
        return f'<p class="unavailable">{_e(msg)}</p>'

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    # -- sections
    def contents(self) -> None:
        run = self.run
        found = [n for n in list(EXPECTED_FILES) + ["slice_metrics.csv"] if n in run.data]
        if run.lungs:
            found.append(f"lungs/: {len(run.lungs)} lung mask(s)")
        if run.event_roots:
            found.append(f"training logs: {len(run.event_roots)} TensorBoard event file(s)")
        parts = ["<h3>found</h3><ul class='found'>" + "".join(f"<li>{_e(x)}</li>" for x in found) + "</ul>"]
        parts.append("<h3>missing</h3><ul class='missing' id='missing'>"
                     + ("".join(f"<li>{_e(x)}</li>" for x in run.missing) or "<li>nothing</li>") + "</ul>")
        if run.problems:
            parts.append("<h3>unreadable</h3><ul class='problems'>"
                         + "".join(f"<li>{_e(x)}</li>" for x in run.problems) + "</ul>")
        self.add("contents", "What was found", "\n".join(parts))

    def summary(self) -> None:
        run = self.run
        m = run.data.get("metrics.json")
        if run.slice_run:
            keys = [k for k, v in m.items() if not isinstance(v, (list, dict))]
            body = _table(["figure", "value"], [[k, m[k]] for k in keys if k != "rules"])
            if m.get("rules"):
                body += f"<p class='note'>{_e(m['rules'])}</p>"
            self.add("summary", "Summary (2D slices)", body)
            return
        cases = run.cases()
        summary = m.get("summary") if isinstance(m, dict) and isinstance(m.get("summary"), dict) else None
        source = "metrics.json"
        if summary is None and cases:
            keys = [k for k in CASE_METRIC_KEYS if any(isinstance(r.get(k), (int, float)) for r in cases)]
            summary = summarise(cases, keys)
            source = "computed from metrics.csv (bootstrap 95 % CI of the mean, 2000 resamples)"
        if not summary:
            return
        rows = [[k] + [s.get(c) for c in SUMMARY_COLUMNS] for k, s in summary.items() if isinstance(s, dict)]
        body = _table(["metric", "mean", "median", "std", "95% CI of mean", "n", "undefined"], rows)
        extra = []
        if isinstance(m, dict):
            if m.get("tolerance_mm") is not None:
                extra.append(f"surface tolerance {_fmt(m['tolerance_mm'])} mm")
            if m.get("rules"):
                extra.append(_e(m["rules"]))
        extra.append(f"source: {_e(source)}; {len(cases)} case(s)")
        body += "".join(f"<p class='note'>{x}</p>" for x in extra)
        self.add("summary", "Summary", body)

    def per_case(self) -> None:
        run = self.run
        if run.slice_run:
            m = run.data["metrics.json"]
            patients = [r for r in m.get("patients", []) if isinstance(r, dict)]
            if patients:
                cols = [c for c in ("dice", "n_slices", "n_tumour_slices") if any(c in r for r in patients)]
                body = _table(["patient", *cols], [[r.get("patient"), *[r.get(c) for c in cols]] for r in patients])
                body += f"<p class='note'>{len(m.get('slices', []))} slice(s) scored (slice_metrics.csv)</p>"
                self.add("cases", "Per patient", f"<div class='scroll'>{body}</div>")
            return
        cases = run.cases()
        if not cases:
            return
        cols = [c for c in CASE_COLUMNS if any(c in r for r in cases)]
        files = [c for c in ("image", "label", "prediction") if any(r.get(c) for r in cases)]
        rows = [[r.get("case_id"), *[r.get(c) for c in cols], *[_file_cell(r.get(c)) for c in files]] for r in cases]
        body = _table(["case", *cols, *files], rows)
        self.add("cases", f"Per case ({len(cases)})", f"<div class='scroll'>{body}</div>"
                 "<p class='note'>n/a: undefined (see the rules under Summary). Hover a file name for its path.</p>")

    def overlays(self) -> None:
        run = self.run
        if run.slice_run:
            rows = [r for r in run.data["metrics.json"].get("slices", [])
                    if isinstance(r, dict) and (r.get("label_pixels") or 0) > 0]
        else:
            rows = run.cases()
        chosen, skipped = [], []
        for role, r in pick_cases(rows):
            label, pred = run.resolve(r.get("label")), run.resolve(r.get("prediction"))
            if label is None or pred is None:
                skipped.append(f"{r.get('case_id') or r.get('slice_id')}: label or prediction file not found")
                continue
            image = run.resolve(r.get("image"))
            if image is None and run.slice_run and label.name.lower().split(".")[0].endswith("_mask"):
                cand = label.with_name(label.name.replace("_mask", "", 1))
                image = cand if cand.is_file() else None
            chosen.append({"role": role, "case_id": r.get("case_id") or r.get("slice_id"), "dice": r.get("dice"),
                           "label": str(label), "prediction": str(pred), "image": str(image) if image else None})
        if not chosen:
            if rows:
                msg = "overlays unavailable: " + ("; ".join(skipped) or "no case has a Dice value")
                run.notes.append(msg)
                self.add("overlays", "Overlays", f'<p class="unavailable">{_e(msg)}</p>')
            return
        body = self.figure("overlays", "overlays", lambda d: overlay_montage(chosen, d),
                           "best, median and worst case by Dice; slice with the largest reference area")
        body += "".join(f'<p class="unavailable">{_e(s)}</p>' for s in skipped)
        self.add("overlays", "Overlays", body)

    def detection(self) -> None:
        det = self.run.data.get("detection.json")
        if not isinstance(det, dict):
            return
        keys = ["n_cases", "n_label_lesions", "n_pred_lesions", "sensitivity", "precision", "froc_mean", "map_50",
                "iou_threshold"]
        body = _table(["figure", "value"], [[k, det.get(k)] for k in keys if k in det])
        if isinstance(det.get("froc"), dict):
            body += _table(["false positives per case", *det["froc"].keys()], [["sensitivity", *det["froc"].values()]])
        body += self.figure("froc", "FROC plot", lambda d: froc_plot(det, d))
        self.add("detection", "Lesion detection", body)

    def presence(self) -> None:
        pres = self.run.data.get("presence.json")
        if not isinstance(pres, dict):
            return
        figs = [[k, pres.get(k)] for k in ("threshold", "threshold_source", "roc_auc", "f1") if k in pres]
        conf = pres.get("confusion") if isinstance(pres.get("confusion"), dict) else {}
        figs += [[k, conf.get(k)] for k in ("tp", "fp", "tn", "fn") if k in conf]
        body = _table(["figure", "value"], figs)
        body += self.figure("roc", "ROC plot", lambda d: roc_plot(pres, d))
        body += self.figure("confusion", "confusion matrix", lambda d: confusion_plot(pres, d))
        cases = [c for c in pres.get("cases", []) if isinstance(c, dict)]
        if cases:
            body += "<div class='scroll'>" + _table(
                ["case", "score", "tumour in reference", "tumour predicted"],
                [[c.get("case_id"), c.get("score"), c.get("label_present"), c.get("pred_present")] for c in cases]) \
                + "</div>"
        self.add("presence", "Tumour presence per case", body)

    def lesions(self) -> None:
        rows = self.run.data.get("lesions.csv")
        if rows is None:
            return
        n = self.max_lesion_rows
        cols = list(rows[0].keys()) if rows else []
        by_source: dict[str, int] = {}
        for r in rows:
            by_source[str(r.get("source"))] = by_source.get(str(r.get("source")), 0) + 1
        counts = ", ".join(f"{v} {k}" for k, v in sorted(by_source.items()))
        body = f"<p>{len(rows)} lesion row(s){' (' + _e(counts) + ')' if counts else ''}; showing the first " \
               f"{min(n, len(rows))}.</p>"
        if rows:
            body += "<div class='scroll'>" + _table(cols, [[r.get(c) for c in cols] for r in rows[:n]]) + "</div>"
        self.add("lesions", "Lesions", body)

    def burden(self) -> None:
        rows = self.run.data.get("burden.csv")
        if not rows:
            return
        cols = list(rows[0].keys())
        cell = lambda v: _file_cell(v) if isinstance(v, str) and os.sep in v else v  # noqa: E731 - paths short
        self.add("burden", "Tumour burden", "<div class='scroll'>" + _table(
            cols, [[cell(r.get(c)) for c in cols] for r in rows]) + "</div>")

    def render(self) -> None:
        run = self.run
        if run.slice_run:
            return
        usable = [r for r in run.cases() if run.resolve(r.get("label")) and run.resolve(r.get("prediction"))]
        if not usable and not run.lungs:
            return

        def lung_of(r: Mapping) -> Path | None:
            cid = str(r.get("case_id") or "")
            return run.lungs.get(cid) or run.lungs.get(case_id(cid))

        pool = [r for r in usable if lung_of(r)] or usable
        scored = sorted(pool, key=lambda r: r["dice"] if isinstance(r.get("dice"), (int, float)) else -1.0)
        row = scored[(len(scored) - 1) // 2] if scored else None

        def draw(dest: Path) -> Path:
            masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            lung = lung_of(row) if row else next(iter(run.lungs.values()))
            if lung:
                arr, aff = read_mask(lung)
                masks["right lung"] = (arr == 1, aff)
                masks["left lung"] = (arr == 2, aff)
            if row:
                masks["reference tumour"] = read_mask(run.resolve(row["label"]))
                masks["predicted tumour"] = read_mask(run.resolve(row["prediction"]))
            style = {"right lung": {"color": "#9ecae1"}, "left lung": {"color": "#c6dbef"},
                     "reference tumour": {"color": "#2ca02c"}, "predicted tumour": {"color": "#d62728", "opacity": 0.5}}
            return render_3d(masks, dest, style=style, title=str(row.get("case_id")) if row else None)

        what = f"case {row.get('case_id')}" if row else "lungs"
        body = self.figure("render3d", "3D render", draw,
                           f"{what} (median Dice{' among cases with lung masks' if run.lungs else ''}): lungs "
                           "translucent, reference tumour green, predicted tumour red (half transparent)")
        self.add("render3d", "3D render", body)

    def curves(self) -> None:
        run = self.run
        if not run.event_roots:
            msg = next(m for m in run.missing if m.startswith("training logs"))
            self.add("training", "Training", f'<p class="unavailable">{_e(msg)}</p>')
            return
        body = self.figure("training_curves", "training curves", lambda d: training_curves(run.event_roots, d),
                           f"{len(run.event_roots)} TensorBoard event file(s)")
        self.add("training", "Training", body)

    def html(self, title: str, subtitle: str) -> str:
        nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in self.sections)
        secs = "\n".join(f'<section id="{a}"><h2>{_e(t)}</h2>\n{b}\n</section>' for a, t, b in self.sections)
        notes = ""
        if self.run.notes:
            notes = ('<section id="notes"><h2>Not drawn</h2><ul class="missing">'
                     + "".join(f"<li>{_e(n)}</li>" for n in self.run.notes) + "</ul></section>")
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="monai-pipeline report">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
<script>{STATUS_SCRIPT}</script>
</head><body>
<div id="broken-warning"></div>
<header><h1>{_e(title)}</h1><p>{subtitle}</p></header>
<nav>{nav}</nav>
<main>
{secs}
{notes}
</main>
<div id="page-status" data-ready="0"></div>
</body></html>
"""


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 train_dir: str | os.PathLike | None = None, max_lesion_rows: int = 50) -> Path:
    """Write the HTML report of an evaluated run.

    Args:
        run_dir: the folder ``monai-pipeline evaluate --out`` wrote (every file optional, see the module
            docstring); TensorBoard event files anywhere under it are read too.
        out_dir: report folder (default ``run_dir/report``); an older report there is replaced. A folder
            that exists and is not a report made here is refused.
        train_dir: another folder searched for TensorBoard event files (a bundle's ``output_dir``).
        max_lesion_rows: rows of ``lesions.csv`` shown (the count of all is stated).

    Returns:
        the path of ``index.html``.

    Raises:
        DataError: ``run_dir`` is not a folder or holds nothing to report; ``out_dir`` is not a report folder.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    check_report_folders(run_dir, train_dir, out, MARKER)
    run = _collect(run_dir, Path(train_dir) if train_dir else None, out.resolve())
    check_something_to_report(run_dir, bool(run.data or run.event_roots),
                              ["metrics.json", *[n for n in EXPECTED_FILES if n != "metrics.json"], "slice_metrics.csv"],
                              run.problems)

    with staged_folder(out, lock=out, purpose="report") as tmp:
        (tmp / "img").mkdir()
        b = _Builder(run, tmp / "img", max_lesion_rows)
        b.contents()
        b.summary()
        b.overlays()
        b.per_case()
        b.detection()
        b.presence()
        b.lesions()
        b.burden()
        b.render()
        b.curves()
        stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        title = f"monai-pipeline report: {run_dir.resolve().name}"
        subtitle = f"run folder {_e(run_dir.resolve())} &middot; written {_e(stamp)}"
        if run.slice_run:
            subtitle += " &middot; 2D slice run"
        atomic_write_text(tmp / "index.html", b.html(title, subtitle))
        (tmp / MARKER).write_text("report folder written by monai-pipeline; replaced whole on the next report\n")
    logger.info("report written to %s", out / "index.html")
    return out / "index.html"
