"""The card's ``intensity_transform`` as a module around the network.

Examples
--------
>>> w = IntensityTransform(torch.nn.Identity(), (0.0, 1.0), (-1.0, 1.0), clip=True)
>>> w(torch.tensor([-0.5, 0.25, 2.0])).tolist()   # clipped to [0, 1]; identity inside
[0.0, 0.25, 1.0]
>>> inner = torch.nn.Tanh()
>>> float(IntensityTransform(inner, (0.0, 1.0), (-1.0, 1.0), clip=True)(torch.tensor(0.5)))  # tanh(0) -> 0.5
0.5
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IntensityTransform"]

#: Attributes the engine reads from a network, passed through from the wrapped one.
_PASSED = ("in_channels", "size_divisor", "extent_divisor", "spatial_dims", "architecture", "is_onnx")


class IntensityTransform(nn.Module):
    """``net`` between a clipped linear input map and its inverse on the output.

    The normalised input ``x`` is clipped to ``input_range`` (when ``clip``), mapped
    linearly onto ``network_range``, run through ``net``, and the output mapped back
    from ``network_range`` to ``input_range``. For pytorch-CycleGAN-and-pix2pix
    models ``input_range=(0, 1)`` (an 8-bit image over 255) and ``network_range=(-1, 1)``
    (their ``Normalize(0.5, 0.5)`` input and tanh output).
    """

    def __init__(
        self,
        net: nn.Module,
        input_range: tuple[float, float],
        network_range: tuple[float, float],
        clip: bool = True,
    ):
        super().__init__()
        self.net = net
        self.lo, self.hi = float(input_range[0]), float(input_range[1])
        self.a, self.b = float(network_range[0]), float(network_range[1])
        self.clip = bool(clip)
        for attr in _PASSED:
            if hasattr(net, attr):
                setattr(self, attr, getattr(net, attr))
        layer = getattr(net, "default_cam_layer", None)
        if layer:
            self.default_cam_layer = f"net.{layer}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip:
            x = x.clamp(self.lo, self.hi)
        gain = (self.b - self.a) / (self.hi - self.lo)
        y = self.net((x - self.lo) * gain + self.a)
        return (y - self.a) / gain + self.lo
