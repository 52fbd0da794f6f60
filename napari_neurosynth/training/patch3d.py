"""3-D patch training (``neurosynth train --dims 3``): a MONAI network on cubic patches.

The 2.5-D recipe with the third dimension made explicit: the same data sources,
the same per-volume intensity normalisation, the same losses (L1 plus a
conditional least-squares PatchGAN, here with 3-D convolutions), the same
optimiser and schedule. What changes:

- the generator is an allow-listed MONAI network with ``spatial_dims=3``
  (``BasicUNet`` by default), so the bundle it exports is a plain MONAI card
  (``architecture.source = "monai"``) that the engine runs with
  ``sliding_window_inference`` (:func:`napari_neurosynth.inference.synthesize`);
- volumes stay in their array order (no slicing axis first), exactly as the
  engine's 3-D path feeds them to the network;
- patches are ``patch^3`` cubes centred on a random brain voxel;
- validation runs the same sliding window (patch, overlap 0.25, Gaussian blend)
  over every validation volume.

Examples
--------
>>> net = build_generator_3d(["t1"], {"base": 4}, patch=32)
>>> net.spatial_dims, net.size_divisor, net.architecture["args"]["features"]
(3, 16, [4, 4, 8, 16, 32, 4])
>>> d = PatchGAN3d(in_channels=2, base=4, n_layers=2)
>>> tuple(d(torch.zeros(1, 2, 32, 32, 32)).shape)
(1, 1, 6, 6, 6)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Subject
from ..errors import NeurosynthError

#: Overlap of neighbouring windows at validation and in the exported card (MONAI's default is 0.25).
OVERLAP = 0.25
#: The generator's default arguments: BasicUNet with small features (CPU-trainable).
DEFAULT_ARGS: dict[str, Any] = {"features": [8, 8, 16, 32, 64, 8]}


def slicing_card(patch: int, plane: str = "axial") -> dict[str, Any]:
    """The card's ``slicing`` entry of a 3-D patch model (what the engine's sliding window reads).

    Examples
    --------
    >>> slicing_card(48)
    {'plane': 'axial', 'context': 0, 'patch_size': [48, 48, 48], 'overlap': 0.25}
    """
    return {"plane": plane, "context": 0, "patch_size": [int(patch)] * 3, "overlap": OVERLAP}


def build_generator_3d(
    inputs: Sequence[str], arch_args: Mapping[str, Any], patch: int, name: str = "BasicUNet"
) -> nn.Module:
    """The allow-listed MONAI 3-D generator (one channel per input, one output channel).

    ``arch_args`` are BasicUNet's own (``features``, ``act``, ``norm``, ``dropout``,
    ...), or ``base``, the 2-D recipe's width knob (``--arch-args base=8``).

    Goes through :func:`napari_neurosynth.external.monai_nets.build_monai`, the
    loader's own builder, so a trained network and the one a bundle rebuilds are
    the same class with the same arguments and the same patch checks.
    """
    from ..external.monai_nets import build_monai

    args = {**DEFAULT_ARGS, **dict(arch_args)}
    if "base" in args:  # the 2-D recipe's width knob: BasicUNet features (b, b, 2b, 4b, 8b, b)
        b = int(args.pop("base"))
        args["features"] = [b, b, 2 * b, 4 * b, 8 * b, b]
    args.update(spatial_dims=3, in_channels=len(inputs), out_channels=1)
    card = {"inputs": list(inputs), "slicing": slicing_card(patch)}
    return build_monai(name, args, card, "--dims 3")


class PatchGAN3d(nn.Module):
    """The conditional PatchGAN of the 2-D recipe with 3-D convolutions.

    4x4x4 convolutions: stride 2 without normalisation, ``n_layers - 1`` more
    stride-2 with instance norm (channels doubling, capped at ``8 * base``), one
    stride-1, and a linear 1-channel score map (raw scores for the LSGAN loss).
    """

    def __init__(self, in_channels: int = 2, base: int = 8, n_layers: int = 3):
        super().__init__()
        from monai.networks.blocks import Convolution

        act = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})

        def conv(cin: int, cout: int, stride: int, norm: Any) -> nn.Module:
            return Convolution(3, cin, cout, kernel_size=4, strides=stride, padding=1, act=act, norm=norm)

        layers: list[nn.Module] = [conv(in_channels, base, 2, None)]
        ch = base
        for i in range(1, n_layers):
            nxt = base * min(2**i, 8)
            layers.append(conv(ch, nxt, 2, ("instance", {"affine": True})))
            ch = nxt
        nxt = base * min(2**n_layers, 8)
        layers.append(conv(ch, nxt, 1, ("instance", {"affine": True})))
        layers.append(Convolution(3, nxt, 1, kernel_size=4, strides=1, padding=1, conv_only=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@dataclass
class PreparedVolume:
    """A subject as normalised float32 volumes in array order (as the engine's 3-D path sees them).

    The fields :func:`~napari_neurosynth.training.heldout.fit_lut` reads
    (``arrays``, ``mask``) mean the same as in :class:`~napari_neurosynth.data.PreparedSubject`.
    """

    name: str
    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    lesion: np.ndarray | None
    flip_axes: tuple[int, ...]


def prepare_volume(
    subject: Subject, modalities: Sequence[str], normalization: dict | None = None, plane: str = "axial"
) -> PreparedVolume:
    """Normalise each modality with the engine's scale and keep the array order.

    ``flip_axes`` are the two in-plane axes of ``plane``: the 2-D recipe's flips
    mirror those, and so do the 3-D ones.
    """
    from ..data import normalized_modalities
    from ..preprocessing import slice_axis

    subject.require(modalities)
    ref = subject.images[modalities[0]]
    axis = slice_axis(ref.affine, plane)
    arrays = normalized_modalities(subject, modalities, normalization, 0)  # axis 0: array order kept
    mask = np.asarray(subject.mask())
    if not mask.any():
        raise NeurosynthError(f"subject {subject.name!r} has an empty brain mask; nothing to train on")
    lesion = None if subject.lesion_mask is None else np.asarray(subject.lesion_mask)
    return PreparedVolume(subject.name, arrays, mask, lesion, tuple(a for a in range(3) if a != axis))


class PatchSampler3d:
    """Random ``patch^3`` cubes centred on brain voxels; inputs as channels in card order.

    Axes shorter than the patch are zero-padded (as the 2-D sampler pads small slices).

    Examples
    --------
    >>> from napari_neurosynth.data import Subject
    >>> from napari_neurosynth.io import Volume
    >>> vol = Volume(np.ones((20, 24, 16), np.float32), np.eye(4))
    >>> subj = Subject("s", {"t1": vol, "t2": vol}, brain_mask=np.ones((20, 24, 16), np.uint8))
    >>> s = PatchSampler3d([prepare_volume(subj, ["t1", "t2"])], ["t1"], "t2", 16, np.random.default_rng(0))
    >>> [a.shape for a in s.batch(2)]
    [(2, 1, 16, 16, 16), (2, 1, 16, 16, 16)]
    """

    def __init__(self, subjects, inputs, output, patch: int, rng: np.random.Generator, flips: bool = False):
        if not subjects:
            raise NeurosynthError("no training subjects")
        self.subjects, self.inputs, self.output = list(subjects), list(inputs), output
        self.patch, self.rng, self.flips = int(patch), rng, bool(flips)
        self._brain = [np.flatnonzero(s.mask.ravel()) for s in self.subjects]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One cube: inputs ``(C, P, P, P)`` and target ``(1, P, P, P)``."""
        k = int(self.rng.integers(len(self.subjects)))
        subj, P = self.subjects[k], self.patch
        centre = np.unravel_index(int(self._brain[k][int(self.rng.integers(len(self._brain[k])))]), subj.mask.shape)
        src, dst = [], []
        for size, c in zip(subj.mask.shape, centre):
            start = int(np.clip(int(c) - P // 2, 0, max(0, size - P)))
            stop = min(size, start + P)
            src.append(slice(start, stop))
            dst.append(slice(0, stop - start))
        box = np.zeros((len(self.inputs) + 1, P, P, P), np.float32)
        for ch, m in enumerate([*self.inputs, self.output]):
            box[ch][tuple(dst)] = subj.arrays[m][tuple(src)]
        if self.flips:
            for axis in (a for a in subj.flip_axes if self.rng.random() < 0.5):
                box = np.flip(box, 1 + axis)
            box = np.ascontiguousarray(box)
        return box[:-1], box[-1:]

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` cubes stacked: ``(n, C, P, P, P)`` and ``(n, 1, P, P, P)``."""
        items = [self.sample() for _ in range(n)]
        return np.stack([i[0] for i in items]), np.stack([i[1] for i in items])


@torch.no_grad()
def predict_volume(network: nn.Module, subj: PreparedVolume, inputs: Sequence[str], patch: int) -> np.ndarray:
    """The network over a whole prepared volume with the engine's sliding window (Gaussian blend)."""
    from monai.inferers import sliding_window_inference

    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    x = torch.from_numpy(np.stack([subj.arrays[m] for m in inputs]))[None].to(device)
    y = sliding_window_inference(x, (patch,) * 3, 4, network, overlap=OVERLAP, mode="gaussian")
    network.train(was_training)
    assert isinstance(y, torch.Tensor)
    return y[0, 0].cpu().numpy()


def validate_3d(network: nn.Module, subjects: Sequence[PreparedVolume], inputs, output, patch: int) -> dict:
    """Mean PSNR/SSIM/MAE/NMSE inside the brain over the validation volumes."""
    from ..metrics import evaluate

    rows = []
    for subj in subjects:
        pred = predict_volume(network, subj, inputs, patch)
        r = evaluate(pred, subj.arrays[output], mask=subj.mask, kspace=False, normalize=False)
        rows.append({"psnr": r["psnr_brain"], "ssim": r["ssim_brain"], "mae": r["mae_brain"], "nmse": r["nmse_brain"]})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def check_extent(subjects: Sequence[PreparedVolume], patch: int, divisor: int, model: str) -> None:
    """Refuse a patch off the network's size divisor, or larger than a subject (the engine would refuse it too)."""
    from ..external.monai_nets import check_patch

    for subj in subjects:
        check_patch((patch,) * 3, subj.mask.shape, divisor, f"--dims 3 ({model}), subject {subj.name!r}")
