"""Turn a pytorch-CycleGAN-and-pix2pix checkpoint into a model bundle.

:func:`import_pix2pix` reads ``latest_net_G.pth`` (or any ``*_net_G*.pth``) with
``torch.load(weights_only=True)`` (nothing in the file runs), builds the named
generator (:func:`~napari_neurosynth.external.pix2pix.build_pix2pix`), checks that
every key and shape fits (listing what is missing or unexpected), and writes a
bundle folder atomically: ``weights.safetensors`` with the keys unchanged, and a
card recording the pix2pix intensity convention (normalised input clipped to
[0, 1] and mapped to [-1, 1]; tanh output mapped back) and where the weights came from.
The CLI is ``neurosynth models import pix2pix``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import NeurosynthError

__all__ = ["PIX2PIX_NORMALIZATION", "PIX2PIX_TRANSFORM", "check_keys", "import_pix2pix"]

#: The pix2pix input convention: ``transforms.Normalize((0.5,), (0.5,))`` on [0, 1] images, tanh out.
PIX2PIX_TRANSFORM = {"input": [0.0, 1.0], "network": [-1.0, 1.0], "clip": True}
#: Default normalisation of an imported model: the 99.5th percentile of the head to 1.0,
#: close to the per-volume min-max windowing most slice-export scripts apply before PNG.
PIX2PIX_NORMALIZATION = {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}


def check_keys(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str, hint: str = "") -> None:
    """Raise one message listing missing, unexpected and wrongly shaped keys (first 8 of each).

    Examples
    --------
    >>> own = {"a.weight": torch.zeros(2), "b.weight": torch.zeros(3)}
    >>> check_keys(own, {"a.weight": torch.zeros(2), "c.bias": torch.zeros(1)}, "ckpt.pth")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: ckpt.pth does not fit the architecture: missing keys (1): b.weight; ...
    """

    def listed(label: str, items: Sequence[str]) -> str:
        more = f", ... ({len(items) - 8} more)" if len(items) > 8 else ""
        return f"{label} ({len(items)}): {', '.join(items[:8])}{more}"

    from ..bundle import state_mismatch

    missing, unexpected, wrong = state_mismatch(own, state)
    parts = [
        listed(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes (file vs architecture)", wrong),
        )
        if items
    ]
    if parts:
        raise NeurosynthError(f"{where} does not fit the architecture: {'; '.join(parts)}{hint}")


def _infer(state: dict[str, torch.Tensor], net_g: str) -> tuple[int, int, int] | None:
    """``(input_nc, output_nc, ngf)`` read off the first and last convolutions, when present."""
    if net_g.startswith("resnet"):
        first = state.get("model.1.weight")
        convs = [k for k in state if k.startswith("model.") and k.count(".") == 2 and k.endswith(".weight")]
        last = state.get(max(convs, key=lambda k: int(k.split(".")[1]))) if convs else None
        if first is None or last is None or first.dim() != 4 or last.dim() != 4:
            return None
        return int(first.shape[1]), int(last.shape[0]), int(first.shape[0])
    first, last = state.get("model.model.0.weight"), state.get("model.model.3.weight")
    if first is None or last is None or first.dim() != 4 or last.dim() != 4:
        return None
    return int(first.shape[1]), int(last.shape[1]), int(first.shape[0])


def import_pix2pix(
    checkpoint: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    net_g: str,
    norm: str,
    inputs: Sequence[str],
    output: str,
    ngf: int | None = None,
    use_dropout: bool = True,
    name: str | None = None,
    plane: str = "axial",
    context: int = 0,
    normalization: dict[str, Any] | None = None,
    force: bool = False,
    command: str | None = None,
) -> Path:
    """Import a pytorch-CycleGAN-and-pix2pix generator checkpoint as a bundle folder ``dest``.

    Parameters
    ----------
    checkpoint
        The ``.pth`` file (a state dict, as the original's ``save_networks`` writes it).
    dest
        The bundle folder to write (refused if it exists, unless ``force``).
    net_g, norm, ngf, use_dropout
        The original's ``--netG``, ``--norm``, ``--ngf`` and ``not --no_dropout``.
        ``ngf`` defaults to the checkpoint's first convolution.
    inputs, output
        Modalities: the checkpoint's ``input_nc`` channels are the inputs in order
        (times ``2 * context + 1`` slices each); ``output_nc`` must be 1.
    name, plane, context, normalization
        Card fields (defaults: the folder name, axial, 0, 99.5th percentile to 1.0).

    Raises
    ------
    NeurosynthError
        A file that is not a weights-only checkpoint (pickled objects are refused,
        never run), keys or shapes that do not fit (listed), channels that do not
        match the card, or an existing ``dest`` without ``force``.
    """
    from ..atomic import atomic_dir, check_output_path
    from ..bundle import PLANES, save_bundle
    from . import read_checkpoint
    from .pix2pix import NETG, NORMS, build_pix2pix, clean_state_dict

    checkpoint = Path(checkpoint).expanduser()
    dest = check_output_path(dest, force=force, inputs=[checkpoint])
    if net_g not in NETG:
        raise NeurosynthError(f"unknown --netG {net_g!r}; use one of {', '.join(NETG)}")
    if norm not in NORMS:
        raise NeurosynthError(f"unknown --norm {norm!r}; use one of {', '.join(NORMS)}")
    if plane not in PLANES:
        raise NeurosynthError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")
    state, dropped = clean_state_dict(read_checkpoint(checkpoint), norm)
    found = _infer(state, net_g)
    if found is None:
        raise NeurosynthError(
            f"{checkpoint.name} does not look like a pytorch-CycleGAN-and-pix2pix {net_g} generator "
            "(no first/last convolution under the expected keys); check --netG"
        )
    input_nc, output_nc, file_ngf = found
    expected = len(inputs) * (2 * int(context) + 1)
    if input_nc != expected:
        raise NeurosynthError(
            f"{checkpoint.name} takes {input_nc} input channel(s) but {len(inputs)} input(s) with context {context} "
            f"give {expected}; models trained on RGB PNGs (input_nc 3 from one grey image) are not supported"
        )
    if output_nc != 1:
        raise NeurosynthError(f"{checkpoint.name} has {output_nc} output channels; a synthesis bundle has one")
    network = build_pix2pix(
        net_g, input_nc=input_nc, output_nc=1, ngf=ngf or file_ngf, norm=norm, use_dropout=use_dropout
    )
    hint = (
        f"; check --netG, --norm (batch norm has running_mean keys) and --ngf (the file's is {file_ngf}); "
        f"dropout {'on' if use_dropout else 'off'} shifts residual-block indices, try "
        f"{'--no-dropout' if use_dropout else 'without --no-dropout'}"
    )
    check_keys(network.state_dict(), state, checkpoint.name, hint)
    network.load_state_dict(state, strict=True)
    bundle_name = name or dest.name
    card: dict[str, Any] = {
        "name": bundle_name,
        "version": "1.0",
        "task": "cms",
        "description": f"{net_g} generator imported from pytorch-CycleGAN-and-pix2pix checkpoint {checkpoint.name}",
        "inputs": list(inputs),
        "output": output,
        "architecture": copy.deepcopy(network.architecture),
        "normalization": dict(normalization or PIX2PIX_NORMALIZATION),
        "intensity_transform": dict(PIX2PIX_TRANSFORM),
        "slicing": {"plane": plane, "context": int(context)},
        "training": {
            "data": "unknown (trained outside napari-neurosynth; see the checkpoint's own documentation)",
            "command": command or f"neurosynth models import pix2pix {shlex.quote(str(checkpoint))} --netG {net_g} ...",
            "framework": "pytorch-CycleGAN-and-pix2pix",
        },
        "source_checkpoint": {
            "file": checkpoint.name,
            "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "dropped_keys": dropped,
        },
    }
    with atomic_dir(dest, force=force) as tmp:
        save_bundle(network, card, tmp)
    return dest
