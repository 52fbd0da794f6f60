"""MONAI networks by name, from an allow-list, in 2-D or 3-D.

A card such as::

    "architecture": {"source": "monai", "name": "BasicUNet",
                     "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                              "features": [16, 16, 32, 64, 128, 16]}},
    "slicing": {"plane": "axial", "context": 0, "patch_size": [96, 96, 96], "overlap": 0.25}

builds ``monai.networks.nets.BasicUNet(**args)``; the weights are the network's own
state dict (keys unchanged). Only the classes in
:data:`~napari_neurosynth.external.MONAI_ALLOWED` can be named, and only with plain
JSON arguments, so a card cannot make the loader import or call anything else.

2-D networks (``spatial_dims`` 2) run slice by slice through the engine's slice plan
like this package's own generators; 3-D networks run over the whole volume with
MONAI's ``sliding_window_inference`` on windows of the card's ``patch_size``, blended
with ``overlap`` (Gaussian weights).

Examples
--------
>>> card = {"inputs": ["t1"], "slicing": {"context": 0, "patch_size": [32, 32, 32]}}
>>> net = build_monai("BasicUNet", {"spatial_dims": 3, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]},
...                   card, "card")
>>> net.spatial_dims, net.size_divisor, net.in_channels
(3, 16, 1)
>>> check_patch((32, 32, 20), (40, 40, 30), 16, "card")
Traceback (most recent call last):
...
napari_neurosynth.errors.NeurosynthError: card: slicing.patch_size (32, 32, 20) must be a multiple of 16 ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import NeurosynthError
from . import MONAI_ALLOWED

__all__ = ["build_monai", "check_patch", "patch_size"]


def _divisor(name: str, args: Mapping[str, Any]) -> int:
    """The factor each spatial side must be a multiple of, from the class's downsampling."""
    if name == "BasicUNet":
        return 16  # four 2x max-poolings
    if name == "UNet":
        return int(math.prod(int(s) for s in args.get("strides", [])) or 1)
    if name == "SegResNet":
        return 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    if name == "SwinUNETR":
        return int(args.get("patch_size", 2)) * 16  # patch embedding, then four 2x mergings
    if name == "DynUNet":
        strides = args.get("strides", [])
        return int(math.prod(max(s) if isinstance(s, (list, tuple)) else int(s) for s in strides) or 1)
    return 1


def build_monai(name: str, args: Mapping[str, Any], card: Mapping[str, Any], where: str) -> nn.Module:
    """``monai.networks.nets.<name>(**args)`` for an allow-listed ``name``, annotated for the engine.

    The network gets ``spatial_dims``, ``in_channels``, ``size_divisor`` and
    ``architecture`` attributes. ``out_channels`` must be 1 (one synthesized contrast).

    Raises
    ------
    NeurosynthError
        A name outside the allow-list, arguments the class refuses, more than one
        output channel, or a 3-D card without a usable ``slicing.patch_size``.
    """
    if name not in MONAI_ALLOWED:
        raise NeurosynthError(
            f"{where}: MONAI architecture {name!r} is not allow-listed; allowed: {', '.join(MONAI_ALLOWED)}"
        )
    import monai.networks.nets as nets

    args = dict(args)
    dims = int(args.get("spatial_dims", 3))
    if int(args.get("out_channels", 1 if name != "BasicUNet" else 2)) != 1:
        raise NeurosynthError(
            f"{where}: a synthesis network has one output channel; set architecture.args.out_channels to 1"
        )
    try:
        net: nn.Module = getattr(nets, name)(**args)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise NeurosynthError(f"{where}: MONAI {name} refused its arguments: {exc}") from None
    divisor = _divisor(name, args)
    # plain attributes the engine reads (setattr: nn.Module's typing only knows tensors and modules)
    attrs: dict[str, object] = {
        "spatial_dims": dims,
        "in_channels": int(args.get("in_channels", 1)),
        "size_divisor": divisor,
        "architecture": {"source": "monai", "name": name, "args": args},
    }
    for attr, value in attrs.items():
        setattr(net, attr, value)
    if dims == 3:
        if int((card.get("slicing") or {}).get("context", 0) or 0) != 0:
            raise NeurosynthError(f"{where}: a 3-D network takes no 2.5-D context; set slicing.context to 0")
        patch = patch_size(card, where)
        bad = [p for p in patch if p % divisor]
        if bad:
            raise NeurosynthError(
                f"{where}: slicing.patch_size {tuple(patch)} must be a multiple of {divisor} "
                f"on every side for MONAI {name}"
            )
    return net


def patch_size(card: Mapping[str, Any], where: str) -> tuple[int, ...]:
    """The card's 3-D ``slicing.patch_size`` as a tuple of three positive integers.

    Examples
    --------
    >>> patch_size({"slicing": {"patch_size": [64, 64, 32]}}, "card")
    (64, 64, 32)
    >>> patch_size({"slicing": {}}, "card")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: card: a 3-D model's card must give slicing.patch_size ...
    """
    raw = (card.get("slicing") or {}).get("patch_size")
    if not (
        isinstance(raw, (list, tuple))
        and len(raw) == 3
        and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in raw)
    ):
        raise NeurosynthError(
            f"{where}: a 3-D model's card must give slicing.patch_size as three positive integers, e.g. [96, 96, 96]"
        )
    return tuple(int(p) for p in raw)


def check_patch(patch: Sequence[int], shape: Sequence[int], divisor: int, where: str) -> None:
    """Refuse a patch that is not a multiple of ``divisor`` or larger than the volume.

    MONAI would silently pad a volume smaller than the window; a model then sees a
    field of view it was not trained on, so this is an error instead.

    Examples
    --------
    >>> check_patch((32, 32, 32), (40, 40, 30), 16, "model 'm'")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: model 'm': the 3-D patch (32, 32, 32) is larger than the volume ...
    """
    patch, shape = tuple(int(p) for p in patch), tuple(int(s) for s in shape)
    if any(p % max(1, divisor) for p in patch):
        raise NeurosynthError(f"{where}: slicing.patch_size {patch} must be a multiple of {divisor} on every side")
    if any(p > s for p, s in zip(patch, shape)):
        raise NeurosynthError(
            f"{where}: the 3-D patch {patch} is larger than the volume {shape} on some axis; "
            "use a model with a smaller slicing.patch_size or a larger field of view"
        )
