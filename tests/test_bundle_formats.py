"""Format invariance: the same scan as NIfTI, NRRD, MHA and a DICOM series gives the same network input and mask."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import LUNG_BUNDLE, TINY, VENV_BIN, run_cmd
from monai_pipeline.io.dicom import write_series
from monai_pipeline.io.dicom_seg import read_dicom_seg
from monai_pipeline.io.images import ImageProperties, read_image, read_properties, write_image
from monai_pipeline.io.naming import case_id

CLI = str(VENV_BIN / "monai-pipeline")
SETS = [a for i in range(0, len(TINY), 2) for a in ("--set", f"{TINY[i].lstrip('-')}={TINY[i + 1]}")]
FORMATS = ("nifti", "nrrd", "mha", "dicom")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 1.0 if not a.any() and not b.any() else 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _write_formats(folder: Path, seed: int) -> dict[str, str]:
    """One oblique phantom written four ways (same voxels, same geometry)."""
    from monai_pipeline.app.synthetic import PhantomSpec, make_phantom

    img, _, aff = make_phantom(seed, PhantomSpec((48, 48, 24), (5.0, 5.0, 8.0)), n_tumours=3, direction="rotated")
    props = ImageProperties.from_affine(aff, img.shape, "16-bit signed integer")
    assert not np.allclose(np.abs(np.asarray(props.direction)), np.eye(3), atol=0.05), "the phantom must be oblique"
    paths = {"nifti": folder / f"p{seed}_nifti.nii.gz", "nrrd": folder / f"p{seed}_nrrd.nrrd",
             "mha": folder / f"p{seed}_mha.mha"}
    for path in paths.values():
        write_image(img, props, path)
    write_series(img, props, folder / f"p{seed}_dicom")
    return {**{k: str(v) for k, v in paths.items()}, "dicom": str(folder / f"p{seed}_dicom")}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[int, dict[str, str]]:
    folder = tmp_path_factory.mktemp("formats")
    return {seed: _write_formats(folder, seed) for seed in (1, 4)}


def test_network_input_is_the_same_in_every_format(phantoms):
    """The bundle's own preprocessing (inference.json) on each copy: equal arrays and affines."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(LUNG_BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(LUNG_BUNDLE), "pixdim": [3.0, 3.0, 4.0]})
    pre = parser.get_parsed_content("preprocessing")
    for seed, paths in phantoms.items():
        out = {fmt: pre({"image": paths[fmt]})["image"] for fmt in FORMATS}
        ref = out["nifti"]
        for fmt in FORMATS[1:]:
            assert out[fmt].shape == ref.shape, (seed, fmt)
            assert np.abs(out[fmt].affine.numpy() - ref.affine.numpy()).max() < 1e-3, (seed, fmt)
            assert float(np.abs(out[fmt].numpy() - ref.numpy()).max()) < 1e-3, (seed, fmt)


def test_masks_agree_across_formats_and_keep_each_source_geometry(phantoms, trained, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(p for paths in phantoms.values() for p in paths.values()) + "\n")
    out = tmp_path / "masks"
    run_cmd([CLI, "infer", "--images", str(listing), "--ckpt-dir", str(trained / "models"), "--output-dir", str(out),
             *SETS], cwd=tmp_path)
    table = {}
    for seed, paths in phantoms.items():
        masks = {}
        for fmt, src in paths.items():
            mask, props = read_image(out / f"{case_id(src)}_seg.nii.gz")
            assert props.same_grid(read_properties(src)), (fmt, props.difference(read_properties(src), "source"))
            masks[fmt] = mask
        assert any(m.any() for m in masks.values()), "the trained model must find some tumour for Dice to mean much"
        for a, b in itertools.combinations(FORMATS, 2):
            table[f"seed {seed} {a}-{b}"] = round(_dice(masks[a], masks[b]), 4)
        # the DICOM copy also has a DICOM SEG, equal voxel for voxel to its NIfTI mask
        seg = out / f"{case_id(paths['dicom'])}_seg.dcm"
        assert np.array_equal(read_dicom_seg(seg, read_properties(paths["dicom"]), paths["dicom"]) > 0,
                              masks["dicom"] > 0)
    (tmp_path / "dice.json").write_text(json.dumps(table, indent=1))
    assert min(table.values()) >= 0.99, table


def test_real_ct_in_every_format_gives_the_same_input_and_lungs(tmp_path):
    """NSCLC-Radiomics LUNG1-001 as its DICOM series and as NIfTI, NRRD and MHA copies: the bundle's network input
    agrees within 1e-3 (intensities scaled to [0, 1]) on the same grid, and the lung masks within Dice 0.99."""
    from monai.bundle import ConfigParser

    from conftest import shared
    from monai_pipeline.anatomy import lung_mask

    case = shared("nsclc_radiomics", "LUNG1-001")
    ct, props = read_image(case)
    paths = {"dicom": str(case)}
    for fmt, ext in (("nifti", ".nii.gz"), ("nrrd", ".nrrd"), ("mha", ".mha")):
        paths[fmt] = str(write_image(ct, props, tmp_path / f"lung1{ext}"))
    parser = ConfigParser()
    parser.read_config(str(LUNG_BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(LUNG_BUNDLE)})
    pre = parser.get_parsed_content("preprocessing")
    inputs, lungs = {}, {}
    for fmt, path in paths.items():
        inputs[fmt] = pre({"image": path})["image"]
        arr, p = read_image(path)
        assert p.same_grid(props), (fmt, p.difference(props, "DICOM"))
        lungs[fmt] = lung_mask(arr, p.affine)
    ref = inputs["dicom"]
    for fmt in FORMATS[:3]:
        assert inputs[fmt].shape == ref.shape, fmt
        assert np.abs(inputs[fmt].affine.numpy() - ref.affine.numpy()).max() < 1e-3, fmt
        assert float(np.abs(inputs[fmt].numpy() - ref.numpy()).max()) < 1e-3, fmt
        assert _dice(lungs[fmt], lungs["dicom"]) >= 0.99, fmt
        assert np.array_equal(lungs[fmt] == 1, lungs["dicom"] == 1) or _dice(lungs[fmt] == 1, lungs["dicom"] == 1) >= 0.99
