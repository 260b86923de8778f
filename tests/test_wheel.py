"""``pip install`` of the repository (its wheel) is all a bundle folder needs: a bundle copied anywhere runs with
``python -m monai.bundle run`` from its own folder, importing monai_pipeline from the installed wheel alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import BRAIN_BUNDLE, ROOT, VENV_BIN, bundle

PACKAGE = ROOT / "monai_pipeline"


def test_wheel_runs_a_copied_bundle(tmp_path):
    from monai_pipeline.app.synthetic import write_brain_slices

    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next(wheels.glob("monai_pipeline-*.whl"))
    # every package and subpackage of the source tree, and every file that is not Python, is in the wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert wanted - names == set(), sorted(wanted - names)
    assert any(n.endswith("entry_points.txt") for n in names)

    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    # the brain bundle as shipped (configs, docs, LICENSE, models/model.pt and its contract), far from the repository
    copy = tmp_path / "elsewhere" / BRAIN_BUNDLE.name
    shutil.copytree(BRAIN_BUNDLE, copy, ignore=lambda d, names: [n for n in names if n in ("eval", "data") or (
        Path(d).name == "models" and n not in ("model.pt", "model.contract.json"))])
    data = write_brain_slices(tmp_path / "lgg", num_patients=1, seed=0, size=64, num_slices=2)
    image = sorted(p for p in data.rglob("*.tif") if not p.stem.endswith("_mask"))[0]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="2")
    where = subprocess.run([str(VENV_BIN / "python"), "-c", "import monai_pipeline; print(monai_pipeline.__file__)"],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr  # not the repository's
    proc = subprocess.run(bundle("run", "--config_file", "configs/inference.json", "--datalist", json.dumps([str(image)]),
                                 "--num_workers", "0"),
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (copy / "eval" / f"{image.stem}_mask.png").is_file()
    assert str(ROOT) not in proc.stdout + proc.stderr  # nothing was read from the repository
