"""Networks stage: 2D/3D UNet and SegResNet by name, with MONAI's own classes underneath.

The bundles name the class directly (``"_target_": "UNet"``); :func:`build_network` is the same choice for
Python and CLI users, with the bundle's defaults.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import SegResNet, UNet

__all__ = ["NETWORK_DEFAULTS", "build_network"]

NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "norm": "batch"},
    "segresnet": {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "dropout_prob": 0.0},
}


def build_network(name: str = "unet", spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                  **kwargs: Any) -> torch.nn.Module:
    """Build a segmentation network.

    Args:
        name: ``"unet"`` or ``"segresnet"`` (case-insensitive).
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: image channels (1 for CT; 3 for the LGG MRI slices).
        out_channels: classes including background (2 for tumour / no tumour).
        kwargs: override the defaults in :data:`NETWORK_DEFAULTS`.

    Input ``(N, in_channels, *spatial)`` with spatial sizes divisible by 16; output
    ``(N, out_channels, *spatial)`` logits.
    """
    key = name.lower()
    if key not in NETWORK_DEFAULTS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORK_DEFAULTS)}")
    params = {**NETWORK_DEFAULTS[key], **kwargs}
    cls = UNet if key == "unet" else SegResNet
    return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **params)
