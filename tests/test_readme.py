"""The README's "right after cloning" commands run as printed, with the shipped models, on real scans."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, run_cmd


def _after_cloning() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Right after cloning", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_segments_real_scans_with_the_shipped_models(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (the workplace's public data) is not beside the repository")
    cmds = _after_cloning()
    assert cmds[0] == "bash scripts/setup_env.sh" and len(cmds) == 4
    # the layout the commands assume: the repository (its .venv) with ../shared beside it
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    for cmd in cmds[1:]:  # setup_env.sh is what the test run itself started with
        run_cmd(shlex.split(cmd), cwd=repo, timeout=600)
    from monai_pipeline.io.images import read_image, read_properties

    lgg = sorted((repo / "out" / "lgg").glob("*_mask.png")) or sorted((repo / "out" / "lgg").rglob("*.png"))
    assert len(lgg) == len(list((SHARED_DATA / "lgg_kaggle_3m" / "TCGA_HT_7874_19950902").glob("*_mask.tif")))
    lidc = next((repo / "out" / "lidc").glob("*_seg.nii.gz"))
    mask, props = read_image(lidc)
    ref, ref_props = read_image(SHARED_DATA / "lidc_nodules" / "LIDC-IDRI-0004_1_nodule_mask.nii.gz")
    assert props.same_grid(ref_props) and 2 * ((mask > 0) & (ref > 0)).sum() / ((mask > 0).sum() + (ref > 0).sum()) > 0.5
    case = next((repo / "out" / "lung1").iterdir())
    rows = list(csv.DictReader(open(case / "lesions.csv")))
    # what the model finds there is a benchmark's business (scripts/benchmark_delineate.py): here, that the run
    # completed and wrote every file on the CT's grid
    assert len(rows) == 1 and rows[0]["status"] in ("ok", "capped", "empty") and float(rows[0]["volume_ml"]) >= 0
    lung1 = SHARED_DATA / "nsclc_radiomics" / "LUNG1-001"
    assert read_properties(next(case.glob("*_nodules.nii.gz"))).same_grid(read_properties(lung1))
    assert next(case.glob("*_seg.dcm")).stat().st_size > 0 and next(case.glob("*.seg.nrrd")).is_file()
    assert len(list(case.glob("*.mrk.json"))) == (0 if rows[0]["status"] == "empty" else 2)
    assert np.isfinite(float(rows[0]["long_mm"]))
    assert Path(case).name.startswith("dcm-")  # a pseudonym, never the patient's name or ID
