"""``monai-pipeline check``: every problem of a dataset in one table, real quirks reported without failing."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np

from conftest import VENV_BIN, run_cmd, shared
from monai_pipeline.data.check import check_dataset


def _cli(*args, cwd):
    return run_cmd([str(VENV_BIN / "monai-pipeline"), "check", *map(str, args)], cwd=cwd, check=False)


def test_real_brats_quirks_are_warnings(tmp_path):
    root = shared("brats2015")
    proc = _cli(root, "--json", tmp_path / "f.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    findings = json.loads((tmp_path / "f.json").read_text())
    assert {f["severity"] for f in findings} == {"warning"}
    assert sum("OTMultiClass.nii.gz" in f["path"] and "stored as float32" in f["problem"] for f in findings) == 4
    assert sum("brainmask.nii.gz" in f["path"] and "0.99999997" in f["problem"] for f in findings) == 4
    assert "0 error(s), 8 warning(s)" in proc.stdout


def test_real_lgg_and_slicer_data_are_clean(tmp_path):
    for name in ("lgg_kaggle_3m", "ct_chest_slicerio"):
        proc = _cli(shared(name), cwd=tmp_path)
        assert proc.returncode == 0 and "0 error(s)" in proc.stdout, proc.stdout


def test_every_problem_is_listed_not_only_the_first(tiny_msd, tmp_path):
    root = tmp_path / "Task06_Lung"
    shutil.copytree(tiny_msd, root)
    meta = json.loads((root / "dataset.json").read_text())
    cases = [e["image"].split("/")[-1] for e in meta["training"]]
    # 1: truncated image
    data = (root / "imagesTr" / cases[0]).read_bytes()
    (root / "imagesTr" / cases[0]).write_bytes(data[: len(data) // 2])
    # 2: label value 3 where only 0/1 are declared
    lab = nib.load(str(root / "labelsTr" / cases[1]))
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(arr, lab.affine, lab.header), str(root / "labelsTr" / cases[1]))
    # 3: NaN voxels in an image
    img = nib.load(str(root / "imagesTr" / cases[2]))
    vol = np.asarray(img.dataobj).astype(np.float32)
    vol[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), str(root / "imagesTr" / cases[2]))
    # 4: a label on another grid
    lab = nib.load(str(root / "labelsTr" / cases[3]))
    shifted = lab.affine.copy()
    shifted[0, 3] += 7.0
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), shifted), str(root / "labelsTr" / cases[3]))
    # 5: a test image that is a training image
    test_name = meta["test"][0].split("/")[-1]
    shutil.copy(root / "imagesTr" / cases[4], root / "imagesTs" / test_name)

    findings = check_dataset(root)
    errors = [(f.path.split("/")[-2] + "/" + f.path.split("/")[-1], f.problem) for f in findings if f.severity == "error"]
    text = "\n".join(f"{p}: {m}" for p, m in errors)
    assert f"imagesTr/{cases[0]}" in text and "truncated" in text
    assert f"labelsTr/{cases[1]}: label values [3] are not among the declared labels [0, 1]" in text
    assert f"imagesTr/{cases[2]}: 1 voxels are NaN or infinite" in text
    assert f"labelsTr/{cases[3]}" in text and "geometry" in text
    assert f"imagesTs/{test_name}: same voxel data as" in text and "test and training" in text
    assert len(errors) == 5, text
    proc = _cli(root, cwd=tmp_path)
    assert proc.returncode == 1 and "5 error(s)" in proc.stdout


def test_slice_folder_problems_are_all_listed(tmp_path):
    from PIL import Image

    from monai_pipeline.app.synthetic import write_brain_slices

    root = write_brain_slices(tmp_path / "lgg", num_patients=2, num_slices=4, size=32)
    (root / "BRAINPH_000" / "BRAINPH_000_2_mask.tif").unlink()
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "BRAINPH_001" / "BRAINPH_001_3_mask.tif")
    findings = check_dataset(root)
    problems = sorted((f.path.split("/")[-1], f.problem) for f in findings)
    assert ("BRAINPH_000_2.tif", "image without its mask") in problems
    assert any(p == "BRAINPH_001_3_mask.tif" and "0/255 or 0/1" in m for p, m in problems)
    assert len(problems) == 2


def test_check_a_dicom_folder(tmp_path):
    """A DICOM folder is checked series by series; the real CT passes, a series with a missing slice is named."""
    from conftest import shared
    from monai_pipeline.data.check import check_dataset
    from test_data_bad_inputs import _dicom_missing_slice

    assert check_dataset(shared("nsclc_radiomics", "LUNG1-001")) == []
    findings = check_dataset(_dicom_missing_slice(tmp_path))
    assert len(findings) == 1 and findings[0].severity == "error" and "1 slice(s) missing" in findings[0].problem


def test_a_folder_of_dicom_series_pairs_by_pseudonym(tmp_path):
    from monai_pipeline.io.naming import case_id, files_by_case
    from test_data_bad_inputs import _dicom

    _dicom(tmp_path / "series", "a")
    _dicom(tmp_path / "series", "b", seed=1)
    (tmp_path / "series" / "notes").mkdir()
    found = files_by_case(tmp_path / "series")
    assert found == {case_id(tmp_path / "series" / "a"): tmp_path / "series" / "a",
                     case_id(tmp_path / "series" / "b"): tmp_path / "series" / "b"}
