"""The Python API from a plain interpreter, as a script or 3D Slicer's Python console would use it: no CLI
state, several calls in one process, every result returned (no globals)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap



SCRIPT = textwrap.dedent('''
    import json, logging, sys
    from pathlib import Path
    import monai_pipeline
    from monai_pipeline import evaluate, segment, train

    data, work = Path(sys.argv[1]), Path(sys.argv[2])
    logging.basicConfig(level=logging.WARNING)  # the caller's own logging set-up, which the runs must keep
    before = list(logging.getLogger().handlers)
    tiny = {"patch_size": [32, 32, 16], "pixdim": [4.0, 4.0, 5.0], "num_workers": 0, "sw_batch_size": 2}
    model_dir = train(data, epochs=1, val_interval=1, val_fraction=0.34, ckpt_dir=str(work / "models"),
                      output_dir=str(work / "train"), **tiny)
    images = data / "imagesTs"
    first = segment(images, model_dir, work / "masks", **tiny)
    again = segment(images, model_dir, work / "masks", **tiny)          # same process: everything is done
    one = segment([sorted(images.iterdir())[0]], model_dir, work / "one", output_ext=".nrrd", **tiny)
    scores = evaluate(work / "masks", data / "labelsTs")
    print(json.dumps({
        "model": str(model_dir), "model_exists": (Path(model_dir) / "model.pt").is_file(),
        "first": [first.summary[k] for k in ("written", "done", "failed")],
        "again": [again.summary[k] for k in ("written", "done", "failed")],
        "one": [one.summary[k] for k in ("written", "done", "failed")],
        "first_masks": [p.name for p in first.masks], "again_masks": [p.name for p in again.masks],
        "one_masks": [p.name for p in one.masks],
        "scored": sorted(r["case_id"] for r in scores["cases"]),
        "root_logging_kept": logging.getLogger().handlers == before and logging.getLogger().level == logging.WARNING,
        "globals": sorted(k for k, v in vars(monai_pipeline.engine.inference.InferenceProgress).items()
                          if isinstance(v, dict) or k.endswith("summary")),
    }))
''')


def test_api_from_a_plain_interpreter(tiny_msd, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_msd), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model"] == str(tmp_path / "models") and out["model_exists"]
    assert out["first"] == [2, 0, 0] and out["again"] == [0, 2, 0] and out["one"] == [1, 0, 0]
    assert out["first_masks"] == out["again_masks"] == ["lung_100_seg.nii.gz", "lung_101_seg.nii.gz"]
    assert out["one_masks"] == ["lung_100_seg.nrrd"]
    assert out["scored"] == ["lung_100", "lung_101"]
    assert out["globals"] == []  # no run's summary is kept on the class
    assert out["root_logging_kept"]  # the bundle's logging.conf applies during a run, not after it
