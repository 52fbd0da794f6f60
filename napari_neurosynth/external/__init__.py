"""Models trained elsewhere: pytorch-CycleGAN-and-pix2pix generators, MONAI networks, ONNX.

A card's ``architecture`` may carry a ``source`` other than this package's own
(``"neurosynth"``, the default):

* ``"pix2pix"``: a pytorch-CycleGAN-and-pix2pix generator by its ``--netG`` name
  (:mod:`.pix2pix`), with its state-dict keys unchanged;
* ``"monai"``: an allow-listed MONAI network class by name, 2-D or 3-D (:mod:`.monai_nets`);
* ``"onnx"``: a ``model.onnx`` run with onnxruntime (:mod:`.onnx_model`).

Nothing a card says can make the loader import or run code outside these lists:
names are looked up in fixed tables, arguments must be plain JSON values, and
checkpoints are read with ``torch.load(weights_only=True)``.

A card may also give an ``intensity_transform``, the input convention of a model
trained on images in another range (pix2pix: 8-bit [0, 1] images mapped to
[-1, 1], tanh output): the normalised input is clipped to ``input`` and mapped
linearly to ``network``; the network's output is mapped back from ``network`` to
``input``. A module applies it around the network, so the
engine, the reference loop, Grad-CAM and the uncertainty map all see it
(:class:`.transform.IntensityTransform`).

This module imports neither torch nor onnxruntime at import time (bundle listing
must stay fast).

Examples
--------
>>> validate_architecture({"source": "monai", "name": "BasicUNet", "args": {}}, "card.json")
>>> validate_architecture({"source": "monai", "name": "os.system", "args": {}}, "card.json")
Traceback (most recent call last):
...
napari_neurosynth.errors.NeurosynthError: card.json: MONAI architecture 'os.system' is not allow-listed; ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NeurosynthError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "MONAI_ALLOWED",
    "PIX2PIX_NETG",
    "SOURCES",
    "architecture_source",
    "build_external",
    "read_checkpoint",
    "unwrap",
    "validate_architecture",
    "validate_intensity_transform",
    "wrap_intensity",
]

#: Architecture sources a card may name (``neurosynth`` is this package's own generators).
SOURCES = ("neurosynth", "pix2pix", "monai", "onnx")
#: pytorch-CycleGAN-and-pix2pix ``--netG`` names (mirrors :data:`.pix2pix.NETG` without torch).
PIX2PIX_NETG = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128")
#: MONAI network classes a card may name (:mod:`monai.networks.nets`).
MONAI_ALLOWED = ("BasicUNet", "UNet", "SegResNet", "SwinUNETR", "DynUNet")


def architecture_source(card: Mapping[str, Any]) -> str:
    """The card's ``architecture.source`` (``"neurosynth"`` when absent).

    Examples
    --------
    >>> architecture_source({"architecture": {"name": "resnet"}})
    'neurosynth'
    >>> architecture_source({"architecture": {"source": "onnx"}})
    'onnx'
    """
    arch = card.get("architecture") or {}
    return str(arch.get("source", "neurosynth")) if isinstance(arch, Mapping) else "neurosynth"


def _json_plain(value: object) -> bool:
    """Whether ``value`` is built from JSON scalars, lists and string-keyed dicts only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_plain(v) for k, v in value.items())
    return False


def validate_intensity_transform(spec: object, where: str) -> None:
    """Check a card's ``intensity_transform`` entry.

    Examples
    --------
    >>> validate_intensity_transform({"input": [0, 1], "network": [-1, 1]}, "card")
    >>> validate_intensity_transform({"input": [1, 1], "network": [-1, 1]}, "card")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: card: 'intensity_transform' needs 'input' and 'network' as [low, high] ...
    """

    def pair(v: object) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            and float(v[0]) < float(v[1])
        )

    if not (isinstance(spec, Mapping) and pair(spec.get("input")) and pair(spec.get("network"))):
        raise NeurosynthError(
            f"{where}: 'intensity_transform' needs 'input' and 'network' as [low, high] with low < high, "
            'e.g. {"input": [0, 1], "network": [-1, 1], "clip": true}'
        )


