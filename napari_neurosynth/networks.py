"""Generators and the PatchGAN discriminator, built by name from JSON arguments.

Every generator maps one tensor ``(B, C, H, W)`` to ``(B, 1, H, W)`` in the
target's normalised intensity units (see ``docs/architecture.md``). ``C`` is
``len(card["inputs"]) * (2 * context + 1)``: inputs in card order, each
contributing its slice and ``context`` neighbours on either side (2.5-D models
are ordinary 2-D models with more input channels).

Common attributes of every generator:

``in_channels``
    Number of input channels it expects.
``size_divisor``
    ``H`` and ``W`` must be multiples of it (the inference engine pads and crops).
``default_cam_layer``
    Dotted name of a submodule (see ``dict(net.named_modules())``) whose output is a
    plain feature tensor, a sensible default layer for Grad-CAM.
``architecture``
    ``{"name": ..., "args": {...}}``, JSON-serialisable, exactly what a model card
    stores; ``build_network(**net.architecture["args"])`` rebuilds the network.

Output activation: generators end in a linear convolution (no tanh, no
softplus). Normalised intensities are >= 0 but a linear head keeps gradients
alive in the dark background (softplus saturates there and tanh caps the bright
end, where lesions are), and the MCSR model adds a signed residual to its base
prediction. Small negative values near the background are possible; the
inference engine may clip at 0. ``final_activation="softplus"`` or ``"relu"`` is
available for models that must never output negative values.

Conv-norm-activation blocks come from MONAI (:class:`monai.networks.blocks.Convolution`);
the wiring (CycleGAN ResNet trunk, pix2pix U-Net, Hi-Net-style fusion, FGDL-style
SR branch with grid-sample deformable alignment, PatchGAN) is written here
because MONAI has no 2-D image-translation generators of these shapes.
Upsampling is bilinear-then-conv rather than transposed convolution, which
avoids checkerboard artefacts (Odena et al., Distill 2016).

Examples
--------
>>> import torch
>>> net = build_network("resnet", in_channels=3, base=8, n_blocks=2)
>>> net(torch.zeros(1, 3, 32, 32)).shape
torch.Size([1, 1, 32, 32])
>>> net.size_divisor, net.default_cam_layer
(4, 'trunk')
"""

from __future__ import annotations

import inspect
from typing import Any, TypeAlias, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .errors import NeurosynthError

__all__ = [
    "ARCHITECTURES",
    "DeformableAlign",
    "GENERATORS",
    "ModalityFusion",
    "ResidualBlock",
    "FusionGenerator",
    "MCSRGenerator",
    "PatchGANDiscriminator",
    "ResNetGenerator",
    "UNetGenerator",
    "build_network",
    "count_parameters",
    "warp",
    "warp_groups",
]

#: A MONAI layer argument: ``(name, keyword arguments)``, or None for no layer.
LayerSpec: TypeAlias = "tuple[str, dict[str, Any]] | None"

_ACT: LayerSpec = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})
_RELU: LayerSpec = ("relu", {"inplace": True})
_NORM: LayerSpec = ("instance", {"affine": True})
#: Normalisation layers a generator may use (card argument ``norm``). ``"instance"``
#: (the default, so older cards load unchanged) normalises every slice by its own
#: statistics, so a voxel's output depends on how much background the slice holds;
#: ``"batch"`` uses running statistics at inference and ``"none"`` has no layer, so
#: with either the output is a local function of the input (crop-invariant).
NORMS: dict[str, LayerSpec] = {"instance": _NORM, "batch": ("batch", {}), "none": None}
_FINAL = ("none", "softplus", "relu")


def _conv(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    act: LayerSpec = _RELU,
    norm: LayerSpec = _NORM,
    padding: int | None = None,
) -> Convolution:
    """Conv2d -> InstanceNorm -> activation (MONAI's ADN ordering)."""
    return Convolution(
        spatial_dims=2,
        in_channels=cin,
        out_channels=cout,
        kernel_size=k,
        strides=stride,
        act=act,
        norm=norm,
        padding=padding,
        adn_ordering="NDA",
    )


