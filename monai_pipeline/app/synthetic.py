"""Synthetic chest CT phantoms with lung tumours, written as a Medical Segmentation Decathlon dataset.

The phantoms are the project's embedded default data: every demo and test can run without downloads.
Each volume is in Hounsfield units (int16) and holds air, a body (fat + soft tissue), a spine, two lungs
at about -850 HU, branching vessels, 0-4 tumours of varied size and irregular shape (label 1), and noise.
Spacing is anisotropic and some cases carry rotated (non axis-aligned) or flipped direction cosines, so
geometry bugs show.

Layout written by :func:`write_msd_dataset` (Task06_Lung style)::

    <out>/dataset.json
    <out>/imagesTr/lung_000.nii.gz   <out>/labelsTr/lung_000.nii.gz
    <out>/imagesTs/lung_100.nii.gz   <out>/labelsTs/lung_100.nii.gz   (labelsTs: for scoring the demo)

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid
from scipy import ndimage
from tqdm import tqdm

from monai_pipeline.data.masks import largest_component
from monai_pipeline.io.atomic import atomic_path, atomic_write_text
from monai_pipeline.io.dicom import write_series
from monai_pipeline.io.images import LPS_TO_RAS, ImageProperties, write_nifti

__all__ = ["PhantomSpec", "make_phantom", "phantom_affine", "write_msd_dataset", "make_brain_phantom",
           "write_brain_slices", "write_brain_volumes"]

logger = logging.getLogger(__name__)

AIR_HU, FAT_HU, TISSUE_HU, LUNG_HU, BONE_HU, VESSEL_HU, TUMOUR_HU = -1000, -90, 40, -850, 450, 35, 25


@dataclass
class PhantomSpec:
    """Size of one phantom.

    Attributes:
        shape: voxels along (i, j, k); k is the slice axis.
        spacing: voxel size in mm along (i, j, k).
        jitter: each case's spacing is ``spacing`` times a random factor in [1 - jitter, 1 + jitter].
    """

    shape: tuple[int, int, int] = (160, 160, 64)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.5)
    jitter: float = 0.1


def _rotation(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Direction cosines (3x3, columns = world direction of each voxel axis, in RAS)."""
    if kind == "identity":
        return np.eye(3)
    if kind == "flipped":  # stored as LPS-ordered voxels: i runs right-to-left, j anterior-to-posterior
        return LPS_TO_RAS[:3, :3].copy()
    # a non axis-aligned rotation: ~10-25 degrees about z, a few degrees about x
    az = math.radians(rng.uniform(10, 25)) * rng.choice([-1, 1])
    ax = math.radians(rng.uniform(2, 8)) * rng.choice([-1, 1])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    return rz @ rx


