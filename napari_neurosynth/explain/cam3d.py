"""Grad-CAM / HiResCAM for 3-D patch models (MONAI networks, 3-D ONNX excluded).

A 3-D model synthesizes the volume window by window; :func:`gradcam_3d` explains the
window that holds the region of interest: one window of the card's ``patch_size``
centred on the ROI (larger, in multiples of the network's size divisor, when the ROI
does not fit), clipped to the volume. The score is the mean output inside the ROI;
its gradient at ``layer`` gives the map exactly as for slice models
(:func:`~napari_neurosynth.explain.gradcam`), upsampled trilinearly to the window and
placed on the first input's grid. Away from the window the map is 0.

The window's forward pass equals the synthesized image inside the ROI up to the
sliding window's Gaussian blending with overlapping windows near their borders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ..errors import NeurosynthError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..io import Volume
    from ..slicing import ModelLike

__all__ = ["explain_window", "gradcam_3d"]


def explain_window(mask: NDArray[np.bool_], patch: Sequence[int], divisor: int) -> tuple[slice, slice, slice]:
    """The window explained for ``mask``: at least ``patch``, covering the ROI's box, inside the volume.

    Examples
    --------
    >>> m = np.zeros((40, 40, 30), bool); m[18:20, 18:20, 3] = True
    >>> explain_window(m, (16, 16, 16), 16)
    (slice(11, 27, None), slice(11, 27, None), slice(0, 16, None))
    """
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    out = []
    for a in range(3):
        n = mask.shape[a]
        d = max(1, int(divisor))
        size = max(int(patch[a]), int(hi[a] - lo[a]))
        size = min(size + (-size) % d, n - n % d if n >= d else n)
        start = int((lo[a] + hi[a]) // 2 - size // 2)
        start = min(max(0, start), n - size)
        out.append(slice(start, start + size))
    return out[0], out[1], out[2]


def _resolve_layer_3d(net: nn.Module, layer: str | None, x: torch.Tensor) -> tuple[str, nn.Module]:
    from torch import nn

    modules = dict(net.named_modules())
    layer = layer or str(getattr(net, "default_cam_layer", "") or "") or None
    if layer is not None:
        if layer not in modules or layer == "":
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv3d)]
            raise NeurosynthError(
                f"layer {layer!r} is not a submodule of the network; try one of: {', '.join(convs[-6:])}"
            )
        return layer, modules[layer]
    from .cam import bottleneck_conv

    return bottleneck_conv(net, x, nn.Conv3d, "the 3-D network")


def gradcam_3d(
    model: ModelLike,
    volumes: Sequence[Volume],
    mask: NDArray[np.bool_],
    layer: str | None,
    method: str,
    per_input: bool,
) -> NDArray[np.float32] | dict[str, NDArray[np.float32]]:
    """The CAM of a 3-D model for the ROI ``mask`` (on the first input's grid); see the module docstring."""
    import torch
    from captum.attr import LayerGradCam, LayerGradientXActivation

    from ..external.monai_nets import patch_size
    from ..slicing import input_scales

    net = model.network
    net.eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    scales = input_scales(model.card, volumes)
    patch = patch_size(model.card, f"model {model.name!r}")
    win = explain_window(mask, patch, int(getattr(net, "size_divisor", 1) or 1))
    x = torch.stack(
        [torch.from_numpy(np.asarray(v.data[win], np.float32) / np.float32(s)) for v, s in zip(volumes, scales)]
    )
    x = x[None].to(device)
    n_roi = int(mask.sum())
    w = torch.from_numpy(mask[win].astype(np.float32) / n_roi).to(device)[None, None]

    class _Score(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return (self.net(t)[:, :1] * w).sum(dim=(1, 2, 3, 4))

    scorer = _Score()
    names = list(model.card["inputs"])
    at_input = per_input or layer == "input"
    with torch.enable_grad():
        if at_input:
            xg = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(scorer(xg).sum(), xg)
            contrib = grad * xg if method == "hirescam" else grad.mean(dim=(2, 3, 4), keepdim=True) * xg
            maps = contrib[0].detach().cpu().numpy().astype(np.float64)  # (C, X, Y, Z)
        else:
            _, module = _resolve_layer_3d(net, layer, x)
            if method == "hirescam":
                attr = LayerGradientXActivation(scorer, module).attribute(x).sum(dim=1, keepdim=True)
            else:
                attr = LayerGradCam(scorer, module).attribute(x, relu_attributions=False)
            if attr.dim() != 5:
                raise NeurosynthError(
                    f"layer {layer!r} does not output a (B, C, D, H, W) feature map; pick a conv layer"
                )
            up = torch.nn.functional.interpolate(attr.detach(), size=x.shape[2:], mode="trilinear", align_corners=False)
            maps = up[0].cpu().numpy().astype(np.float64)  # (1, X, Y, Z)
    maps = np.clip(maps, 0, None)
    top = maps.max()
    if top > 0:
        maps /= top
    shape = volumes[0].shape

    def on_grid(m: NDArray[np.float64]) -> NDArray[np.float32]:
        full = np.zeros(shape, np.float32)
        full[win] = m
        return full

    if per_input:
        return {name: on_grid(maps[g]) for g, name in enumerate(names)}
    combined = maps.sum(axis=0)
    if combined.max() > 0:
        combined /= combined.max()
    return on_grid(combined)