def _reflect_conv(
    cin: int, cout: int, k: int, act: LayerSpec = _RELU, norm: LayerSpec = _NORM, conv_only: bool = False
) -> nn.Sequential:
    """Reflection padding then an unpadded convolution, as in CycleGAN (fewer border artefacts)."""
    conv = Convolution(
        spatial_dims=2,
        in_channels=cin,
        out_channels=cout,
        kernel_size=k,
        padding=0,
        act=act,
        norm=norm,
        conv_only=conv_only,
    )
    return nn.Sequential(nn.ReflectionPad2d(k // 2), conv)


class _Up(nn.Sequential):
    """Bilinear x2 upsampling followed by conv-norm-act."""

    def __init__(self, cin: int, cout: int, act: LayerSpec = _RELU, norm: LayerSpec = _NORM) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(cin, cout, act=act, norm=norm)
        )


class ResidualBlock(nn.Module):
    """CycleGAN residual block: x + IN(conv(ReLU(IN(conv(x))))), reflection padded.

    Examples
    --------
    >>> block = ResidualBlock(4)
    >>> block(torch.zeros(1, 4, 6, 6)).shape
    torch.Size([1, 4, 6, 6])
    """

    def __init__(self, channels: int, norm: LayerSpec = _NORM) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _reflect_conv(channels, channels, 3, norm=norm),
            _reflect_conv(channels, channels, 3, act=None, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _norm_spec(name: str) -> LayerSpec:
    """MONAI's norm argument for a generator's ``norm`` choice."""
    if name not in NORMS:
        raise NeurosynthError(f"norm must be one of {', '.join(NORMS)}, not {name!r}")
    return NORMS[name]


def _final_activation(name: str) -> nn.Module:
    if name not in _FINAL:
        raise NeurosynthError(f"final_activation must be one of {', '.join(_FINAL)}, not {name!r}")
    return {"none": nn.Identity, "softplus": nn.Softplus, "relu": nn.ReLU}[name]()


class _Generator(nn.Module):
    """Shared bookkeeping: the JSON architecture record and argument checks."""

    arch_name = ""
    size_divisor = 1
    default_cam_layer = ""
    in_channels = 1

    def _record(self, **args: Any) -> None:
        self.architecture = {"name": self.arch_name, "args": dict(args)}


class ResNetGenerator(_Generator):
    """CycleGAN-style ResNet generator (Zhu et al. 2017; survey ref. [132]).

    Reflection-padded 7x7 stem, two stride-2 downsamplings, ``n_blocks``
    residual blocks at 1/4 resolution, two x2 upsamplings and a 7x7 linear
    output convolution; instance normalisation throughout. ``n_downsampling``
    0 or 1 keeps the trunk at full or half resolution: a much smaller receptive
    field, i.e. a mapping of each voxel's neighbourhood that cannot invent
    anatomy far from it.

    Parameters
    ----------
    in_channels
        Input channels (inputs x slices per input).
    base
        Channels of the stem; the trunk has ``4 * base``.
    n_blocks
        Residual blocks in the trunk.
    out_channels
        Output channels (1 for every model of this package).
    final_activation
        ``"none"`` (default, linear), ``"softplus"`` or ``"relu"``.
    n_downsampling
        Stride-2 stages before the trunk (0, 1 or 2; CycleGAN's is 2); the trunk has
        ``base * 2 ** n_downsampling`` channels and ``size_divisor`` is ``2 ** n_downsampling``.

    Examples
    --------
    >>> net = ResNetGenerator(in_channels=1, base=8, n_blocks=2)
    >>> net(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
    >>> local = ResNetGenerator(in_channels=1, base=8, n_blocks=2, n_downsampling=0)
    >>> local.size_divisor, local(torch.zeros(1, 1, 15, 15)).shape
    (1, torch.Size([1, 1, 15, 15]))
    """

    arch_name = "resnet"
    size_divisor = 4

    def __init__(
        self,
        in_channels: int = 1,
        base: int = 16,
        n_blocks: int = 4,
        out_channels: int = 1,
        final_activation: str = "none",
        n_downsampling: int = 2,
        norm: str = "instance",
    ):
        super().__init__()
        if n_downsampling not in (0, 1, 2):
            raise NeurosynthError(f"resnet n_downsampling must be 0, 1 or 2, not {n_downsampling!r}")
        record = dict(
            in_channels=in_channels,
            base=base,
            n_blocks=n_blocks,
            out_channels=out_channels,
            final_activation=final_activation,
        )
        if n_downsampling != 2:  # cards of the classic generator stay as they were
            record["n_downsampling"] = n_downsampling
        if norm != "instance":
            record["norm"] = norm
        self._record(**record)
        nm = _norm_spec(norm)
        self.in_channels = in_channels
        self.size_divisor = 2**n_downsampling
        trunk = base * 2**n_downsampling
        self.stem = _reflect_conv(in_channels, base, 7, norm=nm)
        # names kept from the fixed two-stage layout so existing weights load unchanged
        self.down1 = _conv(base, 2 * base, stride=2, norm=nm) if n_downsampling >= 1 else nn.Identity()
        self.down2 = _conv(2 * base, 4 * base, stride=2, norm=nm) if n_downsampling == 2 else nn.Identity()
        self.trunk = nn.Sequential(*[ResidualBlock(trunk, nm) for _ in range(n_blocks)])
        self.up1 = _Up(4 * base, 2 * base, norm=nm) if n_downsampling == 2 else nn.Identity()
        self.up2 = _Up(2 * base, base, norm=nm) if n_downsampling >= 1 else nn.Identity()
        self.head = _reflect_conv(base, out_channels, 7, act=None, norm=None, conv_only=True)
        self.final = _final_activation(final_activation)
        self.default_cam_layer = "trunk"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features, ``(B, base * 2**n_downsampling, H / 2**n_downsampling, W / 2**n_downsampling)``."""
        return self.trunk(self.down2(self.down1(self.stem(x))))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.final(self.head(self.up2(self.up1(f))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.features(x))


class UNetGenerator(_Generator):
    """pix2pix-style U-Net generator (Isola et al. 2017; survey ref. [46]).

    ``depth`` stride-2 downsamplings, each level two conv-IN-LeakyReLU layers,
    skip connections by concatenation, bilinear upsampling in the decoder.
    Channels double per level from ``base`` up to ``4 * base`` (kept small for CPU inference).

    Parameters
    ----------
    in_channels, base, depth, out_channels, final_activation
        See :class:`ResNetGenerator`; ``size_divisor`` is ``2 ** depth``.

    Examples
    --------
    >>> net = UNetGenerator(in_channels=2, base=8, depth=2)
    >>> net(torch.zeros(1, 2, 8, 12)).shape
    torch.Size([1, 1, 8, 12])
    """

    arch_name = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        base: int = 16,
        depth: int = 3,
        out_channels: int = 1,
        final_activation: str = "none",
        norm: str = "instance",
    ):
        super().__init__()
        record = dict(
            in_channels=in_channels,
            base=base,
            depth=depth,
            out_channels=out_channels,
            final_activation=final_activation,
        )
        self._record(**record, **({"norm": norm} if norm != "instance" else {}))
        nm = _norm_spec(norm)
        self.in_channels = in_channels
        self.size_divisor = 2**depth
        ch = [base * 2 ** min(i, 2) for i in range(depth + 1)]  # capped at 4*base: CPU-sized
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        cin = in_channels
        for i in range(depth):
            self.encoders.append(
                nn.Sequential(_conv(cin, ch[i], act=_ACT, norm=nm), _conv(ch[i], ch[i], act=_ACT, norm=nm))
            )
            self.downs.append(_conv(ch[i], ch[i + 1], k=4, stride=2, act=_ACT, padding=1, norm=nm))
            cin = ch[i + 1]
        self.bottleneck = nn.Sequential(
            _conv(ch[depth], ch[depth], act=_ACT, norm=nm), _conv(ch[depth], ch[depth], act=_ACT, norm=nm)
        )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(_Up(ch[i + 1], ch[i], act=_ACT, norm=nm))
            self.decoders.append(
                nn.Sequential(_conv(2 * ch[i], ch[i], act=_ACT, norm=nm), _conv(ch[i], ch[i], act=_ACT, norm=nm))
            )
        self.head = Convolution(2, ch[0], out_channels, kernel_size=1, conv_only=True)
        self.final = _final_activation(final_activation)
        # A middle decoder stage (half resolution for depth 3), not the bottleneck:
        # with skip connections and instance norm the deep stages couple the whole
        # slice. On t1_to_t2 and a plaque ROI, HiResCAM mass within 24 mm of the ROI:
        # bottleneck <1% (3 mm); decoders.0 85% at 3 mm but 8% at 1 mm;
        # decoders.1 43% at 1 mm; the last stage is the ROI itself (uninformative).
        self.default_cam_layer = f"decoders.{max(0, depth - 2)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.final(self.head(x))


class ModalityFusion(nn.Module):
    """Fuse per-input feature maps of equal shape into one.

    ``"concat"`` concatenates and mixes with a 1x1 convolution (MM-GAN-like
    late concatenation, Sharma & Hamarneh 2020, survey ref. [85]); ``"mean"`` and
    ``"max"`` are element-wise and order-free; ``"hybrid"`` is Hi-Net's Mixed
    Fusion Block (Zhou et al. 2020, survey ref. [131]): element-wise sum, product
    and maximum, concatenated and mixed by a 3x3 convolution.

    Examples
    --------
    >>> a, b = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    >>> torch.equal(ModalityFusion(4, 2, mode="max")([a, b]), b)
    True
    >>> ModalityFusion(4, 2, mode="mean")([a, b]).unique()
    tensor([0.5000])
    >>> ModalityFusion(4, 2)([a, b]).shape   # hybrid: sum, product and max, mixed by a 3x3 conv
    torch.Size([1, 4, 2, 2])
    >>> ModalityFusion(4, 2, mode="sum")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: fusion mode must be one of hybrid, concat, mean, max, not 'sum'
    """

    modes = ("hybrid", "concat", "mean", "max")

    def __init__(self, channels: int, n_inputs: int, mode: str = "hybrid", norm: LayerSpec = _NORM) -> None:
        super().__init__()
        if mode not in self.modes:
            raise NeurosynthError(f"fusion mode must be one of {', '.join(self.modes)}, not {mode!r}")
        self.mode = mode
        self.mix: nn.Module
        if mode == "concat":
            self.mix = _conv(n_inputs * channels, channels, k=1, norm=norm)
        elif mode == "hybrid":
            self.mix = _conv(3 * channels, channels, norm=norm)
        else:
            self.mix = nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        stack = torch.stack(feats, dim=0)
        if self.mode == "concat":
            return self.mix(torch.cat(feats, dim=1))
        if self.mode == "mean":
            return stack.mean(0)
        if self.mode == "max":
            return stack.amax(0)
        return self.mix(torch.cat([stack.sum(0), stack.prod(0), stack.amax(0)], dim=1))


class _Encoder(nn.Module):
    """Stem + two stride-2 convs; returns features at 1, 1/2 and 1/4 resolution."""

    def __init__(self, cin: int, base: int, norm: LayerSpec = _NORM) -> None:
        super().__init__()
        self.stem = _reflect_conv(cin, base, 7, norm=norm)
        self.down1 = _conv(base, 2 * base, stride=2, norm=norm)
        self.down2 = _conv(2 * base, 4 * base, stride=2, norm=norm)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.down1(f0)
        return [f0, f1, self.down2(f1)]


class FusionGenerator(_Generator):
    """Multi-input generator: one encoder per input, fused at every scale, shared decoder.

    Input channels are split into ``n_inputs`` consecutive groups of
    ``channels_per_input`` (card order; 2.5-D context slices stay within their
    group). Each group has its own small encoder (stem, two stride-2 convs);
    features are fused at full, 1/2 and 1/4 resolution (layer-wise fusion as in
    Hi-Net, survey ref. [131]), the 1/4 fusion goes through ``n_blocks`` residual
    blocks and a U-Net-style decoder uses the finer fused maps as skips.

    Parameters
    ----------
    n_inputs
        Number of input modalities (e.g. 2 for T1+T2 -> FLAIR).
    channels_per_input
        Channels per modality, ``2 * context + 1``.
    base
        Encoder stem channels.
    n_blocks
        Residual blocks after fusion.
    fusion
        ``"hybrid"`` (default, Hi-Net MFB), ``"concat"``, ``"mean"`` or ``"max"``.

    Examples
    --------
    >>> net = FusionGenerator(n_inputs=2, channels_per_input=1, base=8, n_blocks=1)
    >>> net(torch.zeros(1, 2, 16, 16)).shape
    torch.Size([1, 1, 16, 16])
    """

    arch_name = "fusion"
    size_divisor = 4

    def __init__(
        self,
        n_inputs: int = 2,
        channels_per_input: int = 1,
        base: int = 16,
        n_blocks: int = 2,
        fusion: str = "hybrid",
        out_channels: int = 1,
        final_activation: str = "none",
        norm: str = "instance",
    ):
        super().__init__()
        record = dict(
            n_inputs=n_inputs,
            channels_per_input=channels_per_input,
            base=base,
            n_blocks=n_blocks,
            fusion=fusion,
            out_channels=out_channels,
            final_activation=final_activation,
        )
        self._record(**record, **({"norm": norm} if norm != "instance" else {}))
        nm = _norm_spec(norm)
        self.n_inputs = n_inputs
        self.channels_per_input = channels_per_input
        self.in_channels = n_inputs * channels_per_input
        self.encoders = nn.ModuleList([_Encoder(channels_per_input, base, nm) for _ in range(n_inputs)])
        self.fuse = nn.ModuleList([ModalityFusion(c, n_inputs, fusion, nm) for c in (base, 2 * base, 4 * base)])
        self.trunk = nn.Sequential(*[ResidualBlock(4 * base, nm) for _ in range(n_blocks)])
        self.up1 = _Up(4 * base, 2 * base, norm=nm)
        self.dec1 = _conv(4 * base, 2 * base, norm=nm)
        self.up2 = _Up(2 * base, base, norm=nm)
        self.dec2 = _conv(2 * base, base, norm=nm)
        self.head = _reflect_conv(base, out_channels, 7, act=None, norm=None, conv_only=True)
        self.final = _final_activation(final_activation)
        self.default_cam_layer = "trunk" if n_blocks else "fuse.2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.channels_per_input, dim=1)
        per_input = [enc(g) for enc, g in zip(self.encoders, groups)]
        fused = [fuse([f[level] for f in per_input]) for level, fuse in enumerate(self.fuse)]
        y = self.trunk(fused[2])
        y = self.dec1(torch.cat([self.up1(y), fused[1]], dim=1))
        y = self.dec2(torch.cat([self.up2(y), fused[0]], dim=1))
        return self.final(self.head(y))


def _identity_grid(b: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(b, h, w, 2)


def warp(features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Sample ``features`` at ``pixel + offset`` (bilinear, border padding).

    ``offset`` is ``(B, 2, H, W)`` in pixels of ``features``, channel 0 along x
    (width), channel 1 along y (height). Zero offsets return ``features``
    unchanged (``align_corners=True`` puts grid points exactly on pixel centres).

    Examples
    --------
    >>> f = torch.arange(12.0).reshape(1, 1, 3, 4)
    >>> torch.allclose(warp(f, torch.zeros(1, 2, 3, 4)), f)   # equal up to float rounding
    True
    >>> right = torch.zeros(1, 2, 3, 4); right[:, 0] = 1.0   # sample one pixel to the right
    >>> warp(f, right)[0, 0, 0]   # the last column repeats (border padding)
    tensor([1., 2., 3., 3.])
    """
    b, _, h, w = features.shape
    # float32 sampling grid even under half-precision autocast: fp16 cannot resolve
    # sub-pixel positions on a 240-pixel grid
    grid = _identity_grid(b, h, w, features.device, torch.float32)
    # pixels -> normalised [-1, 1] coordinates (align_corners=True convention)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=features.device, dtype=torch.float32)
    grid = grid + offset.float().permute(0, 2, 3, 1) * scale
    out = F.grid_sample(features.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(features.dtype)


class DeformableAlign(nn.Module):
    """Feature-level alignment by predicted offsets, a deformable-sampling stand-in.

    FGDL (Feng et al., TMI 2024) aligns the SR branch's target features to the
    source with deformable convolutions. torchvision's ``deform_conv2d`` is not a
    dependency here, so the same idea is built on ``grid_sample``: a small conv
    net predicts, from the concatenated reference and moving features, a per-pixel
    offset field for each of ``offset_groups`` channel groups, and the moving
    features are resampled there. The last offset convolution starts at zero, so
    an untrained module is the identity.

    Returns ``(aligned, offset)``; offset is ``(B, 2 * offset_groups, H, W)`` in pixels.

    Examples
    --------
    >>> align = DeformableAlign(channels=4, offset_groups=2)
    >>> reference, moving = torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)
    >>> aligned, offset = align(reference, moving)
    >>> offset.shape, bool(offset.abs().max() == 0), torch.allclose(aligned, moving, atol=1e-6)  # identity
    (torch.Size([1, 4, 8, 8]), True, True)
    """

    def __init__(self, channels: int, offset_groups: int = 1):
        super().__init__()
        if channels % offset_groups:
            raise NeurosynthError(f"offset_groups ({offset_groups}) must divide the feature channels ({channels})")
        self.offset_groups = offset_groups
        self.offset_net = nn.Sequential(
            _conv(2 * channels, channels, act=_ACT, norm=None),
            nn.Conv2d(channels, 2 * offset_groups, kernel_size=3, padding=1),
        )
        head = cast(nn.Conv2d, self.offset_net[-1])
        nn.init.zeros_(head.weight)
        nn.init.zeros_(cast(torch.Tensor, head.bias))  # nn.Conv2d has a bias unless bias=False

    def forward(self, reference: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offset = self.offset_net(torch.cat([reference, moving], dim=1))
        return warp_groups(moving, offset), offset


def warp_groups(moving: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Warp channel groups of ``moving`` by their own offset fields.

    ``offset`` has ``2 * G`` channels for ``G`` groups; if its resolution differs
    from ``moving``'s it is upsampled and its pixel values rescaled to match.

    Examples
    --------
    >>> moving = torch.rand(1, 4, 8, 8)
    >>> warp_groups(moving, torch.zeros(1, 4, 4, 4)).shape   # 2 groups, offsets at half resolution
    torch.Size([1, 4, 8, 8])
    >>> warp_groups(moving, torch.zeros(1, 6, 8, 8))
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: 3 offset groups do not divide 4 feature channels
    """
    if offset.shape[-2:] != moving.shape[-2:]:
        factor = moving.shape[-1] / offset.shape[-1]
        offset = F.interpolate(offset, size=moving.shape[-2:], mode="bilinear", align_corners=False) * factor
    n_groups = offset.shape[1] // 2
    if moving.shape[1] % n_groups:
        raise NeurosynthError(f"{n_groups} offset groups do not divide {moving.shape[1]} feature channels")
    groups = torch.chunk(moving, n_groups, dim=1)
    offsets = torch.chunk(offset, n_groups, dim=1)
    return torch.cat([warp(g, o) for g, o in zip(groups, offsets)], dim=1)


class MCSRGenerator(_Generator):
    """Multi-contrast super-resolution generator after FGDL (Feng et al., TMI 2024).

    A CMS base model (a :class:`ResNetGenerator` on the source channels) predicts
    the target from the source alone. An SR branch encodes the low-resolution
    target channels (already resampled onto the source grid), aligns its features
    to the base trunk's features with :class:`DeformableAlign` (residual
    misregistration between contrasts) at 1/4 resolution and, with the same
    offsets upsampled, at full resolution, fuses them with the base features and
    decodes a signed residual. Output = base prediction + residual, so the SR
    branch models the fine-grained difference between what the source implies
    and what the acquired low-resolution target shows.

    Input channel order: ``source_channels`` source channels (all source groups
    in card order) then ``lowres_channels`` low-resolution target channels, as in
    the card's ``inputs`` (e.g. ``["t1", "t2_lowres"]``).

    Parameters
    ----------
    source_channels, lowres_channels
        Channel counts of the two parts of the input.
    base
        Stem channels of base and SR branch.
    n_blocks
        Residual blocks of the base trunk; the fusion trunk has ``max(1, n_blocks // 2)``.
    offset_groups
        Channel groups with their own offset field.

    Examples
    --------
    >>> net = MCSRGenerator(source_channels=1, lowres_channels=1, base=8, n_blocks=2)
    >>> net(torch.zeros(1, 2, 16, 16)).shape
    torch.Size([1, 1, 16, 16])
    """

    arch_name = "mcsr"
    size_divisor = 4

    def __init__(
        self,
        source_channels: int = 1,
        lowres_channels: int = 1,
        base: int = 16,
        n_blocks: int = 4,
        offset_groups: int = 1,
        out_channels: int = 1,
        final_activation: str = "none",
    ):
        super().__init__()
        self._record(
            source_channels=source_channels,
            lowres_channels=lowres_channels,
            base=base,
            n_blocks=n_blocks,
            offset_groups=offset_groups,
            out_channels=out_channels,
            final_activation=final_activation,
        )
        self.source_channels = source_channels
        self.lowres_channels = lowres_channels
        self.in_channels = source_channels + lowres_channels
        self.base = ResNetGenerator(source_channels, base, n_blocks, out_channels)
        self.sr_encoder = _Encoder(lowres_channels, base)
        self.align = DeformableAlign(4 * base, offset_groups)
        self.fuse = _conv(8 * base, 4 * base)
        self.sr_trunk = nn.Sequential(*[ResidualBlock(4 * base) for _ in range(max(1, n_blocks // 2))])
        self.up1 = _Up(4 * base, 2 * base)
        self.up2 = _Up(2 * base, base)
        self.dec = _conv(2 * base, base)
        self.head = _reflect_conv(base, out_channels, 7, act=None, norm=None, conv_only=True)
        self.final = _final_activation(final_activation)
        self.default_cam_layer = "fuse"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, low = x[:, : self.source_channels], x[:, self.source_channels :]
        base_feat = self.base.features(src)
        base_pred = self.base.decode(base_feat)
        low_full, _, low_feat = self.sr_encoder(low)
        aligned, offset = self.align(base_feat, low_feat)
        y = self.sr_trunk(self.fuse(torch.cat([base_feat, aligned], dim=1)))
        y = self.up2(self.up1(y))
        y = self.dec(torch.cat([y, warp_groups(low_full, offset)], dim=1))
        return self.final(base_pred + self.head(y))


class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix's 70x70 with ``n_layers=3``; survey refs. [46], [132]).

    4x4 convolutions: stride 2 without normalisation, ``n_layers - 1`` more stride-2
    with instance norm (channels doubling, capped at ``8 * base``), one stride-1,
    and a 1-channel linear output (raw scores for the least-squares GAN loss,
    L_sgan in the survey's Table 5). Output is a score map, one per patch.

    For conditional (pix2pix) training pass the source channels concatenated with
    the real or synthesized target, and set ``in_channels`` accordingly.

    Examples
    --------
    >>> d = PatchGANDiscriminator(in_channels=2, base=8)
    >>> d(torch.zeros(1, 2, 64, 64)).shape
    torch.Size([1, 1, 6, 6])
    """

    arch_name = "patchgan"
    size_divisor = 1

    def __init__(self, in_channels: int = 2, base: int = 32, n_layers: int = 3):
        super().__init__()
        self.architecture = {
            "name": "patchgan",
            "args": {"in_channels": in_channels, "base": base, "n_layers": n_layers},
        }
        self.in_channels = in_channels
        layers: list[nn.Module] = [_conv(in_channels, base, k=4, stride=2, act=_ACT, norm=None, padding=1)]
        ch = base
        for i in range(1, n_layers):
            nxt = base * min(2**i, 8)
            layers.append(_conv(ch, nxt, k=4, stride=2, act=_ACT, padding=1))
            ch = nxt
        nxt = base * min(2**n_layers, 8)
        layers.append(_conv(ch, nxt, k=4, stride=1, act=_ACT, padding=1))
        layers.append(Convolution(2, nxt, 1, kernel_size=4, strides=1, padding=1, conv_only=True))
        self.model = nn.Sequential(*layers)
        self.default_cam_layer = "model"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


#: name -> class; the names a card's ``architecture.name`` may use.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "resnet": ResNetGenerator,
    "unet": UNetGenerator,
    "fusion": FusionGenerator,
    "mcsr": MCSRGenerator,
    "patchgan": PatchGANDiscriminator,
}

#: Architectures defined in other modules that build on the blocks here, imported when first built
#: (``fgdl`` imports this module, so it cannot be imported at the top).
_ELSEWHERE = {"fgdl": ("napari_neurosynth.fgdl", "FGDLGenerator")}

#: Generators only (what a model bundle may hold).
GENERATORS = ("resnet", "unet", "fusion", "mcsr", "fgdl")


#: Integer architecture arguments for which 0 is meaningful (a trunk at full resolution).
_MAY_BE_ZERO = {"n_downsampling"}


def build_network(name: str, **args: Any) -> nn.Module:
    """Build a network by architecture name from JSON-serialisable arguments.

    Parameters
    ----------
    name
        One of ``resnet``, ``unet``, ``fusion``, ``mcsr``, ``fgdl`` (:mod:`napari_neurosynth.fgdl`), ``patchgan``.
    **args
        Constructor arguments (as stored in a card's ``architecture.args``).

    Returns
    -------
    torch.nn.Module
        The network in training mode on the CPU, with an ``architecture`` attribute.

    Raises
    ------
    NeurosynthError
        Unknown name (the message lists the known ones) or arguments the
        architecture does not take or cannot use.

    Examples
    --------
    >>> net = build_network("unet", in_channels=1, base=8, depth=2)
    >>> net.architecture
    {'name': 'unet', 'args': {'in_channels': 1, 'base': 8, 'depth': 2, 'out_channels': 1, 'final_activation': 'none'}}
    >>> tiny = build_network("unet", in_channels=3, base=4, depth=1)   # 2.5-D: 1 input x 3 slices
    >>> tiny.in_channels, tiny.size_divisor, tiny.default_cam_layer
    (3, 2, 'decoders.0')
    >>> build_network("vit")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: unknown architecture 'vit'; known architectures: resnet, unet, ...
    >>> build_network("unet", depth=0)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: architecture 'unet': depth must be a positive integer, got 0
    >>> build_network("resnet", blocks=2)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: architecture 'resnet' does not take argument(s) blocks; it takes: ...
    """
    cls = ARCHITECTURES.get(name)
    if cls is None and name in _ELSEWHERE:
        import importlib

        module, attr = _ELSEWHERE[name]
        cls = ARCHITECTURES[name] = getattr(importlib.import_module(module), attr)
    if cls is None:
        known = ", ".join([*ARCHITECTURES, *(k for k in _ELSEWHERE if k not in ARCHITECTURES)])
        raise NeurosynthError(f"unknown architecture {name!r}; known architectures: {known}")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise NeurosynthError(
            f"architecture {name!r} does not take argument(s) {', '.join(unknown)}; it takes: {', '.join(accepted)}"
        )
    for key, value in args.items():
        default = params[key].default
        if isinstance(default, int) and not isinstance(default, bool):
            lowest = 0 if key in _MAY_BE_ZERO else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                kind = "a non-negative" if lowest == 0 else "a positive"
                raise NeurosynthError(f"architecture {name!r}: {key} must be {kind} integer, got {value!r}")
    return cls(**args)


def count_parameters(network: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``network``.

    Examples
    --------
    >>> count_parameters(build_network("unet", in_channels=3, base=4, depth=1))
    2773
    """
    return sum(p.numel() for p in network.parameters())