def phantom_affine(spacing: Sequence[float], direction: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """4x4 RAS voxel-to-world affine (mm) with the volume centred near the world origin."""
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=float))
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    aff[:3, 3] = -aff[:3, :3] @ centre + np.array([0.0, -20.0, -150.0])
    return aff


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _tube(vol: np.ndarray, grid_mm: tuple, spacing: np.ndarray, points: np.ndarray, radii: np.ndarray) -> None:
    """Set to True the voxels of ``vol`` within ``radii`` (mm) of ``points`` (mm, voxel-aligned frame)."""
    for p, r in zip(points, radii):
        lo = np.maximum(np.floor((p - r) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((p + r) / spacing).astype(int) + 1, vol.shape)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        d2 = sum((g[sl] - c) ** 2 for g, c in zip(grid_mm, p))
        vol[sl] |= d2 <= r * r


def make_phantom(seed: int, spec: PhantomSpec | None = None, n_tumours: int | None = None,
                 direction: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make one chest CT phantom.

    Args:
        seed: random seed; the same seed gives the same phantom.
        spec: shape and spacing; spacing is jittered by up to ``spec.jitter`` (10 %) per case.
        n_tumours: number of tumours (0-4); random when None.
        direction: ``"identity"``, ``"flipped"``, ``"rotated"`` or ``"auto"`` (chosen from the seed).

    Returns:
        ``(image, label, affine)``: image int16 HU of ``spec.shape``, label uint8 (1 = tumour) of the same
        shape, and the 4x4 RAS affine in mm.
    """
    spec = spec or PhantomSpec()
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spec.spacing, dtype=float) * rng.uniform(1 - spec.jitter, 1 + spec.jitter, size=3)
    shape = tuple(int(s) for s in spec.shape)
    if direction == "auto":
        direction = ("identity", "rotated", "flipped")[seed % 3]
    rot = _rotation(rng, direction)

    ext = np.asarray(shape) * spacing  # field of view, mm
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)], indexing="ij")
    x, y, z = grid
    cx, cy = ext[0] / 2, ext[1] / 2
    # the phantom is drawn in the voxel frame. RAS +y is anterior, so with an identity (or mildly rotated)
    # direction the patient's back lies at small j; a "flipped" direction runs j anterior->posterior,
    # which puts the back at large j. post_sign points from the centre towards the back along j.
    post_sign = -1.0 if direction != "flipped" else 1.0

    # body: an elliptic cylinder whose size changes gently along z
    zc = (z - ext[2] / 2) / (ext[2] / 2)
    ax_body = 0.44 * ext[0] * (1 - 0.08 * zc**2)
    ay_body = 0.34 * ext[1] * (1 - 0.08 * zc**2)
    r_body = ((x - cx) / ax_body) ** 2 + ((y - cy) / ay_body) ** 2
    img = np.full(shape, AIR_HU, dtype=np.float32)
    img[r_body <= 1.0] = FAT_HU
    img[r_body <= 0.82] = TISSUE_HU

    # lungs: two ellipsoids, each slightly irregular, apex to base along z
    lung = np.zeros(shape, dtype=bool)
    wobble = 0.08 * _smooth_noise(rng, shape, sigma=6.0)
    for side in (-1, 1):
        lx = cx + side * 0.2 * ext[0] * rng.uniform(0.95, 1.05)
        ly = cy - post_sign * 0.02 * ext[1]
        lz = ext[2] * rng.uniform(0.45, 0.55)
        ra, rb, rc = 0.15 * ext[0], 0.22 * ext[1], 0.46 * ext[2]
        r = ((x - lx) / ra) ** 2 + ((y - ly) / rb) ** 2 + ((z - lz) / rc) ** 2
        lung |= (r + wobble) <= 1.0
    lung &= r_body <= 0.7
    img[lung] = LUNG_HU

    # spine: a bony disc posterior to the lungs
    sx, sy = cx, cy + post_sign * 0.24 * ext[1]
    img[((x - sx) ** 2 + (y - sy) ** 2 <= (0.06 * ext[0]) ** 2) & (r_body <= 0.9)] = BONE_HU

    # vessels: branching random walks from each hilum, tapering
    vessels = np.zeros(shape, dtype=bool)
    lung_idx = np.argwhere(lung)
    for side in (-1, 1):
        hilum = np.array([cx + side * 0.1 * ext[0], cy, ext[2] * 0.5])
        for _ in range(int(rng.integers(5, 9))):
            n = int(rng.integers(30, 70))
            step = rng.normal(size=3)
            step[0] = abs(step[0]) * side
            step /= np.linalg.norm(step)
            pts, p, d = [], hilum.copy(), step
            for _k in range(n):
                d = d + 0.35 * rng.normal(size=3)
                d /= np.linalg.norm(d)
                p = p + 1.5 * d
                pts.append(p.copy())
            radii = np.linspace(rng.uniform(1.5, 3.0), 0.8, n)
            _tube(vessels, grid, spacing, np.array(pts), radii)
    vessels &= lung
    img[vessels] = VESSEL_HU

    # tumours: unions of a few spheres with a noisy surface, centred inside the lungs
    label = np.zeros(shape, dtype=np.uint8)
    if n_tumours is None:
        n_tumours = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    placed = 0
    for _ in range(n_tumours * 20):
        if placed >= n_tumours or len(lung_idx) == 0:
            break
        centre_vox = lung_idx[rng.integers(len(lung_idx))]
        centre = centre_vox * spacing
        radius = float(rng.uniform(7.0, 20.0))  # mm: tumours of about 1-4 cm, as in MSD Task06_Lung
        lo = np.maximum(((centre - 1.6 * radius) / spacing).astype(int), 0)
        hi = np.minimum(((centre + 1.6 * radius) / spacing).astype(int) + 1, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        if lung[sl].mean() < 0.6 or label[sl].any():
            continue  # keep tumours inside the lung and apart from each other
        dist = np.full(hi - lo, np.inf, dtype=np.float32)
        for _lobe in range(int(rng.integers(2, 6))):
            c = centre + rng.normal(scale=0.35 * radius, size=3)
            r = radius * rng.uniform(0.55, 0.9)
            d = np.sqrt(sum((g[sl] - cc) ** 2 for g, cc in zip(grid, c))) - r
            dist = np.minimum(dist, d)
        rough = _smooth_noise(rng, dist.shape, sigma=max(1.0, radius / spacing.mean() / 3))
        blob = (dist + 0.18 * radius * rough) <= 0
        blob = largest_component(blob)  # a rough surface can split off islands: keep the tumour in one piece
        if blob.sum() < 8:
            continue
        label[sl][blob] = 1
        img[sl][blob] = TUMOUR_HU + rng.normal(0, 15, size=int(blob.sum()))
        placed += 1

    # partial-volume blur and scanner noise
    img = ndimage.gaussian_filter(img, sigma=0.6)
    img += rng.normal(0.0, rng.uniform(15, 35), size=shape).astype(np.float32)
    img = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return img, label, phantom_affine(spacing, rot, shape)


def write_msd_dataset(out_dir: str | Path, num_train: int = 12, num_test: int = 4, seed: int = 0,
                      spec: PhantomSpec | None = None, progress: bool = False, dicom: bool = False) -> Path:
    """Write a synthetic Task06_Lung-style MSD dataset of phantoms and return the dataset.json path.

    Args:
        out_dir: dataset folder (created).
        num_train: phantoms in ``imagesTr``/``labelsTr``.
        num_test: unseen phantoms in ``imagesTs`` (their labels go to ``labelsTs`` for scoring).
        seed: base seed; case ``n`` uses ``seed * 1000 + n``.
        spec: phantom size.
        progress: show a progress bar.
        dicom: also write each test phantom as a DICOM CT series, ``imagesTs_dicom/<case>/slice_NNNN.dcm``
            (the same voxels and geometry; PatientID ``anonymous``), as a hospital's scan would come.
    """
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    first_test = max(100, num_train)  # test case numbers never collide with training ones (same seed)
    cases = [("Tr", i) for i in range(num_train)] + [("Ts", first_test + i) for i in range(num_test)]
    iterator = cases
    if progress:
        iterator = tqdm(cases, desc="phantoms", unit="case")
    training, test = [], []
    for part, idx in iterator:
        name = f"lung_{idx:03d}.nii.gz"
        img, lab, aff = make_phantom(seed * 1000 + idx, spec)
        write_nifti(img, aff, out / f"images{part}" / name)
        write_nifti(lab, aff, out / f"labels{part}" / name)
        if part == "Tr":
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
            if dicom:
                uid = lambda what: generate_uid(entropy_srcs=[f"monai-pipeline synthetic {seed} {idx} {what}"])  # noqa: E731
                write_series(img, ImageProperties.from_affine(aff, img.shape, "16-bit signed integer"),
                             out / "imagesTs_dicom" / name[: -len(".nii.gz")], description="synthetic phantom",
                             study_uid=uid("study"), series_uid=uid("series"), frame_of_reference=uid("frame"))
    meta = {
        "name": "Lung (synthetic phantoms)",
        "description": "Synthetic chest CT phantoms with lung tumours generated by monai-pipeline",
        "reference": "monai_pipeline.synthetic",
        "licence": "CC0 (generated data)",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    path = out / "dataset.json"
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %d training and %d test phantoms to %s", len(training), len(test), out)
    return path


# ---------------------------------------------------------------------------------------- brain MRI
def make_brain_phantom(seed: int, shape: Sequence[int] = (64, 64, 12),
                       spacing: Sequence[float] = (3.5, 3.5, 5.0)) -> dict[str, np.ndarray]:
    """A head phantom: skull ring, brain, ventricles and a tumour blob bright in FLAIR.

    Arrays are in LPS voxel order (i runs from the patient's right to left, j from anterior to posterior,
    k from inferior to superior), so ``arr[:, :, k].T`` is axial slice ``k`` as it is displayed.

    Returns:
        ``{"flair", "t1", "t1c"}`` float32 intensities in [0, 255], ``"label"`` uint8 (0 background,
        1 tumour core, 2 oedema: whole tumour = label > 0, possibly empty), ``"brain"`` uint8 mask, and
        ``"affine"`` (4x4 RAS, mm).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp)], indexing="ij"))
    half = np.asarray(shape) * sp / 2
    radii = half * np.array([rng.uniform(0.78, 0.88), rng.uniform(0.85, 0.93), rng.uniform(0.9, 1.2)])
    head = (((grid / radii[:, None, None, None]) ** 2).sum(0)) <= 1.0
    brain_r = radii - np.array([1.0, 1.0, 0.6]) * rng.uniform(6, 9)
    brain = (((grid / brain_r[:, None, None, None]) ** 2).sum(0)) <= 1.0
    skull = head & ~brain
    vent_c = np.array([0.0, rng.uniform(-4, 4), rng.uniform(-3, 3)])
    vent = ((((grid - vent_c[:, None, None, None]) / (brain_r * [0.18, 0.35, 0.3])[:, None, None, None]) ** 2).sum(0)
            <= 1.0) & brain
    label = np.zeros(shape, np.uint8)
    if rng.uniform() < 0.85:  # some patients have slices only with no tumour
        centre = rng.uniform(-0.45, 0.45, 3) * brain_r
        r = rng.uniform(0.2, 0.35) * brain_r[:2].min() * np.array([1.0, rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.5)])
        noise = _smooth_noise(rng, shape, 2.0)
        d = np.sqrt((((grid - centre[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0)) + 0.35 * noise
        label[(d <= 1.0) & brain] = 2
        label[(d <= 0.55) & brain] = 1
    flair = np.where(brain, 110.0, 0.0) + np.where(skull, 60.0, 0.0)
    flair[vent] = 40.0
    flair[label == 2] = 200.0
    flair[label == 1] = 170.0
    t1 = np.where(brain, 120.0, 0.0) + np.where(skull, 180.0, 0.0)
    t1[vent] = 50.0
    t1[label > 0] = 95.0
    t1c = t1.copy()
    core = label == 1
    rim = core & ~ndimage.binary_erosion(core, iterations=1)
    t1c[rim] = 230.0
    gain = rng.uniform(0.8, 1.2)
    out = {}
    for name, img in (("flair", flair), ("t1", t1), ("t1c", t1c)):
        img = ndimage.gaussian_filter(img * gain, sigma=0.7)
        img = img * (1.0 + 0.15 * _smooth_noise(rng, shape, 8.0))  # bias field
        img += np.where(head, rng.normal(0, 6, shape), np.abs(rng.normal(0, 2, shape)))
        out[name] = np.clip(img, 0, 255).astype(np.float32)
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    affine[:3, 3] = [half[0], half[1], -half[2]]
    out.update(label=label, brain=brain.astype(np.uint8), affine=affine)
    return out


def _flip_ij(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Affine of an array flipped along its first two axes (same world positions)."""
    flip = np.eye(4)
    for ax in (0, 1):
        flip[ax, ax], flip[ax, 3] = -1.0, shape[ax] - 1
    return affine @ flip


def write_brain_slices(out_dir: str | Path, num_patients: int = 6, seed: int = 0, size: int = 64,
                       num_slices: int = 12, first: int = 0) -> Path:
    """Write phantom patients in the LGG slice-folder layout and return ``out_dir``.

    ``<out>/BRAINPH_<nnn>/BRAINPH_<nnn>_<k>.tif`` (RGB uint8: pre-contrast T1, FLAIR, post-contrast T1, the
    LGG channel order) with ``..._<k>_mask.tif`` (0/255), k = 1..num_slices.
    """
    out = Path(out_dir)
    for p in range(first, first + num_patients):
        name = f"BRAINPH_{p:03d}"
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        ph = make_brain_phantom(seed * 1000 + p, (size, size, num_slices))
        rgb = np.stack([ph["t1"], ph["flair"], ph["t1c"]], axis=-1).round().astype(np.uint8)
        for k in range(num_slices):
            for suffix, arr in (("", rgb[:, :, k].transpose(1, 0, 2)),
                                ("_mask", (ph["label"][:, :, k].T > 0).astype(np.uint8) * 255)):
                dest = folder / f"{name}_{k + 1}{suffix}.tif"
                with atomic_path(dest) as tmp:
                    Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="TIFF", compression="tiff_deflate")
    logger.info("wrote %d phantom patients of %d slices to %s", num_patients, num_slices, out)
    return out


def write_brain_volumes(out_dir: str | Path, num_train: int = 6, num_test: int = 2, seed: int = 0,
                        shape: Sequence[int] = (64, 64, 12)) -> Path:
    """Write phantom brain volumes as an MSD-style dataset (FLAIR and T1c per case) and return dataset.json.

    ``imagesTr/brainph_<nnn>_flair.nii.gz``, ``..._t1c.nii.gz``, ``labelsTr/brainph_<nnn>.nii.gz`` (0/1/2);
    test cases in ``imagesTs`` (labels in ``labelsTs`` for scoring). Odd-numbered cases are stored in RAS
    voxel order, the others in LPS order (as BraTS files are), with the matching affines.
    """
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    first_test = max(100, num_train)
    training, test = [], []
    for part, idx in [("Tr", i) for i in range(num_train)] + [("Ts", first_test + i) for i in range(num_test)]:
        ph = make_brain_phantom(seed * 1000 + 500 + idx, shape)
        if idx % 2:  # every other case stored in RAS voxel order, so orientation handling shows
            ph = {k: (v[::-1, ::-1].copy() if k != "affine" else _flip_ij(v, shape)) for k, v in ph.items()}
        case = f"brainph_{idx:03d}"
        files = [f"images{part}/{case}_{m}.nii.gz" for m in ("flair", "t1c")]
        for rel, m in zip(files, ("flair", "t1c")):
            write_nifti(ph[m], ph["affine"], out / rel)
        write_nifti(ph["label"], ph["affine"], out / f"labels{part}" / f"{case}.nii.gz")
        if part == "Tr":
            training.append({"image": files, "label": f"labelsTr/{case}.nii.gz"})
        else:
            test.append({"image": files})
    meta = {"name": "Brain tumour (synthetic phantoms)", "licence": "CC0 (generated data)",
            "tensorImageSize": "3D", "modality": {"0": "FLAIR", "1": "T1c"},
            "labels": {"0": "background", "1": "tumour core", "2": "oedema"},
            "numTraining": len(training), "numTest": len(test), "training": training, "test": test}
    path = out / "dataset.json"
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return path
