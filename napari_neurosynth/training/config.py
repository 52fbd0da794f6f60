"""What defines a training run: :class:`TrainConfig` (it goes into the card's recipe)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import NeurosynthError
from ..preprocessing import DEFAULT_NORMALIZATION

MODES = ("paired", "unpaired", "mcsr")

LICENSE = (
    "weights: CC0 / BSD-3-Clause for the phantom-trained demo models; "
    "trained on a synthetic phantom, not for clinical use"
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (and goes into the card's recipe).

    Parameters
    ----------
    mode : {"paired", "unpaired", "mcsr"}
    name : str
        Bundle name.
    inputs : list of str
        Input modalities in network order (``["t1"]``, ``["t1", "t2"]``, ``["t1", "t2_lowres"]``).
    output : str
        Target modality.
    data : str
        Training data: ``phantom:SEEDS``, a BraTS/IXI folder or a CSV manifest.
    val_data : str, optional
        Validation data (same forms); ``phantom:900`` by default for phantom training (not a held-out seed).
    resolution : list of float
        Phantom voxel sizes (cycled over seeds).
    architecture : str
        Generator architecture (``resnet``, ``unet``, ``fusion``, ``mcsr``);
        ``arch_args`` complete it (channel counts are filled in).
    """

    mode: str = "paired"
    name: str = "model"
    inputs: list = field(default_factory=lambda: ["t1"])
    output: str = "t2"
    data: str = "phantom:0-7"
    val_data: str | None = None
    resolution: list = field(default_factory=lambda: [2.0])
    architecture: str = "resnet"
    arch_args: dict = field(default_factory=lambda: {"base": 16, "n_blocks": 4})
    context: int = 1
    patch: int = 64
    batch: int = 8
    epochs: int = 10
    steps_per_epoch: int = 50
    lr: float = 2e-4
    lr_decay_start: float = 0.5
    beta1: float = 0.5
    lambda_l1: float = 100.0
    lambda_adv: float = 1.0
    lambda_gdl: float = 0.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.0
    #: Unpaired: weight of a structure loss between each generator's input and output (0: off).
    lambda_structure: float = 0.0
    #: Unpaired: that loss, ``mind`` (MIND descriptors) or ``gc`` (gradient correlation); see :mod:`..losses`.
    structure: str = "mind"
    #: Unpaired: weight of the in-brain intensity-distribution term (1-D Wasserstein, sorted intensities; 0: off).
    lambda_intensity: float = 0.0
    disc_blur: float = 0.0
    cycle_blur: float = 0.0
    pool_size: int = 0
    ema: float = 0.0
    keep_best: bool = False
    disc_base: int = 16
    disc_layers: int = 3
    seed: int = 0
    plane: str = "axial"
    normalization: dict = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    heldout: str | None = None
    heldout_resolution: float = 2.0
    task: str | None = None
    device: str = "cpu"
    randomize: bool = False
    flips: bool = False
    #: 2: slice models (2.5-D with ``context``); 3: a MONAI 3-D network on ``patch^3`` cubes (:mod:`.patch3d`).
    dims: int = 2
    #: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (``--amp``); see :mod:`.distributed`.
    precision: str = "fp32"
    #: Phantom data only: the T2 acquisition (label and ``t2_lowres``) misaligned against T1
    #: (``low``/``mid``/``high``, :data:`~napari_neurosynth.phantom.MISALIGNMENT_SEVERITIES`); validation then
    #: compares with the aligned T2, which only a phantom has.
    target_misalignment: str | None = None
    #: Phantom data only: how ``t2_lowres`` is made, ``slab`` (thick slices) or ``kspace`` (in-plane k-space crop).
    lowres_mode: str = "slab"
    #: FGDL (``--arch fgdl``, :mod:`.fgdl`): label correction by a registration network, its smoothness weight,
    #: the weights of the SSIM and difference-map losses, the discriminator (``projection``: FGDL's
    #: difference-projection PatchGAN; ``patchgan``: the plain conditional one) and the share of the epochs
    #: spent in stage 1 (CMS base and label correction; stage 2 trains the SR branch with the CMS frozen).
    label_correction: bool = True
    lambda_smooth: float = 10.0
    lambda_ssim: float = 0.0
    lambda_diff: float = 0.0
    disc: str = "projection"
    stage1_fraction: float = 0.4

    def check(self) -> None:
        if self.mode not in MODES:
            raise NeurosynthError(f"unknown training mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "unpaired" and (len(self.inputs) != 1 or self.context != 0):
            raise NeurosynthError("unpaired (CycleGAN) training takes exactly one input and --context 0")
        if self.mode == "mcsr" and len(self.inputs) < 2:
            raise NeurosynthError("mcsr training needs the source and the low-resolution target: --inputs t1 t2_lowres")
        if self.output in self.inputs:
            raise NeurosynthError(f"the output {self.output!r} is also an input; choose a different --output")
        for key in ("batch", "epochs", "steps_per_epoch", "patch"):
            if int(getattr(self, key)) < 1:
                raise NeurosynthError(f"--{key.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.ema < 1.0:
            raise NeurosynthError("--ema is a decay per step in [0, 1) (e.g. 0.999); 0 turns it off")
        if self.pool_size < 0:
            raise NeurosynthError("--pool-size cannot be negative")
        if self.disc_blur < 0 or self.cycle_blur < 0:
            raise NeurosynthError("--disc-blur and --cycle-blur are Gaussian sigmas in pixels and cannot be negative")
        if self.lambda_structure < 0 or self.lambda_intensity < 0:
            raise NeurosynthError("--lambda-structure and --lambda-intensity cannot be negative")
        if self.structure not in ("mind", "gc"):
            raise NeurosynthError(f"unknown --structure {self.structure!r}; use mind or gc")
        if self.dims not in (2, 3):
            raise NeurosynthError("--dims is 2 (slice models, 2.5-D with --context) or 3 (3-D patch models)")
        if self.dims == 3 and (self.mode != "paired" or self.context != 0):
            raise NeurosynthError("--dims 3 trains paired 3-D patch models: use --mode paired and --context 0")
        if str(self.precision).lower() not in ("fp32", "bf16", "fp16", "auto"):
            raise NeurosynthError(f"unknown --precision {self.precision!r}; use fp32, bf16 or fp16 (or --amp)")
        if self.architecture == "fgdl" and self.mode != "mcsr":
            raise NeurosynthError("--arch fgdl is the MCSR recipe: use --mode mcsr --inputs t1 t2_lowres")
        if self.disc not in ("projection", "patchgan"):
            raise NeurosynthError(f"unknown --disc {self.disc!r}; use projection or patchgan")
        if not 0.0 <= self.stage1_fraction < 1.0:
            raise NeurosynthError("--stage1-fraction is the share of the epochs of FGDL's first stage, in [0, 1)")
        if self.lowres_mode not in ("slab", "kspace"):
            raise NeurosynthError(f"unknown --lowres-mode {self.lowres_mode!r}; use slab or kspace")
        if self.patch % 4:
            raise NeurosynthError("--patch must be a multiple of 4 (the generators downsample by 4)")


def command_line(argv: Sequence[str]) -> str:
    """The exact ``neurosynth train ...`` command line for the card.

    Examples
    --------
    >>> command_line(["train", "--name", "my model"])
    "neurosynth train --name 'my model'"
    """
    return "neurosynth " + " ".join(shlex.quote(a) for a in argv)
