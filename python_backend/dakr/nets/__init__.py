"""Segmentation networks built from a config, with access to their bottleneck features."""

from dakr.nets.factory import BottleneckTap, build_network, encode_to_bottleneck

__all__ = ["BottleneckTap", "build_network", "encode_to_bottleneck"]
