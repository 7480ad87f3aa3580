"""The network factory builds 2D and 3D DynUNets whose bottleneck a hook exposes."""

import pytest
import torch

from dakr.config import ConfigError, NetConfig
from dakr.nets import BottleneckTap, build_network, encode_to_bottleneck


@pytest.mark.parametrize(
    ("config", "input_shape", "bottleneck_shape"),
    [
        (NetConfig(spatial_dims=2, filters=(8, 16, 32, 64), patch_size=(32, 48)), (2, 1, 32, 48), (2, 64, 4, 6)),
        (NetConfig(spatial_dims=3, filters=(4, 8, 16), patch_size=(16, 16, 24)), (1, 1, 16, 16, 24), (1, 16, 4, 4, 6)),
    ],
)
def test_bottleneck_shape_and_hook(config, input_shape, bottleneck_shape):
    model = build_network(config, num_classes=4)
    tap = BottleneckTap(model)
    images = torch.randn(input_shape)
    logits = model(images)
    assert logits.shape == (input_shape[0], 4, *input_shape[2:])
    assert tap.features.shape == bottleneck_shape
    # The encoder-only pass gives the same features as the full forward pass captured by the hook.
    model.eval()
    with torch.no_grad():
        model(images)
        assert torch.allclose(encode_to_bottleneck(model, images), tap.features)
    tap.remove()
    tap.features = None
    model(images)
    assert tap.features is None


def test_patch_size_must_fit_the_levels():
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_network(NetConfig(spatial_dims=2, filters=(8, 16, 32, 64), patch_size=(30, 32)), num_classes=2)
    with pytest.raises(ConfigError, match="must have 3 values"):
        build_network(NetConfig(spatial_dims=3, patch_size=(32, 32)), num_classes=2)
