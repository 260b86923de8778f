"""The package's shape holds: layers import downwards only (import-linter), the twins stay single, and
building the CLI's parser imports nothing heavy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "monai_pipeline"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(ROOT / "setup.cfg"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def test_layers_contract_is_kept():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_a_back_arrow_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package whose I/O layer imports the engine is refused."""
    copy = tmp_path / "monai_pipeline"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    naming = copy / "io" / "naming.py"
    naming.write_text(naming.read_text() + "\nfrom monai_pipeline.engine.runtime import default_device  # noqa\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout.upper(), proc.stdout[-3000:]
    assert "monai_pipeline.io.naming -> monai_pipeline.engine.runtime" in proc.stdout


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_one_lps_ras_conversion():
    """diag(-1, -1, 1) (LPS <-> RAS) is written once, in io/images.py."""
    hits = [f for f, text in _sources().items() if re.search(r"diag\(\[\s*-1(\.0)?,\s*-1(\.0)?,\s*1", text)]
    assert hits == ["monai_pipeline/io/images.py"], hits


def test_single_helpers():
    """One folder pairing, one atomic-folder helper, one ``first``, one geometry tolerance."""
    src = _sources()
    defs = lambda pattern: sorted(f for f, t in src.items() if re.search(pattern, t, re.M))  # noqa: E731
    assert defs(r"^def pair_folders\(") == ["monai_pipeline/io/naming.py"]
    assert defs(r"^def (pair_cases|_first)\(") == []
    assert defs(r"^def first\(") == ["monai_pipeline/io/naming.py"]
    assert defs(r"\.tmp-\{uuid") == ["monai_pipeline/io/atomic.py"]
    assert defs(r"^def replace_folder\(") == ["monai_pipeline/io/atomic.py"]
    assert defs(r"atol=1e-[34]") == [], "geometry comparisons go through ImageProperties.same_grid"


def test_parser_imports_nothing_heavy():
    code = ("import sys; from monai_pipeline.app.cli import build_parser; build_parser(); "
            "heavy = sorted(m for m in ('torch', 'monai', 'vtk', 'vtkmodules', 'matplotlib', 'SimpleITK', 'nibabel') "
            "if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("old, new", [("monai_pipeline.inference", "PrecisionInferer"),
                                      ("monai_pipeline.training", "NonFiniteGuard"),
                                      ("monai_pipeline.export", "SaveMaskd"),
                                      ("monai_pipeline.bundles", "run_bundle")])
def test_old_module_paths_still_import(old, new):
    """Users' own configs name classes by their 0.1 paths: those still resolve (MONAI's locate)."""
    from monai.utils.module import locate

    assert locate(f"{old}.{new}").__name__ == new


def test_data_error_raised_only_by_readers_and_validation():
    """Input faults are found by the I/O readers and the data stage; stages above them call those checks."""
    raisers = sorted({f.split("/")[1] for f, text in _sources().items() if "raise DataError" in text})
    assert raisers == ["data", "io"], raisers
