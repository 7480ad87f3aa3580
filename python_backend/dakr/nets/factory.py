"""Network factory: a MONAI ``DynUNet`` from a :class:`~dakr.config.NetConfig`.

The bottleneck feature map is what the continual-learning losses align. It is captured by a
forward hook on the network's ``bottleneck`` module (:class:`BottleneckTap`) during the forward
pass that the segmentation loss needs anyway, and a frozen previous network is run only up to
its bottleneck with :func:`encode_to_bottleneck`. :class:`DecoderTap` captures
the last decoder level instead.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet
from torch import nn

from dakr.config import NetConfig


def build_network(config: NetConfig, num_classes: int, in_channels: int = 1) -> DynUNet:
    """Build a DynUNet with ``len(config.filters)`` resolution levels.

    The first level keeps full resolution; each further level halves it, so the bottleneck of
    a ``patch_size`` input has spatial shape ``patch_size / 2**(levels-1)`` and
    ``config.filters[-1]`` channels.
    """
    config.validate()
    levels = len(config.filters)
    return DynUNet(
        spatial_dims=config.spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=list(config.filters),
        norm_name=config.norm,
        dropout=config.dropout or None,
        res_block=False,
    )


def unwrap(model: nn.Module) -> DynUNet:
    """The DynUNet inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def encode_to_bottleneck(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run only the encoder of ``model`` and return its bottleneck feature map (B, C, *S)."""
    net = unwrap(model)
    features = net.input_block(images)
    for block in net.downsamples:
        features = block(features)
    return net.bottleneck(features)


def prenorm_module(model: nn.Module) -> nn.Module:
    """The bottleneck's last convolution, whose output enters the final normalisation + activation."""
    return unwrap(model).bottleneck.conv2


def decoder_module(model: nn.Module) -> nn.Module:
    """The output block, whose input is the last decoder level's feature map (full resolution, ``filters[0]`` channels)."""
    return unwrap(model).output_block


class FeatureTap:
    """Keeps the output (``features``) and the first input (``inputs``) of ``module`` in the latest forward pass."""

    def __init__(self, module: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self.inputs: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.inputs = inputs[0]
        self.features = output

    def remove(self) -> None:
        """Detach the hook from the network."""
        self._handle.remove()


class BottleneckTap(FeatureTap):
    """Keeps the bottleneck feature map of the latest forward pass of ``model``, and the input
    of the tapped module in ``inputs``.

    With ``prenorm=True`` it keeps the bottleneck's activations before its final normalisation
    and activation (the output of :func:`prenorm_module`) instead.

    Usage::

        tap = BottleneckTap(model)
        logits = model(images)
        features = tap.features   # (B, filters[-1], *patch_size / 2**(levels-1))
        tap.remove()
    """

    def __init__(self, model: nn.Module, prenorm: bool = False) -> None:
        super().__init__(prenorm_module(model) if prenorm else unwrap(model).bottleneck)


class DecoderTap(FeatureTap):
    """Keeps the last decoder level's feature map of the latest forward pass of ``model`` in ``features``
    (the input of :func:`decoder_module`; ``(B, filters[0], *patch_size)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(decoder_module(model))

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        super()._keep(module, inputs, output)
        self.features = self.inputs
