"""Flip test-time augmentation around any inferer."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.inferers import Inferer

__all__ = ["FlipInferer"]


class FlipInferer(Inferer):
    """Run ``inferer`` on the input as it is and flipped along each set of spatial axes in ``flips``, flip each
    output back, and average the class probabilities (softmax over channels).

    The mean is returned as log-probabilities, so a later softmax (``Activationsd``, ``ResampleToSourced``, a
    Dice metric after argmax) gives the mean probabilities and everything downstream is unchanged. With no
    ``flips`` it is ``inferer`` itself (the logits pass through untouched).

    Args:
        inferer: the inferer to wrap (a ``PrecisionInferer`` around a ``SlidingWindowInferer``, ...).
        flips: spatial axes to flip per extra pass, 0-based over the spatial dimensions of a ``(B, C, *spatial)``
            input, e.g. ``[[0], [1], [0, 1]]`` (four passes in all).

    Call: ``inputs`` ``(B, C_in, *spatial)``; returns ``(B, C_out, *spatial)`` float32.
    """

    def __init__(self, inferer: Inferer, flips: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        self.inferer = inferer
        self.flips = [tuple(int(a) for a in axes) for axes in flips or ()]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inferer(inputs, network, *args, **kwargs)
        if not self.flips:
            return out
        total = torch.softmax(out.float(), dim=1)
        for axes in self.flips:
            dims = [a + 2 for a in axes]
            flipped = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            total = total + torch.softmax(torch.flip(flipped.float(), dims), dim=1)
        return torch.log((total / (len(self.flips) + 1)).clamp_min(1e-8))

    def __getattr__(self, name: str) -> Any:  # the wrapped inferer's attributes (roi_size, checked, ...)
        if name in ("inferer", "flips") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inferer, name)
