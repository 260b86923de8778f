"""Provenance of benchmark figures: git revision and CPU model (shared by the benchmark scripts)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_rev() -> str:
    """``HEAD``'s commit, with ``-dirty`` when code differs from it: tracked files changed, or a file not yet
    committed in the code folders (a new script measures with code no revision holds)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        # the results folder itself does not make the code dirty (a part of a benchmark rewrites its result)
        tracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":(exclude)benchmarks/results"], cwd=ROOT, capture_output=True, text=True)
        new_code = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "monai_pipeline",
                                   "scripts", "bundles", "configs"], cwd=ROOT, capture_output=True, text=True)
        dirty = (tracked.stdout + new_code.stdout).strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_isa() -> list[str]:
    """The CPU's vector and matrix extensions that matter to torch's kernels, from /proc/cpuinfo."""
    from monai_pipeline.engine.precision import cpu_flags

    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
              "amx_int8", "amx_fp16")
    return [f for f in wanted if f in cpu_flags()]


def cpu_tag() -> str:
    """Which bf16 kernels this CPU runs, for result file names: ``amx``, ``avx512bf16`` or ``nobf16``."""
    isa = cpu_isa()
    return "amx" if "amx_bf16" in isa else "avx512bf16" if "avx512_bf16" in isa else "nobf16"


def command_line(script: str, argv: list[str]) -> str:
    """The command that makes a result, as a shell runs it: ``python scripts/<script> <argv, quoted>``."""
    import shlex

    return " ".join(["python", f"scripts/{script}"] + [shlex.quote(a) for a in argv])


def machine_provenance(script: str, argv: list[str]) -> dict:
    """Where and how a result was made: the exact command, device, CPU, torch threads, git revision, date."""
    import time

    import torch

    from monai_pipeline.engine.precision import cpu_bf16_supported
    from monai_pipeline.engine.runtime import default_device

    return {
        "command": command_line(script, argv),
        "device": str(default_device()),
        "cpu_model": cpu_model(),
        # the same model name can hide different instruction sets (a cloud "AMD EPYC" with or without
        # AVX512-BF16): what decides whether precision "auto" runs bf16, and how fast the kernels are
        "cpu_bf16_native": cpu_bf16_supported(),
        # the instruction sets that decide which kernels run: AMX's bf16 kernels turned the nodule model's
        # training to NaN where AVX512-BF16's did not (issue 14)
        "cpu_isa": cpu_isa(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "git_rev": git_rev(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


SESSIONS = "training_sessions.jsonl"


def _latest_state(ckpt_dir: Path) -> dict:
    """The latest checkpoint in ``ckpt_dir`` as saved (empty when there is none)."""
    import torch

    from monai_pipeline.engine.checkpoints import latest_checkpoint

    last = latest_checkpoint(ckpt_dir)
    return torch.load(last, map_location="cpu", weights_only=True) if last else {}


def _epochs_done(ckpt: dict) -> int | None:
    state = ckpt.get("trainer")
    return int(state.get("iteration", 0) // max(1, state.get("epoch_length", 1))) if state else None


def training_session(ckpt_dir: Path, resume: bool) -> None:
    """Record a training start in ``<ckpt_dir>/../training_sessions.jsonl`` (a fresh run starts the file again):
    the git revision, the date and the epoch it resumes from. The result's ``git_rev`` is the revision at the
    time it was written; a run resumed across stops trained under each revision this file lists."""
    import json
    import time

    path = Path(ckpt_dir).parent / SESSIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"git_rev": git_rev(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "from_epoch": (_epochs_done(_latest_state(ckpt_dir)) or 0) if resume else 0}
    with open(path, "a" if resume else "w", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def _sessions(ckpt_dir: Path) -> list[dict] | None:
    import json

    path = Path(ckpt_dir).parent / SESSIONS
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_record(script: str, argv: list[str], ckpt_dir: Path, epochs_requested: int, train_s: float,
               eval_s: float) -> dict:
    """The provenance fields every benchmark result carries: epochs actually trained (from the latest
    checkpoint), the training's starts (:func:`training_session`; None: trained before they were recorded),
    device, CPU, threads, times, the exact command, git revision and date."""
    ckpt = _latest_state(ckpt_dir)
    epochs_done = _epochs_done(ckpt)
    guard = ckpt.get("nonfinite_guard") or {}
    return {
        "epochs": epochs_requested if epochs_done is None else epochs_done,
        "training_sessions": _sessions(ckpt_dir),
        "epochs_requested": epochs_requested,
        # what the training steps ran in, as the run's NonFiniteGuard saved it (None: a checkpoint from before
        # it was saved), and whether train_precision auto fell back from bf16 to float32 on the way
        "train_precision": guard.get("precision"),
        "train_precision_fell_back": guard.get("fell_back"),
        "train_seconds_this_run": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        **machine_provenance(script, argv),
    }


class PrecisionFallbacks:
    """Counts, while in a ``with`` block, the inputs that ``precision auto`` segmented again in float32 because
    its bf16 (fp16) answer failed the check against float32, and those it ran in float32 directly because they
    were too small for the check to pay (PrecisionInferer logs a line for each; the second kind at debug level,
    which this block lets through on its logger)."""

    def __enter__(self) -> "PrecisionFallbacks":
        import logging

        class _Count(logging.Handler):
            def __init__(self) -> None:
                super().__init__(logging.DEBUG)
                self.reasons: list[str] = []
                self.direct = 0

            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                if message.startswith("precision auto:") and "not used for this input" in message:
                    self.reasons.append(message)
                elif message.startswith("precision auto: float32 directly"):
                    self.direct += 1

        self._handler = _Count()
        self._logger = logging.getLogger("monai_pipeline.inference")
        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)

    @property
    def reasons(self) -> list[str]:
        return self._handler.reasons

    @property
    def direct(self) -> int:
        return self._handler.direct


def eval_precision(overrides: dict, fallbacks: "PrecisionFallbacks", cases: int) -> dict:
    """How an evaluation ran: the precision asked for and resolved on this machine, whether reduced precision
    was checked against float32, and for how many of ``cases`` inputs it was replaced by float32."""
    from monai_pipeline.engine.precision import resolve_precision, verifies
    from monai_pipeline.engine.runtime import default_device

    asked = overrides.get("precision", "auto")
    resolved = resolve_precision(asked, default_device())
    checked = resolved != "fp32" and verifies(asked, overrides.get("verify_precision"))
    return {
        "eval_precision_requested": asked,
        "eval_precision": resolved,
        "eval_precision_checked": checked,
        "eval_inputs_redone_in_fp32": len(fallbacks.reasons) if checked else 0,
        "eval_inputs_fp32_directly": fallbacks.direct if checked else 0,  # too small for the check to pay
        "eval_inputs": cases,
    }
