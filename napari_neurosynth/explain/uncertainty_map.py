"""Uncertainty map: how much the synthesis moves under test-time perturbations.

:func:`uncertainty` is the per-voxel spread of the engine's synthesis under
test-time augmentation (left-right flips, small in-plane shifts) and MC dropout
when the network has dropout layers. Every sample is a full
:func:`~napari_neurosynth.synthesize` run, so it uses the engine's slice plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from torch import nn

    from ..inference import Inputs
    from ..slicing import ModelRef

__all__ = ["uncertainty"]


def _mc_dropout_copy(net: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``net`` whose dropout layers sample even in eval mode (for MC dropout), and their number.

    Examples
    --------
    >>> from torch import nn
    >>> _, n = _mc_dropout_copy(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout2d(0.2), nn.Dropout(0.0)))
    >>> n
    1
    """
    import copy

    import torch
    from torch import nn

    class MCDropout(nn.Module):
        """Dropout that keeps sampling in eval mode (the engine puts networks in eval mode)."""

        def __init__(self, p: float, two_d: bool):
            super().__init__()
            self.p, self.two_d = p, two_d

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.nn.functional.dropout2d if self.two_d else torch.nn.functional.dropout
            return f(x, self.p, training=True)

    net = copy.deepcopy(net)
    n = 0
    for _name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)) and child.p > 0:
                setattr(mod, child_name, MCDropout(child.p, isinstance(child, nn.Dropout2d)))
                n += 1
    return net, n


@overload
def uncertainty(
    model: ModelRef,
    inputs: Inputs,
    *,
    shifts: Sequence[tuple[int, int]] = ...,
    flips: bool = True,
    n_dropout: int = 8,
    device: str = "auto",
    return_mean: Literal[False] = False,
    seed: int = 0,
) -> NDArray[np.float32]: ...


@overload
def uncertainty(
    model: ModelRef,
    inputs: Inputs,
    *,
    shifts: Sequence[tuple[int, int]] = ...,
    flips: bool = True,
    n_dropout: int = 8,
    device: str = "auto",
    return_mean: Literal[True],
    seed: int = 0,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...


def uncertainty(
    model: ModelRef,
    inputs: Inputs,
    *,
    shifts: Sequence[tuple[int, int]] = ((0, 0), (1, 2), (2, 1), (3, 3)),
    flips: bool = True,
    n_dropout: int = 8,
    device: str = "auto",
    return_mean: bool = False,
    seed: int = 0,
) -> NDArray[np.float32] | tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-voxel standard deviation of the synthesis under test-time perturbations.

    Test-time augmentation: every combination of a left-right flip (the array axis
    that points mostly along world x, when ``flips``) and an in-plane circular
    shift from ``shifts`` (voxels; a stride-2/4 generator is not shift-equivariant,
    so shifts expose aliasing-sensitive places) is applied to the inputs, the
    synthesis run and the transform undone. If the network has dropout layers,
    ``n_dropout`` further passes sample them (MC dropout, Gal and Ghahramani 2016).
    The shipped generators have no dropout, so for them only the augmentations count.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        The float32 standard deviation on the first input's grid, in the target's
        normalised units; with ``return_mean`` the pair ``(mean synthesis, standard deviation)``.

    Examples
    --------
    A pointwise network commutes with flips and shifts, so its spread is zero:

    >>> from pathlib import Path
    >>> import torch
    >>> from napari_neurosynth.bundle import Model
    >>> card = {"name": "pointwise", "inputs": ["t1"], "output": "t2", "slicing": {"plane": "axial", "context": 0},
    ...         "normalization": {"method": "none"}}
    >>> model = Model(card, torch.nn.Conv2d(1, 1, 1), Path("."), "pointwise")
    >>> t1 = np.random.default_rng(0).random((12, 12, 4)).astype(np.float32) + 1.0
    >>> mean, std = uncertainty(model, t1, shifts=((0, 0), (1, 1)), device="cpu", return_mean=True)
    >>> std.shape, bool(std.max() < 1e-5)
    ((12, 12, 4), True)
    """
    import copy

    import torch

    from ..inference import as_model, prepare_inputs, synthesize
    from ..io import Volume
    from ..slicing import slicing_axis

    model = as_model(model)
    volumes, _ = prepare_inputs(model, inputs)
    first = volumes[0]
    axis = slicing_axis(model.card, first.affine)
    lr = int(np.argmax(np.abs(first.affine[0, :3])))
    plane_axes = tuple(a for a in range(3) if a != axis)
    samples: list[NDArray[np.float32]] = []
    for flip in (False, True) if flips else (False,):
        for dy, dx in shifts:

            def fwd(a: NDArray[np.generic], flip: bool = flip, dy: int = dy, dx: int = dx) -> NDArray[np.generic]:
                a = np.flip(a, lr) if flip else a
                return np.roll(a, (dy, dx), axis=plane_axes)

            def inv(a: NDArray[np.float32], flip: bool = flip, dy: int = dy, dx: int = dx) -> NDArray[np.float32]:
                a = np.roll(a, (-dy, -dx), axis=plane_axes)
                return np.flip(a, lr) if flip else a

            vols = [Volume(np.ascontiguousarray(fwd(v.data)), v.affine) for v in volumes]
            samples.append(inv(synthesize(model, vols, device=device)))
    mc_net, n_drop = _mc_dropout_copy(model.network)
    if n_drop and n_dropout > 0:
        mc_model = copy.copy(model)
        mc_model.network = mc_net
        torch.manual_seed(seed)
        for _ in range(int(n_dropout)):
            samples.append(synthesize(mc_model, volumes, device=device))
    stack = np.stack(samples).astype(np.float64)
    std = stack.std(axis=0).astype(np.float32)
    return (stack.mean(axis=0).astype(np.float32), std) if return_mean else std
