"""Training never applies a non-finite update (issue 14): a NaN loss or gradient falls back from bf16 to float32
under ``train_precision auto`` or stops the run with its own exit code; ranks decide together; resume keeps the
fall-back and the validation's best; ``precision auto`` inference keeps bf16 only where it gives the float32
answer."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, VENV_BIN, run_cmd

TESTS = Path(__file__).resolve().parent
SMALL = {"patch_size": [32, 32, 16], "pixdim": [4.0, 4.0, 5.0], "num_workers": 0, "sw_batch_size": 2}
assert TINY == [a for k, v in SMALL.items() for a in (f"--{k}", json.dumps(v).replace(" ", ""))]
UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}
LOSS = {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "include_background": False, "batch": True}


def _overlay(tmp_path: Path, name: str, content: dict) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(content))
    return str(path)


def _nan_loss(tmp_path: Path, at_calls: list[int], rank: int | None = None) -> str:
    return _overlay(tmp_path, "nan_loss", {"loss": {"_target_": "faulty.NaNLoss", "loss": LOSS, "at_calls": at_calls,
                                                    "rank": rank}})


def _checkpoint(folder: Path, epoch: int) -> dict:
    return torch.load(folder / f"checkpoint_epoch={epoch}.pt", map_location="cpu", weights_only=True)


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.fixture()
def faults_importable(monkeypatch):
    """Subprocesses (run_cmd passes this environment on) can import ``faulty`` from the tests folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


@pytest.fixture()
def native_bf16(monkeypatch):
    """This process as on a CPU with native bf16 (AVX512-BF16, no AMX): ``auto`` resolves to bf16."""
    monkeypatch.setattr("monai_pipeline.engine.precision.cpu_bf16_supported", lambda: True)
    monkeypatch.setattr("monai_pipeline.engine.precision.cpu_amx_supported", lambda: False)


