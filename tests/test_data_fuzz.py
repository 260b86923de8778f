"""Fuzzing (hypothesis) of the readers and the dataset validation.

Whatever the bytes or the JSON, a reader either returns or raises :class:`DataError` naming the file:
never another exception, never a hang. Each test runs a bounded number of examples (``FUZZ_EXAMPLES``,
default 60, so the default suite stays fast); ``FUZZ_EXAMPLES=2000 bash scripts/test.sh -m fuzz`` runs longer.
Crashes found here became regular tests (see the notes at the end of this file).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monai_pipeline.errors import DataError

from monai_pipeline.io.naming import case_id, patient_id

from monai_pipeline.data.validate import image_info

from monai_pipeline.data.datasets import read_dataset_json

from monai_pipeline.io.slices import read_slice
from monai_pipeline.io.naming import mask_path
from monai_pipeline.io.images import write_nifti

pytestmark = pytest.mark.fuzz
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
entry = st.fixed_dictionaries({"image": st.sampled_from(["imagesTr/a.nii.gz", "../x.nii.gz", "/abs.nii.gz", "", 3,
                                                         ["imagesTr/a.nii.gz"], [], None, "imagesTr/missing.nii.gz"]),
                               "label": st.sampled_from(["labelsTr/a.nii.gz", "labelsTr/a.nii.gz", 1.5, "x", None])})
dataset_json = st.one_of(
    json_values,
    st.fixed_dictionaries({"training": st.lists(entry, max_size=4)},
                          optional={"validation": st.lists(entry, max_size=2), "test": st.lists(json_values, max_size=2),
                                    "labels": json_values, "modality": json_values}))


@pytest.fixture(scope="module")
def small_case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fz")
    for sub, arr in (("imagesTr", np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)),
                     ("labelsTr", np.zeros((6, 5, 4), np.uint8))):
        write_nifti(arr, np.diag([1.0, 1.0, 2.0, 1.0]), root / sub / "a.nii.gz")
    return root


@FUZZ
@given(meta=dataset_json, bom=st.booleans(), crlf=st.booleans())
def test_dataset_json_never_crashes(small_case, meta, bom, crlf):
    text = json.dumps(meta, indent=1)
    text = text.replace("\n", "\r\n") if crlf else text
    (small_case / "dataset.json").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    try:
        out = read_dataset_json(small_case)
    except DataError as err:
        assert str(small_case) in str(err)
    else:
        assert out["training"] and all(Path(d["label"]).is_file() for d in out["training"])


@FUZZ
@given(raw=st.binary(min_size=0, max_size=2048), name=st.sampled_from(["x.nii", "x.nii.gz", "x.nrrd", "x.mha"]))
def test_image_reader_random_bytes(raw, name):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(raw)
        try:
            image_info(path)
        except DataError as err:
            assert name in str(err)


def _valid_bytes(kind: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"v{kind}"
        if kind in (".nii", ".nii.gz"):
            write_nifti(np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5), np.diag([0.8, 0.8, 2.0, 1.0]), path)
        else:
            import SimpleITK as sitk

            sitk.WriteImage(sitk.GetImageFromArray(np.arange(5 * 6 * 8, dtype=np.int16).reshape(5, 6, 8)), str(path))
        return path.read_bytes()


VALID = {k: _valid_bytes(k) for k in (".nii", ".nii.gz", ".nrrd", ".mha")}


@FUZZ
@given(kind=st.sampled_from(sorted(VALID)), data=st.data())
def test_image_reader_mutated_files(kind, data):
    raw = bytearray(VALID[kind])
    for _ in range(data.draw(st.integers(0, 6))):  # flip some bytes (header fields included)
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"m{kind}"
        path.write_bytes(bytes(raw[:cut]))
        try:
            info = image_info(path)
        except DataError as err:
            assert path.name in str(err)
        else:
            assert len(info.shape) >= 3 and all(s >= 1 for s in info.shape)


def _slice_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(24 * 20 * 3, dtype=np.uint8).reshape(24, 20, 3)).save(buf, format=fmt)
    return buf.getvalue()


SLICES = {".tif": _slice_bytes("TIFF"), ".png": _slice_bytes("PNG"), ".jpg": _slice_bytes("JPEG")}


@FUZZ
@given(kind=st.sampled_from(sorted(SLICES)), mask=st.booleans(), data=st.data())
def test_slice_reader_mutated_files(kind, mask, data):
    raw = bytearray(SLICES[kind])
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"P_1{'_mask' if mask else ''}{kind}"
        path.write_bytes(bytes(raw[:cut]))
        try:
            arr = read_slice(path, mask=mask)
        except DataError as err:
            assert path.name in str(err)
        else:
            assert arr.ndim == (2 if mask else 3)


@FUZZ
@given(name=st.text(min_size=1, max_size=40))
def test_output_paths_stay_inside_the_output_folder(name):
    out = Path("/tmp/out-folder")
    for source in (f"/data/{name}.nii.gz", f"/data/{name}", name):
        dest = mask_path(source, out, "seg", ".nii.gz")
        assert dest.parent == out, (source, dest)
        assert ".." not in dest.relative_to(out).parts
    case_id(name)
    patient_id(name)
