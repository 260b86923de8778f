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


def machine_provenance(script: str, argv: list[str]) -> dict:
    """Where and how a result was made: the exact command, device, CPU, torch threads, git revision, date."""
    import shlex
    import time

    import torch

    from monai_pipeline.inference import cpu_bf16_supported
    from monai_pipeline.training import default_device

    return {
        "command": " ".join(["python", f"scripts/{script}"] + [shlex.quote(a) for a in argv]),
        "device": str(default_device()),
        "cpu_model": cpu_model(),
        # the same model name can hide different instruction sets (a cloud "AMD EPYC" with or without
        # AVX512-BF16): what decides whether precision "auto" runs bf16, and how fast the kernels are
        "cpu_bf16_native": cpu_bf16_supported(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "git_rev": git_rev(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_record(script: str, argv: list[str], ckpt_dir: Path, epochs_requested: int, train_s: float,
               eval_s: float) -> dict:
    """The provenance fields every benchmark result carries: epochs actually trained (from the latest
    checkpoint), device, CPU, threads, times, the exact command, git revision and date."""
    import torch

    from monai_pipeline.training import latest_checkpoint

    last = latest_checkpoint(ckpt_dir)
    state = torch.load(last, map_location="cpu", weights_only=True)["trainer"] if last else {}
    epochs_done = int(state.get("iteration", 0) // max(1, state.get("epoch_length", 1))) if state else epochs_requested
    return {
        "epochs": epochs_done,
        "epochs_requested": epochs_requested,
        "train_seconds_this_run": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        **machine_provenance(script, argv),
    }
