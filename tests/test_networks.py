"""Networks stage: UNet and SegResNet by name, 2D and 3D, output shape = input shape with class channels."""

from __future__ import annotations

import pytest
import torch

from monai_pipeline.networks import build_network


@pytest.mark.parametrize("name", ["unet", "SegResNet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_build_network_shapes(name, dims):
    net = build_network(name, spatial_dims=dims, in_channels=3 if dims == 2 else 1, out_channels=2)
    x = torch.randn(1, 3 if dims == 2 else 1, *([32] * dims))
    with torch.no_grad():
        assert net(x).shape == (1, 2, *([32] * dims))


def test_unknown_network():
    with pytest.raises(ValueError, match="unknown network"):
        build_network("vnet-x")