class _Records(logging.Handler):
    """The package's log records (MONAI's bundle run re-configures the root logger, so pytest's caplog,
    which hangs there, misses them: this handler hangs on the ``monai_pipeline`` logger itself)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "_Records":
        logging.getLogger("monai_pipeline").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("monai_pipeline").removeHandler(self)


def _train(bundle_root: Path, tiny_msd: Path, overlays: list[str], **overrides):
    from monai_pipeline.app.bundles import run_bundle

    args = {"dataset_dir": str(tiny_msd), "val_interval": 1, "val_fraction": 0.34, **SMALL, **overrides}
    return run_bundle(str(bundle_root), "train", overlays, **args)


def test_auto_bf16_that_turns_nan_falls_back_to_fp32_once_and_a_resume_stays_fp32(native_bf16, tiny_msd, bundle_copy,
                                                                                 tmp_path):
    overlay = _overlay(tmp_path, "breaks", {"network_def": {"_target_": "faulty.BreaksInBf16", "net": UNET}})
    models = bundle_copy / "models"
    with _Records() as log:
        _train(bundle_copy, tiny_msd, [overlay], epochs=1, train_precision="auto")
    warnings = [m for m in log.messages if "falls back to float32" in m]
    assert len(warnings) == 1, warnings
    assert "non-finite bf16 training at epoch 1, iteration 1/" in warnings[0]
    assert "update was not applied" in warnings[0]
    ckpt = _checkpoint(models, 1)
    assert ckpt["nonfinite_guard"] == {"fell_back": True, "precision": "fp32"}
    assert _finite(ckpt["model"]) and _finite(torch.load(models / "model.pt", weights_only=True))
    steps = {int(v["step"]) for v in ckpt["optimizer"]["state"].values()}  # AdamW's own count of applied updates
    assert steps == {ckpt["trainer"]["epoch_length"]}  # the failed bf16 step was applied after all, in float32

    with _Records() as log:
        _train(bundle_copy, tiny_msd, [overlay], epochs=2, train_precision="auto", resume=True)
    messages = log.messages
    assert any("fell back from reduced precision before it was resumed" in m for m in messages)
    assert not any("falls back to float32" in m for m in messages)  # no bf16 step was tried again
    assert _finite(_checkpoint(models, 2)["model"])


def test_explicit_precision_stops_with_exit_code_4_and_the_last_good_checkpoint_resumes(tiny_msd, bundle_copy,
                                                                                      tmp_path, faults_importable):
    """fp32 (explicit): NaN loss at epoch 2, iteration 1 (the 3rd step: 2 steps an epoch) -> one error line, exit
    4, no checkpoint of epoch 2, epoch 1's intact; a resume without the fault trains on to the end."""
    models = bundle_copy / "models"
    common = [str(VENV_BIN / "monai-pipeline"), "train", "--bundle", str(bundle_copy), "--dataset-dir", str(tiny_msd),
              "--ckpt-dir", str(models), "--output-dir", str(tmp_path / "eval"), "--val-interval", "1",
              "--set", "val_fraction=0.34", "--set", "train_precision=fp32",
              *[f"--set={k}={json.dumps(v)}" for k, v in SMALL.items()]]
    proc = run_cmd([*common, "--epochs", "2", "--config", _nan_loss(tmp_path, [3])], cwd=tmp_path, check=False)
    assert proc.returncode == 4, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "non-finite values in fp32 at epoch 2, iteration 1/2" in errors[0]
    assert "loss nan" in errors[0] and "checkpoint_epoch=1.pt is the last good state" in errors[0]
    assert "lower the learning rate" in errors[0]
    assert sorted(p.name for p in models.glob("checkpoint_*")) == ["checkpoint_epoch=1.pt"]
    assert _finite(_checkpoint(models, 1)["model"])

    proc = run_cmd([*common, "--epochs", "2", "--resume"], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "Restored all variables from" in log and "checkpoint_epoch=1.pt" in log
    ckpt = _checkpoint(models, 2)
    steps = {int(v["step"]) for v in ckpt["optimizer"]["state"].values()}  # epoch 1's, then epoch 2 redone whole
    assert steps == {2 * ckpt["trainer"]["epoch_length"]} and _finite(ckpt["model"])


def test_a_nan_batch_is_named_and_not_blamed_on_bf16(native_bf16, tiny_msd, bundle_copy, tmp_path):
    from monai_pipeline.engine.training import NonFiniteTrainingError

    overlay = _overlay(tmp_path, "nan_image", {
        "imports": ["$import glob", "$import os", "$import torch", "$import monai_pipeline", "$import faulty"],
        "train#preprocessing": {"_target_": "Compose",
                                "transforms": "$@base_transforms + @train#random_transforms + [faulty.NaNImaged([1])]"},
    })
    with pytest.raises(NonFiniteTrainingError) as info:
        _train(bundle_copy, tiny_msd, [overlay], epochs=2, train_precision="auto")
    err = info.value
    assert (err.epoch, err.iteration, err.precision) == (1, 1, "bf16")  # no float32 retry: the data is at fault
    assert "input batch itself holds NaN" in str(err) and "no checkpoint" in str(err)
    assert not list((bundle_copy / "models").glob("checkpoint_*"))


def test_ranks_stop_together_when_one_rank_turns_nan(tiny_msd, bundle_copy, tmp_path, faults_importable):
    """torchrun, 2 processes: NaN loss on rank 1 only, at its 3rd step -> both ranks stop with the error at the
    same step (none waits for the other; a hang would hit the timeout), epoch 2's checkpoint is the latest."""
    cfg = "['configs/inference.json','configs/train.json','configs/multi_gpu_train.json','" + \
          _nan_loss(tmp_path, [3], rank=1) + "']"
    proc = run_cmd([str(VENV_BIN / "torchrun"), "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
                    cfg, "--dataset_dir", str(tiny_msd), "--epochs", "3", "--val_interval", "1", "--val_fraction",
                    "0.34", "--train_precision", "fp32", *TINY], cwd=bundle_copy, check=False, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for rank in (0, 1):  # one step per epoch on each rank: the 3rd step is epoch 3's first
        assert (f"NonFiniteTrainingError: training stopped: non-finite values in fp32 at epoch 3, iteration 1/1 "
                f"(step 3 of the run, rank {rank} of 2)") in out, out[-4000:]
    models = bundle_copy / "models"
    assert sorted(p.name for p in models.glob("checkpoint_*")) == ["checkpoint_epoch=2.pt"]


def test_resume_keeps_the_best_model_and_the_early_stop_count(trained, tiny_msd, bundle_copy):
    """A resumed run whose saved best (0.99) beats every later validation leaves model.pt as it was, and early
    stopping counts on from the saved count; a checkpoint from before this state was saved still resumes."""
    from conftest import CFG_TRAIN, bundle

    models = bundle_copy / "models"
    shutil.copytree(trained / "models", models)  # 2 epochs, a validation after each (conftest's fixture)
    base = ["run", "--config_file", CFG_TRAIN, "--dataset_dir", str(tiny_msd), "--val_interval", "1",
            "--val_fraction", "0.34", "--early_stop_patience", "10", *TINY]
    ckpt = _checkpoint(models, 2)
    assert set(ckpt["validation"]) == {"best_metric", "best_metric_epoch", "best_saved", "early_stop"}
    (priority, name), = ckpt["validation"]["best_saved"]  # the best model's score and ignite's record of it
    assert priority == ckpt["validation"]["best_metric"]
    ckpt["validation"].update(best_metric=0.99, best_metric_epoch=2, best_saved=[[0.99, name]],
                              early_stop={"counter": 3, "best_score": 0.99})
    torch.save(ckpt, models / "checkpoint_epoch=2.pt")
    best_before = (models / "model.pt").read_bytes()
    run_cmd(bundle(*base, "--epochs", "3", "--resume", "True"), cwd=bundle_copy)
    assert (models / "model.pt").read_bytes() == best_before
    state = _checkpoint(models, 3)["validation"]
    assert state["early_stop"] == {"counter": 4, "best_score": 0.99}
    assert (state["best_metric"], state["best_metric_epoch"]) == (0.99, 2)

    old = _checkpoint(models, 3)  # as written before issue 14: no validation or guard state
    del old["validation"], old["nonfinite_guard"]
    torch.save(old, models / "checkpoint_epoch=3.pt")
    proc = run_cmd(bundle(*base, "--epochs", "4", "--resume", "True"), cwd=bundle_copy)
    assert "holds no nonfinite_guard, validation (an older checkpoint)" in proc.stdout + proc.stderr
    trainer = _checkpoint(models, 4)["trainer"]
    assert trainer["iteration"] == 4 * trainer["epoch_length"]


def test_fall_back_under_a_grad_scaler_applies_the_float32_step_unscaled():
    """MONAI's amp branch (CUDA) steps through ``scaler.step``, which unscales the gradients: the guard's float32
    recompute must scale its loss too, or the step comes out 65536 times too small. Simulated with torch's CPU
    GradScaler and a fake engine holding what the guard reads; before that, an overflow is left to the scaler
    ``amp_patience`` times (buffers restored, gradients left for the scaler to see and skip)."""
    from types import SimpleNamespace

    from monai.inferers import SimpleInferer
    from monai.utils import CommonKeys as Keys

    from monai_pipeline.engine.precision import PrecisionInferer
    from monai_pipeline.engine.training import NonFiniteGuard

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    reference.load_state_dict(net.state_dict())
    x, y = torch.rand(8, 4), torch.rand(8, 4)
    loss_fn = torch.nn.MSELoss()
    inferer = PrecisionInferer(SimpleInferer(), "auto", channels_last=False)
    inferer.precision = "fp16"  # as "auto" resolves on CUDA
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    engine = SimpleNamespace(network=net, optimizer=opt, inferer=inferer, loss_function=loss_fn, amp=True,
                             scaler=scaler, accumulation_steps=1,
                             state=SimpleNamespace(epoch=1, iteration=1, epoch_length=1, device=torch.device("cpu")))
    guard = NonFiniteGuard(amp_patience=1)

    def overflowing_step():
        guard._snapshot(engine)
        opt.zero_grad()
        pred = net(x)
        loss = loss_fn(pred, y) * float("inf")  # an fp16 overflow
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: pred, Keys.LOSS: loss}
        scaler.scale(loss).backward()
        guard._check(engine)

    before = [t.clone() for t in net.state_dict().values()]
    overflowing_step()  # 1st: left to the scaler, which skips it and halves its scale
    assert any(not torch.isfinite(p.grad).all() for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before))  # BN stats restored
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before)) and inferer.precision == "fp16"
    overflowing_step()  # 2nd in a row: the guard falls back to float32 and recomputes, scaled for the scaler
    assert inferer.precision == "fp32" and engine.amp is False and guard.fell_back
    scaler.step(opt)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    loss_fn(reference(x), y).backward()
    ref_opt.step()
    for got, want in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(got, want, atol=1e-6), (got, want)
    assert not torch.equal(net[0].weight, before[0])  # a real step was taken


