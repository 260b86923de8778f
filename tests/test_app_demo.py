"""The demo end to end on tiny phantoms: every stage runs and the summary is honest."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from conftest import TINY
from monai_pipeline.app.demo import run_demo
from monai_pipeline.app.synthetic import PhantomSpec


def test_demo_end_to_end(tmp_path, capsys):
    settings = {TINY[i].lstrip("-"): json.loads(TINY[i + 1]) for i in range(0, len(TINY), 2)}
    summary = run_demo(tmp_path / "demo", epochs=2, num_train=5, num_test=2, seed=1,
                       spec=PhantomSpec((48, 48, 24), (5.0, 5.0, 8.0)), settings=settings)
    out = capsys.readouterr().out
    assert "mean Dice" in out and "slicer.util.loadVolume" in out
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    assert len(summary["test_dice"]) == 2 and (tmp_path / "demo" / "models" / "model.pt").is_file()
    for row in summary["test_dice"]:  # the reported Dice is the Dice of the files on disk (nibabel, by hand)
        p = np.asarray(nib.load(row["mask"]).dataobj) > 0
        g = np.asarray(nib.load(str(tmp_path / "demo" / "data" / "labelsTs" / row["case"])).dataobj) > 0
        expected = 1.0 if not (p.any() or g.any()) else 2 * (p & g).sum() / (p.sum() + g.sum())
        assert np.isclose(expected, row["dice"])
