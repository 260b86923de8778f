"""Numeric precision: what ``"auto"`` means on this machine, and an inferer that runs in it and proves it."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.inferers import Inferer
from monai.utils import ensure_tuple_rep

__all__ = ["PrecisionInferer", "resolve_precision", "precision_setting", "verifies", "cpu_flags", "cpu_bf16_supported",
           "cpu_amx_supported"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from ``/proc/cpuinfo`` (read once per process; empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_amx_supported() -> bool:
    """Whether this CPU has AMX tiles with bfloat16 (Intel Xeon Sapphire Rapids and later), where oneDNN's
    bf16 kernels are AMX ones."""
    return "amx_bf16" in cpu_flags()


def resolve_precision(precision: str, device: torch.device | str, training: bool = False) -> str:
    """``"auto"`` -> the precision to run in.

    - CUDA: ``"fp16"`` (inference and training; training also uses the trainer's loss scaling);
    - a CPU with native bfloat16: ``"bf16"``, except for **training on a CPU with AMX**, which is ``"fp32"``:
      there oneDNN's AMX bf16 kernels turn the 3D UNet's gradients to NaN at some shapes (LIDC's 8 x 48 x 48
      x 16 batches: NaN at the first step, issue 14; not seen with AVX512-BF16 alone, where the LIDC benchmark
      trains in bf16); explicit ``"bf16"`` still trains in bf16 there, guarded by
      :class:`~monai_pipeline.engine.training.NonFiniteGuard`;
    - any other CPU: ``"fp32"`` (bf16 would be emulated, 10-30x slower).
    """
    device = torch.device(device)
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_bf16_supported():
        return "fp32" if training and cpu_amx_supported() else "bf16"
    return "fp32"


def precision_setting(precision: str, device: torch.device | str) -> str:
    """How a mask's precision is recorded (:func:`~monai_pipeline.engine.inference.pending`'s settings): an
    explicit precision as given; ``"auto"`` with what it resolves to on ``device`` (``"auto (bf16)"``), so masks
    made on a CPU with native bfloat16 and on one without count as different settings, and ``"auto"`` (which
    verifies its reduced-precision outputs) is not taken for an explicit ``"bf16"`` (which does not)."""
    resolved = resolve_precision(precision, device)
    return precision if precision != "auto" else f"auto ({resolved})"


def verifies(precision: str, verify: bool | None = None, training: bool = False) -> bool:
    """Whether a :class:`PrecisionInferer` asked for ``precision`` checks its reduced-precision outputs against
    float32: ``verify`` when given, else only for ``"auto"`` outside training (an explicit choice is the user's)."""
    return (precision == "auto" and not training) if verify is None else bool(verify)


_LAYOUTS = {5: torch.channels_last_3d, 4: torch.channels_last}


def _foreground(logits: torch.Tensor) -> torch.Tensor:
    """Foreground probability ``(B, *spatial)`` of network logits ``(B, C, *spatial)``: 1 - softmax's
    background channel when ``C > 1``, the sigmoid when ``C == 1``."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]


class PrecisionInferer(Inferer):
    """Run another inferer with the network in reduced precision and/or channels-last memory layout.

    MONAI's engines only autocast on CUDA (``amp``); this wrapper autocasts on the CPU too (bfloat16, which
    CPUs with AVX512-BF16/AMX compute natively) and converts each window to ``channels_last_3d`` (the layout
    oneDNN's 3D convolutions are fastest in). Outputs come back as float32 in the default layout, so
    post-processing and losses are unchanged. On 2 CPU cores with AVX512-BF16 the lung bundle's network
    time on a 512 x 512 x 300 CT drops from 2.2 s (fp32) to 1.2 s at the same Dice (0.522 / 0.525;
    ``benchmarks/results/speed_lung_cpu_avx512bf16.json``, ``ablation_big_ct``). As the training inferer it autocasts
    the forward pass (the backward pass follows), with float32 weights and optimiser state.

    **"auto" proves itself** (inference): reduced precision is only kept for an input when it gives the
    float32 answer there. After the reduced-precision run, the window (``roi_size`` of the wrapped inferer,
    the whole input for others) centred on the most confident foreground voxel of that output is run
    again both ways: in reduced precision as a batch of the inferer's ``sw_batch_size`` copies (the shapes
    whose kernels the run used; issue 14's failures followed the batch shape), in float32 alone; the result
    is kept only when both outputs are finite, float32 finds foreground in that window (an all-background
    window proves nothing, so it never passes unless ``verify_background``), and the
    foreground probabilities differ by at most ``verify_tolerance`` at every voxel of the window. Otherwise
    the input is segmented again in float32, with one log line saying why. ``checked`` counts inputs kept
    in reduced precision, inputs redone in float32, and small inputs run in float32 directly: the check costs
    one window batch in reduced precision and one window in float32 per input (measured in the lung bundle's
    docs), more than a float32 run of an input of at most ``sw_batch_size + 2`` windows, which therefore runs
    in float32 straight away (one log line says so). A rejected input costs a float32 run more.

    Args:
        inferer: the inferer to wrap (``SlidingWindowInferer``, ``SimpleInferer``...).
        precision: ``"auto"`` (see :func:`resolve_precision`), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        channels_last: convert network and inputs to channels-last (``channels_last_3d`` for volumes,
            ``channels_last`` for 2D slices).
        device: where the network runs (for ``"auto"``).
        training: the trainer's inferer (``"auto"`` resolves for training; no output check, the trainer's
            :class:`~monai_pipeline.engine.training.NonFiniteGuard` checks loss and gradients instead).
        verify: check reduced-precision outputs against float32 as above (default: for ``"auto"``, not in
            training). An explicit ``"bf16"``/``"fp16"`` is the user's choice and is not checked by default.
        verify_tolerance: largest foreground-probability difference accepted at a voxel (0-1).
        verify_background: accept a check window in which float32 finds no foreground.
    """

    def __init__(self, inferer: Inferer, precision: str = "auto", channels_last: bool = True,
                 device: torch.device | str = "cpu", training: bool = False, verify: bool | None = None,
                 verify_tolerance: float = 0.1, verify_background: bool = False) -> None:
        super().__init__()
        self.inferer = inferer
        self.device = torch.device(device)
        self.requested = precision
        self.precision = resolve_precision(precision, self.device, training)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_bf16_supported():
            logger.warning("precision bf16 on a CPU without AVX512-BF16/AMX: bfloat16 is emulated there; training "
                           "measured 5.6x slower than float32 on 32 x 32 x 16 patches (benchmarks/results/"
                           "train_precision_lung.json) and 10-30x on larger ones; use precision 'auto' or 'fp32'")
        self.channels_last = bool(channels_last)
        self.verify = verifies(precision, verify, training)
        self.verify_tolerance = float(verify_tolerance)
        self.verify_background = bool(verify_background)
        self.checked = {"kept": 0, "fp32": 0, "fp32_direct": 0}
        self._said_direct = False
        self._converted: set[int] = set()

    @property
    def can_fall_back(self) -> bool:
        """Whether the precision was chosen by ``"auto"`` (so float32 may replace it when it fails)."""
        return self.requested == "auto"

    def fall_back(self) -> None:
        """Run in float32 from now on (the trainer's :class:`~monai_pipeline.engine.training.NonFiniteGuard` calls it)."""
        self.precision = "fp32"

    def _network(self, network: Callable) -> Callable:
        if not (self.channels_last and isinstance(network, torch.nn.Module)):
            return network
        if id(network) not in self._converted:
            with torch.no_grad():  # 3D kernels channels_last_3d, 2D kernels channels_last; the same Parameters
                for p in network.parameters():
                    if p.ndim in _LAYOUTS:
                        p.data = p.data.contiguous(memory_format=_LAYOUTS[p.ndim])
            self._converted.add(id(network))

        def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if x.ndim in _LAYOUTS:
                x = x.contiguous(memory_format=_LAYOUTS[x.ndim])
            return network(x, *args, **kwargs)

        return run

    def _autocast(self, device_type: str):
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device_type, dtype=dtype)

    def _fp32(self, inputs: torch.Tensor, net: Callable, *args: Any, **kwargs: Any) -> Any:
        """The wrapped inferer in float32, even inside a caller's autocast (MONAI's engines autocast the whole
        inferer call when ``amp`` is on)."""
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            return _to_float(self.inferer(inputs, net, *args, **kwargs))

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        net = self._network(network)
        if self.precision == "fp32":
            return self._fp32(inputs, net, *args, **kwargs)
        if self.verify and (windows := self._windows(inputs)) <= self._worth_checking():
            self.checked["fp32_direct"] += 1  # the check would cost more than the float32 run it could save
            logger.debug("precision auto: float32 directly for an input of %d windows", windows)
            if not self._said_direct:
                self._said_direct = True
                logger.info("precision auto: inputs of up to %d sliding windows (this one: %d) run in float32 "
                            "directly: checking %s against float32 would cost more than float32 itself",
                            self._worth_checking(), windows, self.precision)
            return self._fp32(inputs, net, *args, **kwargs)
        with self._autocast(inputs.device.type):
            out = _to_float(self.inferer(inputs, net, *args, **kwargs))
        if not self.verify:
            return out
        reason = self._disproved(inputs, net, out, args, kwargs)
        if reason is None:
            self.checked["kept"] += 1
            return out
        self.checked["fp32"] += 1
        logger.info("precision auto: %s not used for this input (%s); segmented in float32", self.precision, reason)
        return self._fp32(inputs, net, *args, **kwargs)

    def _roi(self, spatial: Sequence[int]) -> list[int]:
        roi = getattr(self.inferer, "roi_size", None) or spatial
        roi = ensure_tuple_rep(roi, len(spatial))  # MONAI takes one int for every dimension too
        return [s if (r is None or int(r) <= 0) else int(r) for r, s in zip(roi, spatial)]

    def _windows(self, inputs: torch.Tensor) -> int:
        """How many windows the wrapped inferer runs over ``inputs`` (as MONAI's sliding window places them;
        1 for an inferer without ``roi_size``)."""
        if getattr(self.inferer, "roi_size", None) is None:
            return 1
        spatial = inputs.shape[2:]
        overlaps = ensure_tuple_rep(getattr(self.inferer, "overlap", 0.25), len(spatial))
        count = 1
        for r, s, overlap in zip(self._roi(spatial), spatial, overlaps):
            s = max(s, r)  # the sliding window pads a smaller input up to the window
            step = r if r == s else max(1, int(r * (1 - overlap)))
            count *= 1 if s <= r else -(-(s - r) // step) + 1
        return count

    def _worth_checking(self) -> int:
        """The most windows an input may have and still run in float32 directly. Checking costs one window batch
        in reduced precision and one float32 window on top of the reduced-precision pass; float32 windows take
        about twice as long as bf16 ones (AVX512-BF16), so up to ``sw_batch_size + 2`` windows the float32 run is
        the cheaper way to the float32 answer (LIDC's nodule crops, SimpleInferer's whole inputs)."""
        return self._sw_batch() + 2

    def _sw_batch(self) -> int:
        return max(1, int(getattr(self.inferer, "sw_batch_size", 1)))

    def _window(self, image: torch.Tensor, centre: Sequence[int]) -> torch.Tensor:
        """The ``roi_size`` window of ``image`` (1, C, *spatial) around ``centre``, padded as the sliding
        window pads an input smaller than the window (symmetrically, with zeros)."""
        spatial = image.shape[2:]
        roi = self._roi(spatial)
        index = [slice(None), slice(None)]
        pad: list[int] = []
        for c, r, s in zip(centre, roi, spatial):
            start = min(max(0, int(c) - r // 2), max(0, s - r))
            index.append(slice(start, start + r))
            extra = max(0, r - s)
            pad = [extra // 2, extra - extra // 2] + pad  # torch's pad lists the last dimension first
        window = image[tuple(index)]
        return torch.nn.functional.pad(window, pad) if any(pad) else window

    def _disproved(self, inputs: torch.Tensor, net: Callable, out: Any, args: tuple, kwargs: dict) -> str | None:
        """Why the reduced-precision ``out`` cannot be kept (see the class docstring), or None."""
        if not isinstance(out, torch.Tensor) or out.ndim != inputs.ndim or out.shape[0] != inputs.shape[0]:
            return "an output that cannot be checked"
        if not bool(torch.isfinite(out).all()):
            return "non-finite output"
        prob = _foreground(out)
        b, *centre = np.unravel_index(int(torch.argmax(prob)), tuple(prob.shape))
        window = self._window(inputs[b:b + 1], centre)
        batch = window.expand(self._sw_batch(), *window.shape[1:]).contiguous()  # the batch shape the run's kernels saw
        with torch.no_grad():
            with self._autocast(inputs.device.type):
                low = net(batch, *args, **kwargs)
            with torch.autocast(device_type=inputs.device.type, enabled=False):
                high = net(window, *args, **kwargs)  # the reference: float32 is trusted at any batch size
        if not (isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)):
            return "a network output that cannot be checked"
        if not bool(torch.isfinite(low).all()):
            return "non-finite output in the check window"
        p_low, p_high = _foreground(low), _foreground(high)  # (n, ...) against (1, ...): every copy is compared
        if float(p_high.max()) < 0.5 and not self.verify_background:
            return "no foreground in float32 in its most confident window, so nothing proves it"
        diff = float((p_low - p_high).abs().max())
        if diff > self.verify_tolerance:
            return (f"foreground probability off by up to {diff:.3f} (> {self.verify_tolerance}) in its most "
                    "confident window")
        return None

    def __repr__(self) -> str:
        return (f"PrecisionInferer({self.inferer!r}, precision={self.precision!r}, channels_last={self.channels_last}, "
                f"verify={self.verify})")


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float().contiguous() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out