# ------------------------------------------------------------------ precision auto in inference proves itself
def _threshold_net() -> torch.nn.Module:
    """Logits of 'foreground where the voxel is above 0.5' (a 1x1x1 convolution, so autocast really runs it
    in bf16): background -10 (x - 0.5), foreground +10 (x - 0.5)."""
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight[:] = torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1, 1)
        net.bias[:] = torch.tensor([5.0, -5.0])
    return net.eval()


def _volume(value: float = 1.0, blob: bool = True) -> torch.Tensor:
    x = torch.zeros(1, 1, 40, 36, 20)
    if blob:
        x[..., 22:30, 10:17, 12:18] = value
    return x


def _auto_inferer(**kwargs):
    from monai.inferers import SlidingWindowInferer

    from monai_pipeline.engine.precision import PrecisionInferer

    sw = SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=2, overlap=0.25, mode="gaussian")
    inferer = PrecisionInferer(sw, "auto", channels_last=True, device="cpu", **kwargs)
    assert inferer.precision == "bf16" and inferer.verify
    return inferer, sw


def test_auto_inference_keeps_bf16_only_where_it_gives_the_float32_answer(native_bf16):
    from faulty import BreaksInBf16

    good, sw = _auto_inferer()
    ref = sw(_volume(), _threshold_net())
    out = good(_volume(), _threshold_net())
    # agrees with float32 where it finds the tumour: bf16 kept
    assert good.checked == {"kept": 1, "fp32": 0, "fp32_direct": 0}
    assert torch.equal(out.argmax(1), ref.argmax(1)) and not torch.equal(out, ref)  # really bf16
    for broken in (BreaksInBf16(_threshold_net()), BreaksInBf16(_threshold_net(), zero=True)):  # NaN; all background
        inferer, _ = _auto_inferer()
        assert torch.equal(inferer(_volume(), broken), ref)
        assert inferer.checked == {"kept": 0, "fp32": 1, "fp32_direct": 0}

    # a failure that hits some cases only: bright tumours come out as background in bf16, dim ones do not
    picky = BreaksInBf16(_threshold_net(), zero=True, above=1.5)
    inferer, _ = _auto_inferer()
    dim, bright = inferer(_volume(1.0), picky), inferer(_volume(2.0), picky)
    assert inferer.checked == {"kept": 1, "fp32": 1, "fp32_direct": 0}
    assert torch.equal(bright, sw(_volume(2.0), _threshold_net())) and bright.argmax(1).sum() == 8 * 7 * 6
    assert torch.equal(dim.argmax(1), ref.argmax(1))


