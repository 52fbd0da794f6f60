"""Occlusion map: a model-agnostic explanation that needs no gradients (for ONNX models).

Grad-CAM needs the network's gradients, which an ONNX graph run by onnxruntime does
not give. :func:`occlusion_map` asks the same question by experiment instead (Zeiler
and Fergus 2014, through captum's :class:`~captum.attr.Occlusion`): a square patch of
the input (all channels of the slice, i.e. every input and its 2.5-D context) is set
to 0 (background in normalised units), the model is run again, and the change of the
mean synthesized value inside the ROI is recorded for the patch's voxels; windows
overlap with ``stride`` and their changes are averaged.

The map is the magnitude of that change (hiding a region may raise or lower the
ROI's output; both mean the region mattered), on the first input's grid, divided by
its maximum so values lie in [0, 1]. It uses the same ROI and the same slice plan as
:func:`~napari_neurosynth.explain.gradcam`; slice models only (a 3-D model is
explained in the window around the ROI, with cubic patches). It works for torch
models too, as a check on Grad-CAM, at the price of many forward passes.

Examples
--------
A pointwise "model": hiding a voxel changes only its own output, so only the ROI's
neighbourhood lights up:

>>> from pathlib import Path
>>> import numpy as np, torch
>>> from napari_neurosynth.bundle import Model
>>> card = {"name": "pw", "inputs": ["t1"], "output": "t2", "slicing": {"plane": "axial", "context": 0},
...         "normalization": {"method": "none"}}
>>> model = Model(card, torch.nn.Conv2d(1, 1, 1), Path("."), "pw")
>>> t1 = np.random.default_rng(0).random((24, 24, 3)).astype(np.float32) + 1.0
>>> m = occlusion_map(model, t1, (slice(10, 12), slice(10, 12), 1), window=4, stride=2)
>>> m.shape, float(m.max()), bool(m[:, :, [0, 2]].max() == 0), bool(m[0:5, 0:5, 1].max() == 0)
((24, 24, 3), 1.0, True, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ..errors import NeurosynthError

if TYPE_CHECKING:
    from ..inference import Inputs
    from ..slicing import ModelRef
    from .cam import Roi

__all__ = ["OCCLUSION_LABEL", "occlusion_map"]

#: How the viewer labels this map (it is not a CAM).
OCCLUSION_LABEL = "Occlusion (model-agnostic)"


def occlusion_map(
    model: ModelRef,
    inputs: Inputs,
    roi: Roi,
    *,
    window: int = 8,
    stride: int = 4,
    per_eval: int = 16,
) -> NDArray[np.float32]:
    """How much hiding each part of the input changes the synthesized values inside ``roi``.

    Parameters
    ----------
    model, inputs, roi
        As for :func:`~napari_neurosynth.explain.gradcam`.
    window, stride : int
        Side of the square (cubic for 3-D models) occluding patch and its step, in voxels.
    per_eval : int
        Occluded copies run per batch.

    Returns
    -------
    numpy.ndarray
        float32 on the first input's grid, values in [0, 1] (0 outside the slices the ROI touches).
    """
    import torch
    from captum.attr import Occlusion

    from ..inference import as_model, prepare_inputs
    from ..slicing import SlicePlan
    from .cam import _roi_mask

    if window < 1 or stride < 1:
        raise NeurosynthError(f"occlusion window and stride must be >= 1, not {window} and {stride}")
    model = as_model(model)
    volumes, _ = prepare_inputs(model, inputs)
    net = model.network
    net.eval()
    mask = _roi_mask(roi, volumes[0].shape, volumes[0].affine)
    if getattr(net, "spatial_dims", 2) == 3:
        return _occlusion_3d(model, volumes, mask, window, stride, per_eval)
    plan = SlicePlan.from_model(model, volumes, device="cpu")
    roi_stack = np.moveaxis(mask, plan.axis, 0)
    n_roi = int(roi_stack.sum())
    touched = np.flatnonzero(roi_stack.any(axis=(1, 2)))
    n, (H, W) = plan.n_slices, plan.plane_shape
    maps = np.zeros((n, H, W), np.float64)
    channels = plan.channels
    for k in touched:
        x = plan.batch([int(k)])
        w = torch.from_numpy(roi_stack[k][None, None].astype(np.float32) / n_roi)

        def score(t: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
            with torch.no_grad():
                y = plan.crop_output(net(t))[:, None]
            return (y * w).sum(dim=(1, 2, 3))

        attr = Occlusion(score).attribute(
            x,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=0.0,
            perturbations_per_eval=max(1, int(per_eval)),
        )
        maps[k] = np.abs(attr[0, 0, :H, :W].detach().cpu().numpy())
    top = maps.max()
    if top > 0:
        maps /= top
    return plan.to_grid(maps.astype(np.float32))


def _occlusion_3d(model, volumes, mask, window: int, stride: int, per_eval: int) -> NDArray[np.float32]:
    """Occlusion in the window around the ROI for 3-D models (cubic patches)."""
    import torch
    from captum.attr import Occlusion

    from ..external.monai_nets import patch_size
    from ..slicing import input_scales
    from .cam3d import explain_window

    net = model.network
    scales = input_scales(model.card, volumes)
    win = explain_window(mask, patch_size(model.card, f"model {model.name!r}"), int(getattr(net, "size_divisor", 1)))
    x = torch.stack(
        [torch.from_numpy(np.asarray(v.data[win], np.float32) / np.float32(s)) for v, s in zip(volumes, scales)]
    )
    x = x[None]
    w = torch.from_numpy(mask[win].astype(np.float32) / int(mask.sum()))[None, None]

    def score(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (net(t)[:, :1] * w).sum(dim=(1, 2, 3, 4))

    attr = Occlusion(score).attribute(
        x,
        sliding_window_shapes=(x.shape[1], window, window, window),
        strides=(x.shape[1], stride, stride, stride),
        baselines=0.0,
        perturbations_per_eval=max(1, int(per_eval)),
    )
    m = np.abs(attr[0, 0].detach().cpu().numpy()).astype(np.float64)
    if m.max() > 0:
        m /= m.max()
    full = np.zeros(volumes[0].shape, np.float32)
    full[win] = m
    return full
