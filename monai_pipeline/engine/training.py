"""Training: what the bundles' ``SupervisedTrainer`` needs beyond MONAI's handlers.

- :class:`NonFiniteGuard`: no non-finite update is ever applied (fall back to float32 under ``auto``, else stop
  with :class:`NonFiniteTrainingError`);
- :class:`ValidationState`: the best metric and early-stopping count saved in checkpoints, so a resume keeps them.

The trainer itself is assembled in the bundle's ``train.json``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, from_engine
from monai.utils import CommonKeys as Keys

from monai_pipeline.engine.checkpoints import latest_checkpoint

__all__ = ["NonFiniteGuard", "NonFiniteTrainingError", "ValidationState", "NONFINITE_EXIT_CODE", "mean_dice_metric"]

logger = logging.getLogger(__name__)


NONFINITE_EXIT_CODE = 4  # ``monai-pipeline train`` exits with this when training turned non-finite


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or gradient that no fall-back could cure; the update was not applied.

    Attributes:
        epoch, iteration: where (1-based; ``iteration`` counts from the start of the run, ``batch`` within
            the epoch).
        precision: the precision the failing step ran in (``"fp32"``, ``"bf16"``, ``"fp16"``).
    """

    exit_code = NONFINITE_EXIT_CODE

    def __init__(self, message: str, epoch: int, iteration: int, batch: int, precision: str) -> None:
        super().__init__(message)
        self.epoch, self.iteration, self.batch, self.precision = epoch, iteration, batch, precision


def _scaled(engine: Any) -> bool:
    """Whether the trainer runs MONAI's CUDA amp branch (autocast + GradScaler)."""
    return bool(getattr(engine, "amp", False)) and getattr(engine, "scaler", None) is not None


def _running_precision(engine: Any) -> str:
    """What a training step runs in: the PrecisionInferer's precision, or ``"fp16-amp"`` under the trainer's
    own CUDA autocast (which wraps whatever the inferer asks for)."""
    if getattr(engine, "amp", False):
        return "fp16-amp"
    return getattr(engine.inferer, "precision", "fp32")


def _nonfinite(tensors: Iterable[torch.Tensor]) -> int:
    """How many of ``tensors`` hold a NaN or an infinity (one reduction, one synchronisation)."""
    plain = [t.as_tensor() if hasattr(t, "as_tensor") else t for t in tensors]  # MetaTensor -> Tensor
    flags = [~torch.isfinite(t.detach()).all() for t in plain if t.is_floating_point()]
    return int(torch.stack(flags).sum()) if flags else 0


