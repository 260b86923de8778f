"""Synthetic chest CT phantoms: HU content, tumours, geometry variety, determinism, MSD layout."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from monai_pipeline.data.datasets import read_dataset_json
from monai_pipeline.app.synthetic import PhantomSpec, make_phantom, write_msd_dataset

SPEC = PhantomSpec((96, 96, 40), (3.0, 3.0, 6.0))


def test_deterministic_by_seed():
    a, la, aa = make_phantom(5, SPEC)
    b, lb, ab = make_phantom(5, SPEC)
    c, _, _ = make_phantom(6, SPEC)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(aa, ab)
    assert not np.array_equal(a, c)


def test_hounsfield_content():
    img, lab, _ = make_phantom(1, SPEC, n_tumours=3)
    assert img.dtype == np.int16 and lab.dtype == np.uint8 and img.shape == lab.shape == SPEC.shape
    lung = (img > -950) & (img < -750)
    assert 0.1 < lung.mean() < 0.5  # two lungs at about -850 HU fill a good part of the chest
    assert abs(np.median(img[lung]) + 850) < 30
    assert (img < -980).mean() > 0.1  # air around the body
    assert (img > 300).sum() > 100  # spine
    core = ndimage.binary_erosion(lab > 0)  # away from the partial-volume rim
    assert core.sum() > 10
    assert -150 < np.median(img[core]) < 150  # soft-tissue density, bright against the lung
    n_components = ndimage.label(lab)[1]
    assert n_components == 3


def test_tumour_count_and_size_vary():
    counts, sizes = set(), []
    for seed in range(30):
        _, lab, _ = make_phantom(seed, SPEC)
        comps, n = ndimage.label(lab)
        counts.add(n)
        sizes += list(np.bincount(comps.ravel())[1:])
    assert min(counts) == 0 and max(counts) >= 3 and max(counts) <= 4
    assert max(sizes) > 5 * min(sizes)  # varied size


def test_geometry_variety():
    affines = {d: make_phantom(2, SPEC, direction=d)[2] for d in ("identity", "rotated", "flipped")}
    rot = affines["rotated"][:3, :3] / np.linalg.norm(affines["rotated"][:3, :3], axis=0)
    assert np.sum(np.abs(rot) > 0.05) > 3  # not axis-aligned
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)  # but orthonormal
    assert affines["flipped"][0, 0] < 0 and affines["flipped"][1, 1] < 0
    spacing = np.linalg.norm(affines["identity"][:3, :3], axis=0)
    assert np.all(np.abs(spacing / np.array(SPEC.spacing) - 1) <= 0.1 + 1e-9)  # anisotropic, jittered


def test_msd_layout(tmp_path):
    path = write_msd_dataset(tmp_path / "Task06", num_train=3, num_test=2, seed=1,
                             spec=PhantomSpec((32, 32, 12), (4.0, 4.0, 8.0)))
    meta = json.loads(path.read_text())
    assert meta["numTraining"] == 3 and meta["numTest"] == 2 and meta["modality"] == {"0": "CT"}
    assert meta["training"][0] == {"image": "./imagesTr/lung_000.nii.gz", "label": "./labelsTr/lung_000.nii.gz"}
    assert meta["test"] == ["./imagesTs/lung_100.nii.gz", "./imagesTs/lung_101.nii.gz"]
    assert (tmp_path / "Task06" / "labelsTs" / "lung_101.nii.gz").is_file()
    assert len(read_dataset_json(tmp_path / "Task06")["training"]) == 3


def test_spine_is_posterior_in_world_space():
    """Whatever the direction cosines, the spine lies behind the lungs in RAS world coordinates (-y)."""
    for direction in ("identity", "rotated", "flipped"):
        img, _, aff = make_phantom(3, SPEC, n_tumours=0, direction=direction)
        world = lambda mask: aff[:3, :3] @ np.mean(np.argwhere(mask), axis=0) + aff[:3, 3]  # noqa: E731
        spine_y = world(img > 300)[1]
        lungs_y = world((img > -950) & (img < -750))[1]
        assert spine_y < lungs_y - 20, direction