def test_an_all_background_check_never_proves_bf16_unless_asked(native_bf16):
    inferer, sw = _auto_inferer()
    ref = sw(_volume(blob=False), _threshold_net())
    assert torch.equal(inferer(_volume(blob=False), _threshold_net()), ref)
    assert inferer.checked == {"kept": 0, "fp32": 1, "fp32_direct": 0}
    lenient, _ = _auto_inferer(verify_background=True)
    lenient(_volume(blob=False), _threshold_net())
    assert lenient.checked == {"kept": 1, "fp32": 0, "fp32_direct": 0}


def test_float32_means_float32_inside_an_engines_autocast(native_bf16):
    """MONAI's evaluator autocasts the whole inferer call when ``amp`` is on (CUDA): the float32 reference of the
    check, the float32 redo and an explicit fp32 must still run in float32 (simulated with CPU bf16 autocast)."""
    from monai.inferers import SimpleInferer

    from faulty import BreaksInBf16
    from monai_pipeline.engine.precision import PrecisionInferer

    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.rand(1, 1, 12, 12, 8)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(PrecisionInferer(SimpleInferer(), "fp32", channels_last=False)(x, net), ref)
        inferer, sw = _auto_inferer()
        out = inferer(_volume(), BreaksInBf16(_threshold_net(), zero=True))  # redone in float32: really float32
    assert inferer.checked["fp32"] == 1 and torch.equal(out, sw(_volume(), _threshold_net()))