class NonFiniteGuard:
    """Check every training iteration's loss and gradients before the optimiser step; never apply a NaN update.

    Attached to a MONAI ``SupervisedTrainer``, it runs on ``IterationEvents.BACKWARD_COMPLETED``, after the
    backward pass and before ``optimizer.step()``. When the loss, a gradient or a normalisation buffer is
    NaN or infinite (on any rank: under ``torchrun`` the verdict is all-reduced, so every rank decides the
    same and none waits for another):

    - the step's gradients are dropped (``optimizer.step()`` then changes nothing) and the network's buffers
      (batch-norm running statistics, which the forward pass has already updated) are restored to their
      values before the iteration: the weights stay those of the last good step;
    - if the trainer's inferer runs a reduced precision chosen by ``"auto"`` (a
      :class:`~monai_pipeline.engine.precision.PrecisionInferer` whose ``can_fall_back`` is true), the run falls back
      to float32 for good: one warning says why, the iteration is computed again in float32 and training goes
      on. The choice is part of this handler's state, saved in each checkpoint, so a resumed run keeps it;
    - otherwise (an explicit precision, float32 already, or float32 non-finite too) it raises
      :class:`NonFiniteTrainingError` with the epoch, iteration, precision, what was non-finite (the input
      batch itself included) and what to try. The latest epoch checkpoint is then the last good state.

    With a CUDA ``GradScaler`` (``amp``) gradients are not checked (scaled float16 gradients overflow by
    design), and a non-finite loss is first left to the scaler, which skips that step and lowers its scale
    (the buffers are restored all the same); only ``amp_patience`` non-finite steps in a row count as a
    failure as above. With gradient accumulation (``accumulation_steps > 1``) the micro-batches accumulated
    before a non-finite one in the same window are dropped with it.

    Args:
        ckpt_dir: the run's checkpoint folder, named in the error (where to resume from).
        network: the network whose buffers are restored (default: the trainer's).
        amp_patience: non-finite steps in a row left to CUDA's ``GradScaler`` before the guard acts.
    """

    def __init__(self, ckpt_dir: str | os.PathLike | None = None, network: torch.nn.Module | None = None,
                 amp_patience: int = 5) -> None:
        self.ckpt_dir = ckpt_dir
        self.network = network
        self.amp_patience = int(amp_patience)
        self._scaler_skips = 0  # non-finite steps in a row left to the GradScaler
        self.fell_back = False  # this run (or the one it resumes) fell back from reduced precision to float32
        self.precision: str | None = None  # what the latest step ran in (fp32, bf16, fp16; fp16-amp: CUDA amp)
        self._buffers: list[torch.Tensor] = []

    # -- state, saved in the epoch checkpoints (so a checkpoint says which precision trained it)
    def state_dict(self) -> dict:
        return {"fell_back": self.fell_back, "precision": self.precision}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fell_back = bool(state.get("fell_back", False))

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._snapshot)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._check)

    def _net(self, engine: Any) -> torch.nn.Module:
        return self.network if self.network is not None else engine.network

    def _snapshot(self, engine: Any) -> None:
        inferer = engine.inferer
        if self.fell_back and getattr(inferer, "can_fall_back", False) and inferer.precision != "fp32":
            inferer.fall_back()  # a resumed run that had fallen back (state loaded at the start) stays in fp32
            engine.amp = False
            logger.info("training in float32: this run fell back from reduced precision before it was resumed")
        self.precision = _running_precision(engine)
        bufs = [b for b in self._net(engine).buffers() if b is not None]
        if len(self._buffers) != len(bufs):
            self._buffers = [b.detach().clone() for b in bufs]
        else:
            with torch.no_grad():
                for saved, buf in zip(self._buffers, bufs):
                    saved.copy_(buf)

    def _restore(self, engine: Any, grads: bool = True) -> None:
        if grads:
            engine.optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left alone by step()
        with torch.no_grad():
            for saved, buf in zip(self._buffers, self._net(engine).buffers()):
                buf.copy_(saved)

    def _problems(self, engine: Any) -> tuple[list[str], bool]:
        """What is non-finite in this step (empty when nothing), and whether the input batch itself is."""
        out = engine.state.output
        loss = out[Keys.LOSS]
        problems = []
        if _nonfinite([loss]):
            problems.append(f"loss {float(loss.detach().float().mean())}")
        net = self._net(engine)
        if not _scaled(engine):
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            if (n := _nonfinite(grads)):
                problems.append(f"{n} of {len(grads)} gradient tensors")
        if (n := _nonfinite(list(net.buffers()))):
            problems.append(f"{n} normalisation buffers")
        bad_input = bool(problems) and _nonfinite([out[Keys.IMAGE]]) > 0
        return problems, bad_input

    @staticmethod
    def _any_rank(engine: Any, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any rank (one all-reduce; the flags as given without torchrun)."""
        if not (dist.is_available() and dist.is_initialized()):
            return list(flags)
        device = engine.state.device if dist.get_backend() == "nccl" else "cpu"
        both = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        return [bool(v) for v in both.tolist()]

    def _recompute(self, engine: Any, scaled: bool) -> None:
        """This iteration's forward, loss and backward again (after a fall-back to float32). ``scaled``: the
        trainer is in its GradScaler branch, whose ``scaler.step`` will unscale the gradients, so the loss is
        scaled here too."""
        out = engine.state.output
        out[Keys.PRED] = engine.inferer(out[Keys.IMAGE], engine.network)
        out[Keys.LOSS] = engine.loss_function(out[Keys.PRED], out[Keys.LABEL]).mean()
        acc = getattr(engine, "accumulation_steps", 1)
        loss = out[Keys.LOSS] / acc if acc > 1 else out[Keys.LOSS]
        (engine.scaler.scale(loss) if scaled else loss).backward()

    def _check(self, engine: Any) -> None:
        scaled = _scaled(engine)  # this iteration is in MONAI's GradScaler branch (CUDA amp)
        problems, bad_input = self._problems(engine)
        bad, bad_input = self._any_rank(engine, bool(problems), bad_input)  # every rank decides the same
        if not bad:
            self._scaler_skips = 0
            return
        if scaled and not bad_input and self._scaler_skips < self.amp_patience:
            self._scaler_skips += 1  # a float16 overflow: the scaler skips this step and lowers its scale
            self._restore(engine, grads=False)  # the scaler must see the non-finite gradients to do so
            logger.info("non-finite float16 step left to the GradScaler (%d in a row)", self._scaler_skips)
            return
        self._scaler_skips = 0
        self._restore(engine)
        inferer = engine.inferer
        precision = _running_precision(engine)
        state = engine.state
        batch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        distributed = dist.is_available() and dist.is_initialized()
        rank = f", rank {dist.get_rank()} of {dist.get_world_size()}" if distributed else ""
        where = f"epoch {state.epoch}, iteration {batch}/{state.epoch_length} (step {state.iteration} of the run{rank})"
        what = ", ".join(problems) or "another rank's step"
        if getattr(inferer, "can_fall_back", False) and precision != "fp32" and not bad_input:
            inferer.fall_back()
            engine.amp = False  # CUDA: no float16 autocast or loss scaling from here on
            self.fell_back, self.precision = True, "fp32"
            logger.warning("non-finite %s training at %s (%s non-finite; the update was not applied): precision "
                           "'auto' falls back to float32 from the last good state and training goes on in float32 "
                           "(saved with the checkpoints, so a resume stays in float32)", precision, where, what)
            self._recompute(engine, scaled)
            problems, bad_input = self._problems(engine)
            bad, bad_input = self._any_rank(engine, bool(problems), bad_input)
            if not bad:
                return
            self._restore(engine)
            what, precision = ", ".join(problems) or "another rank's step", "fp32"
        latest = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir else None
        last_good = (f"the latest checkpoint {latest} is the last good state: resume from it with --resume True"
                     if latest else "no epoch had completed, so there is no checkpoint to resume from")
        if bad_input:
            advice = ("the input batch itself holds NaN or infinite values: check the dataset "
                      "(monai-pipeline check DATASET) and its intensity transforms")
        elif precision == "fp16-amp":
            advice = "train in float32 (--set amp=False --set train_precision=fp32), or lower the learning rate"
        elif precision != "fp32":
            advice = "train in float32 (--set train_precision=fp32), or lower the learning rate"
        else:
            advice = ("lower the learning rate (learning_rate), check the loss and its inputs, or resume from the "
                      "last good checkpoint")
        raise NonFiniteTrainingError(
            f"training stopped: non-finite values in {precision} at {where}: {what}. The update was not "
            f"applied; {last_good}. What to try: {advice}.", state.epoch, state.iteration, batch, precision)


class ValidationState:
    """The validation's memory across a resume: best metric, the best-model saver's record, early stopping.

    Saved in each epoch checkpoint (``save_dict`` entry) so that after ``--resume`` the first validation only
    replaces ``model.pt`` when it beats the best so far, and early stopping continues its patience count.

    Args:
        evaluator: the validation ``SupervisedEvaluator`` (its ``best_metric`` and ``best_metric_epoch``).
        saver: the validation's key-metric ``CheckpointSaver`` (writes ``model.pt``).
        early_stop: MONAI's ``EarlyStopHandler`` (its ignite ``EarlyStopping`` counter and best score).
    """

    def __init__(self, evaluator: Any = None, saver: Any = None, early_stop: Any = None) -> None:
        self.evaluator, self.saver, self.early_stop = evaluator, saver, early_stop

    def state_dict(self) -> dict:
        state: dict[str, Any] = {}
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        keeper = getattr(self.saver, "_key_metric_checkpoint", None)
        if keeper is not None:
            state["best_saved"] = [[float(p), str(f)] for p, f in keeper.state_dict()["_saved"]]
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None:
            best = stopper.best_score
            state["early_stop"] = {"counter": int(stopper.counter), "best_score": None if best is None else float(best)}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        keeper = getattr(self.saver, "_key_metric_checkpoint", None)
        if keeper is not None and "best_saved" in state:
            keeper.load_state_dict({"_saved": [tuple(item) for item in state["best_saved"]]})
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None and state.get("early_stop"):
            stopper.counter = state["early_stop"]["counter"]
            stopper.best_score = state["early_stop"]["best_score"]
        logger.info("validation state restored: best %s at epoch %s, early-stop count %s", state.get("best_metric"),
                    state.get("best_metric_epoch"), (state.get("early_stop") or {}).get("counter"))


def mean_dice_metric(name: str) -> dict[str, MeanDice]:
    """``{name: MeanDice}``, the key metric of both bundles' trainers and evaluators: foreground Dice of the
    one-hot ``pred`` and ``label`` of each engine output (background left out), averaged over the cases."""
    return {name: MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))}
