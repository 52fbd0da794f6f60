"""Class-activation maps for an image-to-image generator: Grad-CAM and HiResCAM.

:func:`gradcam` attributes the mean synthesized value inside a region of interest
to the activations of a layer (or to the input voxels), on the input grid. The
network runs on the :class:`~napari_neurosynth.slicing.SlicePlan`'s batches, so a CAM
explains exactly the forward pass that made the synthesized image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeAlias, overload

import numpy as np
from numpy.typing import NDArray

from ..errors import NeurosynthError
from ..metrics import Mask

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..inference import Inputs
    from ..io import Volume
    from ..slicing import ModelRef

__all__ = ["CAM_METHODS", "Roi", "gradcam"]

#: Accepted ``method`` names.
CAM_METHODS = ("hirescam", "gradcam")

#: A region of interest on the output grid: a mask (array or Volume) or an index expression.
Roi: TypeAlias = "NDArray[np.generic] | Volume | tuple[int | slice, ...]"


def _roi_mask(roi: Roi, shape: tuple[int, ...], affine: NDArray[np.floating]) -> Mask:
    """The ROI as a boolean mask on the output grid (first input's grid)."""
    if isinstance(roi, tuple) and all(isinstance(r, (int, np.integer, slice)) for r in roi):
        # an index expression such as (slice(40, 50), slice(60, 70), 45)
        if len(roi) != len(shape):
            raise NeurosynthError(f"ROI index {roi!r} needs {len(shape)} entries, one per axis")
        for r, n in zip(roi, shape):
            lo, hi = (r, r + 1) if not isinstance(r, slice) else (r.start or 0, n if r.stop is None else r.stop)
            if lo < 0 or hi > n or lo >= hi:
                raise NeurosynthError(
                    f"ROI {roi!r} lies (partly) off the output grid of shape {shape}; mark a region inside the image"
                )
        index_mask = np.zeros(shape, bool)
        index_mask[roi] = True
        return index_mask
    data = np.asarray(getattr(roi, "data", roi))
    if data.shape != tuple(shape):
        raise NeurosynthError(
            f"ROI of shape {data.shape} is off the output grid (shape {tuple(shape)}); draw it on the synthesized layer"
        )
    r_aff = getattr(roi, "affine", None)
    if r_aff is not None and not np.allclose(np.asarray(r_aff, float), affine, atol=1e-3):
        raise NeurosynthError(
            "ROI is on a different grid (affine) than the model's output; draw it on the synthesized layer"
        )
    mask: Mask = data != 0
    if not mask.any():
        raise NeurosynthError("ROI is empty: mark at least one voxel of the synthesized image")
    return mask


def _resolve_layer(net: nn.Module, layer: str | None, example: torch.Tensor) -> tuple[str, nn.Module]:
    """The module to explain: by dotted name, ``default_cam_layer``, or the last lowest-resolution conv."""
    from torch import nn

    modules = dict(net.named_modules())
    default = str(getattr(net, "default_cam_layer", "") or "")
    if layer is None:
        layer = default or None
    if layer is not None:
        if layer not in modules or layer == "":
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise NeurosynthError(
                f"layer {layer!r} is not a submodule of the network; try one of: "
                + ", ".join(([default] if default else []) + convs[-6:])
            )
        return layer, modules[layer]
    # No default declared: the last Conv2d among those with the smallest output (the bottleneck).
    return bottleneck_conv(net, example[:1], nn.Conv2d, "the network")


def bottleneck_conv(net: nn.Module, x: torch.Tensor, conv: type[nn.Module], what: str) -> tuple[str, nn.Module]:
    """The last ``conv`` module among those with the smallest output, found by one forward pass of ``x``.

    Shared by 2-D (Conv2d) and 3-D (Conv3d) Grad-CAM when the network declares no layer.
    """
    import torch

    modules = dict(net.named_modules())
    sizes: dict[str, int] = {}

    def recorder(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_mod: nn.Module, _inputs: object, out: torch.Tensor) -> None:
            sizes[name] = int(np.prod(out.shape[2:]))

        return hook

    hooks = [m.register_forward_hook(recorder(n)) for n, m in modules.items() if isinstance(m, conv)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    if not sizes:
        raise NeurosynthError(f"{what} has no {conv.__name__} layer; pass layer= explicitly")
    smallest = min(sizes.values())
    name = [n for n, s in sizes.items() if s == smallest][-1]
    return name, modules[name]


@overload
def gradcam(
    model: ModelRef,
    inputs: Inputs,
    roi: Roi,
    layer: str | None = None,
    method: str = "hirescam",
    *,
    per_input: Literal[False] = False,
    batch_size: int = 8,
) -> NDArray[np.float32]: ...


@overload
def gradcam(
    model: ModelRef,
    inputs: Inputs,
    roi: Roi,
    layer: str | None = None,
    method: str = "hirescam",
    *,
    per_input: Literal[True],
    batch_size: int = 8,
) -> dict[str, NDArray[np.float32]]: ...


def gradcam(
    model: ModelRef,
    inputs: Inputs,
    roi: Roi,
    layer: str | None = None,
    method: str = "hirescam",
    *,
    per_input: bool = False,
    batch_size: int = 8,
) -> NDArray[np.float32] | dict[str, NDArray[np.float32]]:
    """Which parts of the input drove the synthesized values inside ``roi``.

    The score is the mean of the network's output inside ``roi`` (a mask on the
    output grid, i.e. the first input's grid, typically a few voxels on one
    slice). Its gradient with respect to the activations ``A`` of ``layer`` gives
    the map:

    - ``method="hirescam"`` (default; Draelos and Carin 2020): ``sum_c dS/dA_c(x) * A_c(x)``,
      gradient times activation at each location.
    - ``method="gradcam"`` (Selvaraju et al. 2017): ``sum_c mean_x(dS/dA_c) * A_c(x)``,
      channel weights from spatially pooled gradients.

    For a dense (image-to-image) output the pooled weights of Grad-CAM light up
    every place where an important channel fires, far from the region asked about;
    HiResCAM keeps the gradient's location, so it only shows where the network
    actually looked (its map is exactly the first-order contribution of each
    location's features to the score), which is why it is the default.

    Only the slices the ROI touches are run (forward and backward). The
    layer-resolution map is upsampled (bilinear) to the slice, placed on the
    first input's grid, clipped at 0 (ReLU) and divided by its maximum, so values
    lie in [0, 1] (all zero if nothing contributes positively).

    Parameters
    ----------
    model : Model, str or path
        A loaded bundle or a bundle name / folder.
    inputs : Volume, ndarray or list of them
        As for :func:`~napari_neurosynth.synthesize` (card order).
    roi : array, Volume or tuple of indices
        Nonzero voxels (or an index expression such as ``(slice(30, 36), slice(40, 46), 25)``)
        on the output grid.
    layer : str, optional
        Dotted module name (see ``dict(model.network.named_modules())``). Default:
        the network's ``default_cam_layer`` (the residual trunk of the ResNet and
        fusion models, the first decoder stage of the U-Net, the MCSR fusion
        layer), else the last convolution at the lowest resolution.
        ``"input"`` attributes to the input voxels themselves.
    method : {"hirescam", "gradcam"}
        See above.
    per_input : bool
        Return one map per input modality (a dict keyed by the card's input names),
        computed at the input layer: each input's channels (its slice and its 2.5-D
        context slices, placed back on their own slices) summed. Implies ``layer="input"``.
        The maps share one scale (the largest value over all inputs is 1), so the
        input that mattered more shows brighter.
    batch_size : int
        Slices per forward/backward pass.

    Returns
    -------
    numpy.ndarray or dict of str to numpy.ndarray
        float32 on the first input's grid, values in [0, 1].

    Notes
    -----
    The network input is the :class:`~napari_neurosynth.slicing.SlicePlan`'s batch, the
    same tensors :func:`~napari_neurosynth.synthesize` feeds the network with ``crop=False``
    (normalisation, 2.5-D context, padding), so the output inside the score is the
    synthesized image (a test holds the two to 1e-5).

    Raises
    ------
    NeurosynthError
        Empty ROI, a ROI off the output grid, an unknown layer or method, bad inputs.

    Examples
    --------
    A tiny random 2.5-D network stands in for a trained bundle:

    >>> from pathlib import Path
    >>> import torch
    >>> from torch import nn
    >>> from napari_neurosynth.bundle import Model
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    >>> card = {"name": "tiny", "inputs": ["t1"], "output": "t2", "slicing": {"plane": "axial", "context": 1}}
    >>> model = Model(card, net, Path("."), "tiny")
    >>> t1 = np.random.default_rng(0).random((16, 16, 6)).astype(np.float32) + 1.0
    >>> cam = gradcam(model, t1, (slice(6, 10), slice(6, 10), 3), layer="0")
    >>> cam.shape, cam.dtype, bool(cam.min() >= 0), float(cam.max())
    ((16, 16, 6), dtype('float32'), True, 1.0)
    >>> maps = gradcam(model, t1, (slice(6, 10), slice(6, 10), 3), per_input=True)
    >>> list(maps), bool(maps["t1"][:, :, [0, 1, 5]].max() == 0)   # only slices 2-4 (3 and its context) count
    (['t1'], True)
    """
    import torch
    from captum.attr import LayerGradCam, LayerGradientXActivation

    from ..inference import as_model, prepare_inputs
    from ..slicing import SlicePlan

    method = str(method).lower().replace("-", "")
    if method not in CAM_METHODS:
        raise NeurosynthError(f"unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}")
    model = as_model(model)
    volumes, _ = prepare_inputs(model, inputs)
    net = model.network
    if getattr(net, "is_onnx", False):
        raise NeurosynthError(
            f"Grad-CAM needs gradients, which the ONNX model {model.name!r} does not give; "
            "use the model-agnostic occlusion map instead (napari_neurosynth.explain.occlusion_map)"
        )
    if getattr(net, "spatial_dims", 2) == 3:  # 3-D patch models: the window around the ROI
        from .cam3d import gradcam_3d

        return gradcam_3d(model, volumes, _roi_mask(roi, volumes[0].shape, volumes[0].affine), layer, method, per_input)
    net.eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    # the engine's slice plan: normalisation, slicing axis, 2.5-D context, padding, batches
    plan = SlicePlan.from_model(model, volumes, device=device)
    axis, context = plan.axis, plan.context
    shape = volumes[0].shape
    mask = _roi_mask(roi, shape, volumes[0].affine)
    roi_stack = np.moveaxis(mask, axis, 0)
    n_roi = int(roi_stack.sum())
    touched = np.flatnonzero(roi_stack.any(axis=(1, 2)))
    n, (H, W) = plan.n_slices, plan.plane_shape
    names = list(model.card["inputs"])
    at_input = per_input or layer == "input"

    class _RoiScore(torch.nn.Module):
        """The generator reduced to one number per slice: its output summed over the ROI / ROI size.

        Summed over the batch this is the mean output inside the whole ROI, so each
        slice's gradient is its share of that score."""

        def __init__(self, weights: torch.Tensor):
            super().__init__()
            self.net, self.weights = net, weights

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = plan.crop_output(self.net(x))[:, None]  # (B, 1, H, W): what synthesize keeps
            return (y * self.weights).sum(dim=(1, 2, 3))

    layer_name, module = "input", None
    if at_input:
        maps = np.zeros((len(names), n, H, W), np.float64)
    else:
        maps = np.zeros((1, n, H, W), np.float64)
        layer_name, module = _resolve_layer(net, layer, plan.batch(touched[:1]))

    step = max(1, int(batch_size))
    with torch.enable_grad():
        for start in range(0, len(touched), step):
            ks = touched[start : start + step]
            x = plan.batch(ks)
            w = torch.from_numpy(roi_stack[ks][:, None].astype(np.float32) / n_roi).to(device)
            scorer = _RoiScore(w)
            if module is None:
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(scorer(x).sum(), x)
                if method == "hirescam":
                    contrib_t = grad * x  # element-wise: input x gradient
                else:
                    contrib_t = grad.mean(dim=(2, 3), keepdim=True) * x
                contrib = contrib_t[:, :, :H, :W].detach().cpu().numpy().astype(np.float64)
                # a context channel is the neighbouring slice: put its share back there
                dests = plan.neighbours(ks)  # (B, 2c+1), the slices the channels came from
                for j in range(contrib.shape[1]):
                    g, off = divmod(j, 2 * context + 1)
                    np.add.at(maps[g], dests[:, off], contrib[:, j])
            else:
                if method == "hirescam":
                    attr = LayerGradientXActivation(scorer, module).attribute(x).sum(dim=1, keepdim=True)
                else:
                    attr = LayerGradCam(scorer, module).attribute(x, relu_attributions=False)
                if attr.dim() != 4:
                    raise NeurosynthError(
                        f"layer {layer_name!r} does not output a (B, C, H, W) feature map; pick a conv layer"
                    )
                up = torch.nn.functional.interpolate(
                    attr.detach(), size=x.shape[-2:], mode="bilinear", align_corners=False
                )
                maps[0, ks] += up[:, 0, :H, :W].cpu().numpy()

    maps = np.clip(maps, 0, None)  # ReLU: only what pushed the score up
    top = maps.max()
    if top > 0:
        maps /= top  # one scale for all inputs, so their maps can be compared

    def on_grid(m: NDArray[np.float64]) -> NDArray[np.float32]:
        return plan.to_grid(m.astype(np.float32))

    if at_input and per_input:
        return {name: on_grid(maps[g]) for g, name in enumerate(names)}
    combined = maps.sum(axis=0)
    if combined.max() > 0:
        combined /= combined.max()
    return on_grid(combined)