def test_small_inputs_run_in_float32_directly(native_bf16):
    """Up to sw_batch_size + 2 windows the check would cost more than float32 itself: float32 straight away."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from faulty import BreaksInBf16

    inferer, sw = _auto_inferer()
    for shape in [(16, 16, 8), (20, 16, 8), (40, 36, 20), (17, 30, 9), (100, 16, 8)]:  # windows as MONAI places them
        scan = _get_scan_interval(shape, sw.roi_size, 3, (sw.overlap,) * 3)
        assert inferer._windows(torch.zeros(1, 1, *shape)) == len(dense_patch_slices(shape, sw.roi_size, scan)), shape
    small = torch.zeros(1, 1, 20, 16, 8)
    small[..., 5:12, 5:12, 2:6] = 1.0
    assert inferer._windows(small) == 2 <= inferer._worth_checking() == 4
    broken = BreaksInBf16(_threshold_net(), zero=True)
    assert torch.equal(inferer(small, broken), sw(small, _threshold_net()))
    assert inferer.checked == {"kept": 0, "fp32": 0, "fp32_direct": 1}


def test_auto_training_precision_by_cpu(monkeypatch):
    from monai_pipeline.engine import precision as inference
    from monai_pipeline.engine.precision import PrecisionInferer, resolve_precision

    for bf16, amx, infer, train in ((False, False, "fp32", "fp32"), (True, False, "bf16", "bf16"),
                                    (True, True, "bf16", "fp32")):
        monkeypatch.setattr(inference, "cpu_bf16_supported", lambda v=bf16: v)
        monkeypatch.setattr(inference, "cpu_amx_supported", lambda v=amx: v)
        assert (resolve_precision("auto", "cpu"), resolve_precision("auto", "cpu", training=True)) == (infer, train)
        assert resolve_precision("bf16", "cpu", training=True) == "bf16"  # explicit stays explicit
    trainer_side = PrecisionInferer(torch.nn.Identity(), "auto", training=True)
    assert not trainer_side.verify and trainer_side.can_fall_back
    assert not PrecisionInferer(torch.nn.Identity(), "bf16").verify  # an explicit choice is not second-guessed


# ----------------------------------------------------------- the reproduction of issue 14, where the CPU has AMX
def _has_amx() -> bool:
    from monai_pipeline.engine.precision import cpu_amx_supported

    return cpu_amx_supported()


@pytest.mark.skipif(not _has_amx(), reason="needs a CPU with AMX-BF16 (amx_bf16 in /proc/cpuinfo), where oneDNN's AMX "
                                           "bf16 kernels turned this network's gradients to NaN (issue 14)")
@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_issue14_reproduction_never_writes_nan_weights_on_amx(precision):
    """The issue's reproduction (UNet, BatchNorm, 8 x 1 x 48 x 48 x 16, DiceCE, AdamW) through MONAI's trainer with
    this project's PrecisionInferer and NonFiniteGuard: ``auto`` trains in float32 on AMX and learns; explicit
    bf16 either trains finite (a oneDNN without the fault) or stops with NonFiniteTrainingError at its first
    step. Never NaN weights."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from monai_pipeline.engine.precision import PrecisionInferer
    from monai_pipeline.engine.training import NonFiniteGuard, NonFiniteTrainingError

    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch")
    x = torch.rand(8, 1, 48, 48, 16)
    data = [{"image": x, "label": (x > 0.9).long()}] * 3
    inferer = PrecisionInferer(SimpleInferer(), precision, channels_last=True, training=True)
    assert inferer.precision == ("fp32" if precision == "auto" else "bf16")
    losses = []
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
                                optimizer=torch.optim.AdamW(net.parameters(), 1e-3),
                                loss_function=DiceCELoss(to_onehot_y=True, softmax=True), inferer=inferer,
                                train_handlers=[NonFiniteGuard()], decollate=False,
                                prepare_batch=lambda b, d, nb, **k: (b["image"], b["label"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    try:
        trainer.run()
    except NonFiniteTrainingError as err:
        assert precision == "bf16" and err.iteration == 1, err
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    if precision == "auto":
        assert len(losses) == 3 and losses[-1] < losses[0]
