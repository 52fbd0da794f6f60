"""Generators of pytorch-CycleGAN-and-pix2pix, with that repository's state-dict keys.

A ``latest_net_G.pth`` written by pytorch-CycleGAN-and-pix2pix (Zhu, Park, Isola
and Efros; the code behind most published pix2pix and CycleGAN MRI results) is a
plain state dict whose keys name the modules of its ``ResnetGenerator`` or
``UnetGenerator`` (``model.1.weight``, ``model.10.conv_block.1.weight``,
``model.model.1.model.3.weight``, ...). The classes here are written for this
package (the original is not a dependency and is not imported) but build the same
module tree, so those keys load unchanged and the forward pass is the same:

* ``resnet_9blocks`` / ``resnet_6blocks``: reflection-padded 7x7 stem, two stride-2
  convolutions, 9 or 6 residual blocks, two transposed convolutions, 7x7 head, tanh.
* ``unet_256`` / ``unet_128``: the recursive skip-connection U-Net with 8 or 7
  stride-2 levels (so slices are padded to multiples of 256 or 128), tanh.

``norm`` is ``"instance"`` (InstanceNorm2d without affine parameters or running
statistics, CycleGAN's default), ``"batch"`` (BatchNorm2d with affine parameters and
running statistics, pix2pix's default) or ``"none"``. As in the original, convolutions
followed by a norm have a bias only with instance norm (and none without any norm).
``use_dropout`` inserts ``Dropout(0.5)`` in the residual blocks / inner U-Net levels.

The engine runs networks in eval mode (batch norm uses its running statistics,
dropout is off): the original's ``test.py --eval``. Without ``--eval`` that script
keeps train mode, so its outputs with batch norm or dropout differ from ours.

Examples
--------
>>> net = build_pix2pix("resnet_6blocks", input_nc=1, output_nc=1, ngf=8, norm="instance")
>>> sorted(net.state_dict())[:3]
['model.1.bias', 'model.1.weight', 'model.10.conv_block.1.bias']
>>> net.size_divisor, net.in_channels, net.architecture["name"]
(4, 1, 'resnet_6blocks')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import NeurosynthError

__all__ = ["NETG", "NORMS", "ResnetGenerator", "UnetGenerator", "build_pix2pix", "clean_state_dict"]

#: The ``--netG`` choices this package builds, with (kind, blocks or levels).
NETG: dict[str, tuple[str, int]] = {
    "resnet_9blocks": ("resnet", 9),
    "resnet_6blocks": ("resnet", 6),
    "unet_256": ("unet", 8),
    "unet_128": ("unet", 7),
}
#: The ``--norm`` choices.
NORMS = ("instance", "batch", "none")


def _norm_factory(norm: str) -> tuple[Callable[[int], nn.Module], bool]:
    """The norm layer maker for ``norm`` and whether the convolutions before it carry a bias."""
    if norm == "instance":
        return (lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)), True
    if norm == "batch":
        return (lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)), False
    if norm == "none":
        # The original compares its norm factory with InstanceNorm2d to decide the bias;
        # for "none" that comparison is false, so these convolutions have no bias either.
        return (lambda c: nn.Identity()), False
    raise NeurosynthError(f"unknown pix2pix norm {norm!r}; use one of {', '.join(NORMS)}")


class _ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with a skip connection (``conv_block``)."""

    def __init__(self, dim: int, norm: Callable[[int], nn.Module], use_dropout: bool, bias: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator (Johnson et al. 2016), as ``model`` (one Sequential)."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int, norm: str, use_dropout: bool, n_blocks: int):
        super().__init__()
        make_norm, bias = _norm_factory(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias)]
        layers += [make_norm(ngf), nn.ReLU(True)]
        for i in range(2):  # two stride-2 downsamplings
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), make_norm(2 * c), nn.ReLU(True)]
        layers += [_ResnetBlock(4 * ngf, make_norm, use_dropout, bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers.append(nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias))
            layers += [make_norm(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        # Grad-CAM's default: the output of the residual trunk (last block, 1/4 resolution).
        self.default_cam_layer = f"model.{9 + n_blocks}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _UnetBlock(nn.Module):
    """One U-Net level: down, the inner levels (``submodule``), up; concatenated with its input."""

    def __init__(
        self,
        outer: int,
        inner: int,
        make_norm: Callable[[int], nn.Module],
        bias: bool,
        *,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        use_dropout: bool = False,
    ):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(input_nc or outer, inner, 4, stride=2, padding=1, bias=bias)
        # In-place activations as in the original: the skip connection then carries the
        # LeakyReLU of this level's input, which a trained checkpoint expects.
        layers: list[nn.Module]
        if outermost:
            up = nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1)
            assert submodule is not None
            layers = [down, submodule, nn.ReLU(True), up, nn.Tanh()]
        elif submodule is None:  # innermost
            up = nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, make_norm(outer)]
        else:
            up = nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, make_norm(inner), submodule, nn.ReLU(True), up, make_norm(outer)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net generator with ``num_downs`` levels, as nested ``model`` blocks."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int, norm: str, use_dropout: bool, num_downs: int):
        super().__init__()
        make_norm, bias = _norm_factory(norm)
        block = _UnetBlock(8 * ngf, 8 * ngf, make_norm, bias)
        for _ in range(num_downs - 5):
            block = _UnetBlock(8 * ngf, 8 * ngf, make_norm, bias, submodule=block, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = _UnetBlock(mult * ngf, 2 * mult * ngf, make_norm, bias, submodule=block)
        self.model = _UnetBlock(output_nc, ngf, make_norm, bias, input_nc=input_nc, submodule=block, outermost=True)
        # Grad-CAM's default: the first decoder stage's output channels at 1/2 resolution.
        self.default_cam_layer = "model.model.1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_pix2pix(
    name: str,
    *,
    input_nc: int = 1,
    output_nc: int = 1,
    ngf: int = 64,
    norm: str = "instance",
    use_dropout: bool = False,
) -> nn.Module:
    """Build a pytorch-CycleGAN-and-pix2pix generator (``--netG name``) with random weights.

    The network carries ``in_channels``, ``size_divisor`` (4 for the ResNets, 2^levels
    for the U-Nets) and ``architecture`` (the card entry) for the engine.

    Examples
    --------
    >>> net = build_pix2pix("unet_128", ngf=4, norm="batch")
    >>> net.size_divisor, "model.model.1.model.2.running_mean" in net.state_dict()
    (128, True)
    >>> build_pix2pix("resnet_12blocks")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: unknown pix2pix generator 'resnet_12blocks'; ...
    """
    if name not in NETG:
        raise NeurosynthError(f"unknown pix2pix generator {name!r}; use one of {', '.join(NETG)}")
    for arg, value in (("input_nc", input_nc), ("output_nc", output_nc), ("ngf", ngf)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise NeurosynthError(f"pix2pix {arg} must be a positive integer, not {value!r}")
    if norm not in NORMS:
        raise NeurosynthError(f"unknown pix2pix norm {norm!r}; use one of {', '.join(NORMS)}")
    kind, n = NETG[name]
    net: nn.Module
    if kind == "resnet":
        net = ResnetGenerator(input_nc, output_nc, ngf, norm, bool(use_dropout), n_blocks=n)
        divisor = extent = 4
    else:
        net = UnetGenerator(input_nc, output_nc, ngf, norm, bool(use_dropout), num_downs=n)
        divisor = 2**n
        # Slices are zero-padded to a multiple of 256 (128); these U-Nets reach a 1x1 bottleneck
        # at that size by design, so the engine's slice-extent check asks only for a quarter
        # of it as image content (a 240 x 240 BraTS slice passes, a 60-voxel crop does not).
        extent = divisor // 8
    args: dict[str, Any] = {
        "input_nc": input_nc,
        "output_nc": output_nc,
        "ngf": ngf,
        "norm": norm,
        "use_dropout": bool(use_dropout),
    }
    # plain attributes the engine reads (setattr: nn.Module's typing only knows tensors and modules)
    attrs: dict[str, object] = {
        "in_channels": input_nc,
        "size_divisor": divisor,
        "architecture": {"source": "pix2pix", "name": name, "args": args},
    }
    if kind == "unet":
        attrs["extent_divisor"] = extent
    for attr, val in attrs.items():
        setattr(net, attr, val)
    return net


def clean_state_dict(state: dict[str, torch.Tensor], norm: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Undo what the original's saving adds: a ``module.`` prefix (DataParallel) and, for
    instance norm, the running statistics that checkpoints from before PyTorch 0.4 hold
    (the original's ``test.py`` deletes them too). Returns the cleaned dict and the dropped keys.

    Examples
    --------
    >>> sd = {"module.model.1.weight": torch.zeros(1), "model.2.running_mean": torch.zeros(1)}
    >>> cleaned, dropped = clean_state_dict(sd, "instance")
    >>> sorted(cleaned), dropped
    (['model.1.weight'], ['model.2.running_mean'])
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if norm == "instance" and key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            dropped.append(key)
            continue
        out[key] = value
    return out, dropped