def validate_architecture(arch: Mapping[str, Any], where: str) -> None:
    """Refuse an unknown source, a name outside its allow-list, or non-JSON arguments.

    Called by :func:`napari_neurosynth.bundle.validate_card` for cards whose
    ``architecture.source`` is not ``neurosynth``.
    """
    source = str(arch.get("source", "neurosynth"))
    name = arch.get("name")
    args = arch.get("args", {})
    if source not in SOURCES:
        raise NeurosynthError(f"{where}: unknown architecture source {source!r}; use one of {', '.join(SOURCES)}")
    if not _json_plain(args):
        raise NeurosynthError(f"{where}: architecture.args must hold plain JSON values (numbers, strings, lists)")
    if source == "pix2pix" and name not in PIX2PIX_NETG:
        raise NeurosynthError(
            f"{where}: pix2pix generator {name!r} is not supported; use one of {', '.join(PIX2PIX_NETG)}"
        )
    if source == "monai":
        if name not in MONAI_ALLOWED:
            raise NeurosynthError(
                f"{where}: MONAI architecture {name!r} is not allow-listed; allowed: {', '.join(MONAI_ALLOWED)} "
                "(a card must never make the loader import other code)"
            )
        dims = args.get("spatial_dims", 3)
        if dims not in (2, 3):
            raise NeurosynthError(f"{where}: MONAI spatial_dims must be 2 or 3, not {dims!r}")


def build_external(card: Mapping[str, Any], where: str) -> nn.Module:
    """The network for a pix2pix or MONAI card, with random weights (the loader fills them in)."""
    arch = card["architecture"]
    source, name, args = arch.get("source"), arch["name"], dict(arch.get("args", {}))
    validate_architecture(arch, where)
    if source == "pix2pix":
        from .pix2pix import build_pix2pix

        try:
            return build_pix2pix(name, **args)
        except TypeError as exc:
            raise NeurosynthError(f"{where}: bad pix2pix arguments: {exc}") from None
    if source == "monai":
        from .monai_nets import build_monai

        return build_monai(name, args, card, where)
    raise NeurosynthError(f"{where}: architecture source {source!r} has no network to build from weights")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a PyTorch checkpoint, read with ``torch.load(weights_only=True)``.

    ``weights_only`` is torch's restricted unpickler: it rebuilds tensors and plain
    containers and refuses any other object, so a ``__reduce__`` in the file never
    runs. Nested state dicts (``state_dict``, ``model``, ``netG``, ...) are found.

    Raises
    ------
    NeurosynthError
        A missing file, a file that is not a checkpoint, or one that holds other objects.
    """
    import pickle

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise NeurosynthError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeurosynthError(
            f"refusing {path.name}: it holds Python objects other than tensors, which weights-only loading "
            f"does not run ({first[:160]}); export a plain state dict (torch.save(net.state_dict(), ...))"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise NeurosynthError(
            f"cannot read {path.name} as a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    for key in (None, "state_dict", "model", "netG", "net_G", "generator", "G"):
        cand = obj if key is None else (obj.get(key) if isinstance(obj, dict) else None)
        if isinstance(cand, dict) and cand and all(isinstance(v, torch.Tensor) for v in cand.values()):
            return {str(k): v for k, v in cand.items()}
    raise NeurosynthError(f"{path.name} holds no state dict of tensors (looked at the top level and 'state_dict')")


def wrap_intensity(network: nn.Module, card: Mapping[str, Any], where: str) -> nn.Module:
    """``network`` wrapped in the card's ``intensity_transform``, or unchanged when it has none."""
    spec = card.get("intensity_transform")
    if spec is None:
        return network
    from .transform import IntensityTransform

    validate_intensity_transform(spec, where)
    return IntensityTransform(network, tuple(spec["input"]), tuple(spec["network"]), bool(spec.get("clip", True)))


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside an intensity transform (what the weights file holds), else ``network``."""
    from .transform import IntensityTransform

    return network.net if isinstance(network, IntensityTransform) else network
