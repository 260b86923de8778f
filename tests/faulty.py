"""Faults the non-finite tests inject into training: a loss that turns NaN at a chosen call (on a chosen rank),
a network that fails only under bfloat16 autocast, an image transform that writes NaN.

Bundle configs reach them through an overlay (``"_target_": "faulty.NaNLoss"``) with this folder on the
Python path (pytest puts it there; subprocesses get ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch


class NaNLoss(torch.nn.Module):
    """``loss``'s value, but NaN at the 1-based calls in ``at_calls`` (on ``rank`` only, when given)."""

    def __init__(self, loss: torch.nn.Module, at_calls: Sequence[int] = (), rank: int | None = None) -> None:
        super().__init__()
        self.loss, self.at_calls, self.rank, self.calls = loss, set(at_calls), rank, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        value = self.loss(pred, target)
        mine = self.rank is None or int(os.environ.get("RANK", 0)) == self.rank
        return value * float("nan") if mine and self.calls in self.at_calls else value


class BreaksInBf16(torch.nn.Module):
    """``net`` whose output is NaN under CPU bfloat16 autocast (oneDNN's AMX kernels did this to the nodule
    model's gradients) or, with ``zero=True``, plain background there (the 'zeroed nodules' of inference);
    with ``above``, only for inputs brighter than that (a failure that hits some cases and not others)."""

    def __init__(self, net: torch.nn.Module, zero: bool = False, above: float | None = None) -> None:
        super().__init__()
        self.net, self.zero, self.above = net, zero, above

    def forward(self, x: torch.Tensor) -> Any:
        y = self.net(x)
        if not torch.is_autocast_enabled("cpu") or (self.above is not None and float(x.max()) <= self.above):
            return y
        if self.zero:
            background = torch.zeros_like(y)
            background[:, 0] = 10.0
            return background
        return y * float("nan")


class NaNImaged:
    """Dictionary transform: the image of the ``at_calls``-th items (1-based) becomes NaN everywhere."""

    def __init__(self, at_calls: Sequence[int] = (1,)) -> None:
        self.at_calls, self.calls = set(at_calls), 0

    def __call__(self, data: Any) -> Any:
        items = data if isinstance(data, list) else [data]
        for item in items:
            self.calls += 1
            if self.calls in self.at_calls:
                item["image"] = item["image"] * float("nan")
        return data
