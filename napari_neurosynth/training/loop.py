"""The training loop: :class:`Trainer` (paired, unpaired, MCSR recipes) and CycleGAN's :class:`ImagePool`.

Recipes (the survey's Tables 5-6 name the losses):

- ``paired`` (pix2pix, Isola et al. 2017): generator loss
  ``lambda_l1 * L_p2p + lambda_adv * L_sgan (+ lambda_gdl * L_gdl)`` against a
  conditional PatchGAN that sees the input channels next to the real or
  synthesized target; least-squares GAN loss (L_sgan). Several inputs
  (T1 + T2 -> FLAIR) are the same recipe with a multi-input generator.
- ``mcsr`` (FGDL's SR branch): the paired recipe with the low-resolution target
  (``t2_lowres``, resampled onto the source grid) as a second input group.
- ``unpaired`` (CycleGAN, Zhu et al. 2017): generators A->B and B->A, one
  unconditional PatchGAN per domain; ``L_sgan + lambda_cycle * L_cyc +
  lambda_identity * L_iden``. Source and target slices come from *different*
  subjects (the subjects are split in two halves, one per domain), so no voxel
  correspondence is ever available. Plain 2-D (context 0): the cycle feeds a
  single synthesized slice back through the other generator.

Everything is seeded: patches come from one :class:`numpy.random.Generator`,
weights from ``torch.manual_seed``, and deterministic algorithms are requested,
so on the CPU a run is reproducible and a resumed run continues exactly as an
uninterrupted one would. Checkpoints hold no pickles: weights and optimiser
tensors go to ``checkpoint.safetensors``, the rest (step, epoch, optimiser
hyper-parameters, RNG states, history) to ``checkpoint.json``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import losses as L
from ..data import SliceSampler, load_subjects, prepare
from ..errors import NeurosynthError
from ..networks import build_network
from .checkpoints import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import Distributed, autocast, grad_scaler, training_precision
from .validation import validate


def build_generator(cfg: TrainConfig, reverse: bool = False) -> nn.Module:
    """The generator for ``cfg`` with its channel counts filled in from inputs and context."""
    if cfg.dims == 3:
        from .patch3d import build_generator_3d

        return build_generator_3d(cfg.inputs, cfg.arch_args, cfg.patch)
    per = 2 * cfg.context + 1
    args = dict(cfg.arch_args)
    if reverse:  # CycleGAN B -> A: same architecture, one input
        return build_network(cfg.architecture, **{**args, "in_channels": per})
    if cfg.architecture == "fusion":
        args.update(n_inputs=len(cfg.inputs), channels_per_input=per)
    elif cfg.architecture in ("mcsr", "fgdl"):
        args.update(source_channels=per * (len(cfg.inputs) - 1), lowres_channels=per)
    else:
        args["in_channels"] = per * len(cfg.inputs)
    return build_network(cfg.architecture, **args)


def phantom_options(cfg: TrainConfig) -> dict:
    """The :func:`~napari_neurosynth.phantom.make_phantom` options a run's phantom data get (misalignment, low-res)."""
    out: dict = {}
    if cfg.target_misalignment:
        out["target_misalignment"] = cfg.target_misalignment
    if cfg.lowres_mode != "slab":
        out["lowres_mode"] = cfg.lowres_mode
    return out


def _if_phantom(source: str | None, options: dict) -> dict:
    if options and not str(source).startswith("phantom:"):
        raise NeurosynthError("--misalignment and --lowres-mode describe phantom data; give --data phantom:SEEDS")
    return options


def _seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # GPU runs trade bit-reproducibility for cuDNN's fastest kernels; CPU runs stay exact
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------- the loop


class ImagePool:
    """CycleGAN's history of synthesized images for the discriminator (Shrivastava et al. 2017).

    Each query returns, image by image, either the new image or (once the pool is
    full, with probability 1/2) a stored older one that the new image replaces, so
    the discriminator also remembers what earlier generators produced and the two
    players oscillate less. Randomness comes from the trainer's numpy generator,
    so a resumed run continues exactly.

    Examples
    --------
    >>> pool = ImagePool(2, np.random.default_rng(0))
    >>> pool.query(torch.ones(3, 1, 4, 4)).shape
    torch.Size([3, 1, 4, 4])
    >>> len(pool.images)
    2
    """

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = int(size)
        self.rng = rng
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch.detach()
        out = []
        for image in batch.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                k = int(self.rng.integers(self.size))
                out.append(self.images[k].clone())
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state(self) -> torch.Tensor | None:
        return torch.cat(self.images, 0) if self.images else None

    def restore(self, stacked: torch.Tensor | None, device: torch.device) -> None:
        self.images = [] if stacked is None else [t.unsqueeze(0).to(device) for t in stacked]


class Trainer:
    """One training run: data, networks, optimisers, the step function and checkpoints.

    Examples
    --------
    >>> cfg = TrainConfig(mode="paired", data="phantom:0", resolution=[3.0], epochs=1,
    ...                   steps_per_epoch=2, batch=2, patch=32,
    ...                   arch_args={"base": 4, "n_blocks": 1})  # doctest: +SKIP
    >>> history = Trainer(cfg).fit()  # doctest: +SKIP
    """

    #: ``--arch fgdl`` only (:mod:`.fgdl`): the label-correction registration network and the SSIM loss.
    R: nn.Module
    ssim_loss: nn.Module

    def __init__(
        self,
        cfg: TrainConfig,
        subjects=None,
        val_subjects=None,
        log: Callable[[str], None] | None = None,
        dist: Distributed | None = None,
    ):
        cfg.check()
        self.cfg = cfg
        #: This process's place in a ``torchrun`` run (:mod:`.distributed`); one process by default.
        self.dist = dist or Distributed()
        self.dist.local_batch(cfg.batch)  # --batch is global: refuse one the processes cannot share evenly
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if not self.dist.is_main:  # rank 0 speaks for the run
            self.log = lambda msg: None
        from ..inference import resolve_device

        # device and precision first: a bad choice fails before the data are loaded
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.device)
        self.precision = training_precision(cfg.precision, self.device)
        if cfg.precision == "auto" and self.precision == "fp32":
            self.log("--amp on the CPU: training in fp32 (mixed precision pays only on a GPU)")
        self.scaler = grad_scaler(self.precision, self.device)
        self._load_data(subjects, val_subjects)
        self.rng = np.random.default_rng(cfg.seed)
        _seed_everything(cfg.seed, self.device)
        self.G = build_generator(cfg).to(self.device)
        self._check_extent()
        self.nets: dict[str, nn.Module] = {"G": self.G}
        if cfg.mode == "unpaired":
            self._build_unpaired()
        elif cfg.architecture == "fgdl":
            from . import fgdl

            fgdl.build(self)
        else:
            self._build_paired()
        #: The networks the steps run: the same modules, each wrapped in DDP under torchrun.
        self.fwd: dict[str, nn.Module] = {k: self.dist.wrap(v, self.log) for k, v in self.nets.items()}
        self.G_ema = None
        if cfg.ema:
            # Exponential moving average of the generator's weights (Yazici et al. 2019): GAN
            # generators oscillate around a good solution and their average sits nearer to it.
            # Validation and the exported bundle use the average.
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.G_ema = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            self.nets["G_ema"] = self.G_ema
        if cfg.keep_best and not self.val_subjects:
            raise NeurosynthError(
                "--keep-best selects the epoch with the best validation PSNR and needs validation data: pass --val-data"
            )
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        #: With ``keep_best``: the generator's weights (CPU) at the best validation PSNR so far.
        self.best: dict | None = None

    # ---- setup

    def _check_extent(self) -> None:
        """Refuse subjects (and patches) too small for the generator, before any step runs."""
        from ..checks import check_slice_extent
        from ..slicing import size_divisor

        divisor = size_divisor(self.G)
        if self.cfg.dims == 3:
            from .patch3d import check_extent

            check_extent([*self.train_subjects, *self.val_subjects], self.cfg.patch, divisor, self.cfg.name)
            return
        for subj in [*self.train_subjects, *self.val_subjects]:
            shape = next(iter(subj.arrays.values())).shape  # (slices, H, W) after prepare()
            check_slice_extent(shape, 0, divisor, f"subject {subj.name!r}", self.cfg.name)
        check_slice_extent((1, self.cfg.patch, self.cfg.patch), 0, divisor, "the training patch", self.cfg.name)

    def _load_data(self, subjects, val_subjects) -> None:
        """Training and validation subjects, normalised and sliced as the engine will see them."""
        cfg = self.cfg
        mods = [*cfg.inputs, cfg.output]
        options = phantom_options(cfg)
        if subjects is None:
            subjects = load_subjects(
                cfg.data, mods, cfg.resolution, randomize=cfg.randomize, **_if_phantom(cfg.data, options)
            )
        val_source = cfg.val_data or ("phantom:900" if cfg.data.startswith("phantom:") else None)
        if val_subjects is None and val_source:
            val_options = _if_phantom(val_source, options)
            if val_options.get("target_misalignment") == "mixed":
                val_options = {**val_options, "target_misalignment": "mid"}  # one subject: the middle severity
            val_mods = [*mods, "t2_aligned"] if val_options.get("target_misalignment") else mods
            val_subjects = load_subjects(
                val_source,
                val_mods,
                cfg.resolution[0] if cfg.resolution else 2.0,
                randomize=cfg.randomize,
                **val_options,
            )
            if "t2_aligned" in val_mods:
                # judge against the truth, not against the motion the label carries (model selection would
                # otherwise reward a model that reproduces the misalignment)
                for s in val_subjects:
                    s.images[cfg.output] = s.images.pop("t2_aligned")
        prep: Callable[..., Any] = prepare
        if cfg.dims == 3:  # volumes in array order, as the engine's sliding window sees them
            from .patch3d import prepare_volume as prep
        self.train_subjects: list[Any] = [prep(s, mods, cfg.normalization, cfg.plane) for s in subjects]
        self.val_subjects: list[Any] = [prep(s, mods, cfg.normalization, cfg.plane) for s in (val_subjects or [])]

    def _build_paired(self) -> None:
        """Paired and MCSR: one conditional PatchGAN that sees the input channels beside the target."""
        cfg = self.cfg
        per = 2 * cfg.context + 1
        betas = (cfg.beta1, 0.999)
        self.D: nn.Module
        self.sampler: Any  # SliceSampler, or PatchSampler3d for --dims 3
        if cfg.dims == 3:
            from .patch3d import PatchGAN3d, PatchSampler3d

            self.D = PatchGAN3d(len(cfg.inputs) + 1, cfg.disc_base, cfg.disc_layers).to(self.device)
            self.sampler = PatchSampler3d(
                self.train_subjects, cfg.inputs, cfg.output, cfg.patch, self.rng, flips=cfg.flips
            )
        else:
            self.D = build_network(
                "patchgan", in_channels=per * len(cfg.inputs) + 1, base=cfg.disc_base, n_layers=cfg.disc_layers
            ).to(self.device)
            self.sampler = SliceSampler(
                self.train_subjects, cfg.inputs, cfg.output, cfg.context, cfg.patch, self.rng, flips=cfg.flips
            )
        self.nets["D"] = self.D
        self.opts = {
            "G": torch.optim.Adam(self.G.parameters(), cfg.lr, betas),
            "D": torch.optim.Adam(self.D.parameters(), cfg.lr, betas),
        }

    def _build_unpaired(self) -> None:
        """CycleGAN: a reverse generator, one unconditional PatchGAN per domain, subjects split in two halves."""
        cfg = self.cfg
        betas = (cfg.beta1, 0.999)
        if len(self.train_subjects) < 2:
            raise NeurosynthError(
                "unpaired training needs at least 2 subjects (source and target come from different ones)"
            )
        self.F = build_generator(cfg, reverse=True).to(self.device)
        self.DA = build_network("patchgan", in_channels=1, base=cfg.disc_base, n_layers=cfg.disc_layers).to(self.device)
        self.DB = build_network("patchgan", in_channels=1, base=cfg.disc_base, n_layers=cfg.disc_layers).to(self.device)
        self.disc_low_pass = L.LowPass(cfg.disc_blur).to(self.device)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size, self.rng), ImagePool(cfg.pool_size, self.rng)
        self.cycle_low_pass = L.LowPass(cfg.cycle_blur).to(self.device)
        self.nets.update(F=self.F, DA=self.DA, DB=self.DB)
        half_a, half_b = self.train_subjects[0::2], self.train_subjects[1::2]
        self.sampler_a = SliceSampler(half_a, cfg.inputs, None, 0, cfg.patch, self.rng, flips=cfg.flips)
        self.sampler_b = SliceSampler(half_b, [cfg.output], None, 0, cfg.patch, self.rng, flips=cfg.flips)
        self.opts = {
            "G": torch.optim.Adam(list(self.G.parameters()) + list(self.F.parameters()), cfg.lr, betas),
            "D": torch.optim.Adam(list(self.DA.parameters()) + list(self.DB.parameters()), cfg.lr, betas),
        }

    @property
    def generator(self) -> nn.Module:
        """The generator to validate and export: the weight average when ``ema`` is on."""
        return self.G_ema.module if self.G_ema is not None else self.G

    def export_network(self) -> nn.Module:
        """The generator a bundle gets: :attr:`generator`, or its best-validation weights with ``keep_best``."""
        if not (self.cfg.keep_best and self.best):
            return self.generator
        net = copy.deepcopy(self.generator)
        net.load_state_dict(self.best["state"])
        return net

    def _remember_if_best(self, row: dict) -> None:
        # GAN training can get worse late (the adversarial term paints texture as the rate
        # decays); selecting on validation subjects, never the held-out seeds, is model selection.
        if not self.cfg.keep_best or "val_psnr" not in row:
            return
        if self.best is None or row["val_psnr"] > self.best["val_psnr"]:
            state = {k: v.detach().cpu().clone() for k, v in self.generator.state_dict().items()}
            self.best = {"val_psnr": row["val_psnr"], "epoch": row["epoch"], "state": state}

    # ---- steps

    def _paired_step(self) -> dict:
        cfg = self.cfg
        # every rank draws the global batch (one seeded stream) and trains on its share
        xs, ys = self.dist.share(self.sampler.batch(cfg.batch))[:2]
        assert ys is not None  # a paired sampler always has a target
        x, y = torch.from_numpy(xs).to(self.device), torch.from_numpy(ys).to(self.device)
        G, D, amp, scaler = self.fwd["G"], self.fwd["D"], self._autocast, self.scaler
        with amp():
            fake = G(x)
        # discriminator: real pairs -> 1, synthesized pairs -> 0
        self.opts["D"].zero_grad()
        with amp():
            d_loss = L.lsgan_discriminator_loss(D(torch.cat([x, y], 1)), D(torch.cat([x, fake.detach()], 1)))
        scaler.scale(d_loss).backward()
        scaler.step(self.opts["D"])
        # generator: fool D, stay close to the target
        self.opts["G"].zero_grad()
        with amp():
            adv = L.lsgan_generator_loss(D(torch.cat([x, fake], 1)))
            l1 = L.l1_loss(fake, y)
            g_loss = cfg.lambda_l1 * l1 + cfg.lambda_adv * adv
            if cfg.lambda_gdl:
                gdl = L.gradient_difference_loss(fake, y)
                g_loss = g_loss + cfg.lambda_gdl * gdl
        out = {"l1": l1.item(), "adv": adv.item(), "d": d_loss.item()}
        if cfg.lambda_gdl:
            out["gdl"] = gdl.item()
        scaler.scale(g_loss).backward()
        scaler.step(self.opts["G"])
        out["g"] = g_loss.item()
        return out

    def _unpaired_step(self) -> dict:
        cfg = self.cfg
        share = self.dist.share  # each rank's part of the global batch (see _paired_step)
        batch_a, batch_b = share(self.sampler_a.batch(cfg.batch)), share(self.sampler_b.batch(cfg.batch))
        a, b = torch.from_numpy(batch_a[0]).to(self.device), torch.from_numpy(batch_b[0]).to(self.device)
        G, F, DA, DB = (self.fwd[k] for k in ("G", "F", "DA", "DB"))
        amp, scaler = self._autocast, self.scaler
        dlp, clp = self.disc_low_pass, self.cycle_low_pass  # identity unless --disc-blur / --cycle-blur
        self.opts["G"].zero_grad()
        with amp():
            fake_b, fake_a = G(a), F(b)
            adv = L.lsgan_generator_loss(DB(dlp(fake_b))) + L.lsgan_generator_loss(DA(dlp(fake_a)))
            cyc = L.cycle_loss(clp(F(fake_b)), clp(a), clp(G(fake_a)), clp(b))
            g_loss = cfg.lambda_adv * adv + cfg.lambda_cycle * cyc
            struct: torch.Tensor | None = None
            if cfg.lambda_structure:
                # the adversarial term picks the target contrast, the structure term keeps each
                # generator's edges where its input's are (no invented or moved anatomy); the
                # losses are polarity-invariant, so they do not push T1 -> T2 towards copying
                structure = L.STRUCTURE_LOSSES[cfg.structure]
                struct = structure(a, fake_b) + structure(b, fake_a)
                g_loss = g_loss + cfg.lambda_structure * struct
            inten: torch.Tensor | None = None
            if cfg.lambda_intensity:
                # brain-voxel intensity distributions of each synthesis against the other half's real images
                # (unpaired: other subjects); the discriminators' instance norm leaves the level to this term
                ma, mb = (torch.from_numpy(m[2]).to(self.device) for m in (batch_a, batch_b))
                inten = L.quantile_matching_loss(fake_b, b, ma, mb) + L.quantile_matching_loss(fake_a, a, mb, ma)
                g_loss = g_loss + cfg.lambda_intensity * inten
            idt = torch.zeros((), device=self.device)
            if cfg.lambda_identity:
                # identity (Zhu et al.'s colour-preservation term) pulls G towards copying its input,
                # the worst answer for an inverted contrast such as T1 -> T2; skipped when its weight is 0
                idt = L.identity_loss(G(b), b) + L.identity_loss(F(a), a)
                g_loss = g_loss + cfg.lambda_identity * idt
        scaler.scale(g_loss).backward()
        scaler.step(self.opts["G"])
        self.opts["D"].zero_grad()
        # the pools draw image by image over the global batch, as one process would (fp32, detached)
        gather = self.dist.gather
        old_b = share(self.pool_b.query(gather(fake_b.detach().float())))
        old_a = share(self.pool_a.query(gather(fake_a.detach().float())))
        with amp():
            d_loss = L.lsgan_discriminator_loss(DB(dlp(b)), DB(dlp(old_b))) + L.lsgan_discriminator_loss(
                DA(dlp(a)), DA(dlp(old_a))
            )
        scaler.scale(d_loss).backward()
        scaler.step(self.opts["D"])
        out = {"g": g_loss.item(), "cycle": cyc.item(), "identity": idt.item(), "adv": adv.item(), "d": d_loss.item()}
        if struct is not None:  # logged only when on, so a run without it logs what it always did
            out["structure"] = struct.item()
        if inten is not None:
            out["intensity"] = inten.item()
        return out

    def lr_at(self, epoch: int) -> float:
        """pix2pix/CycleGAN schedule: constant, then linear to 0 from ``lr_decay_start`` of the epochs."""
        cfg = self.cfg
        start = round(cfg.lr_decay_start * cfg.epochs)
        if epoch < start or start >= cfg.epochs:
            return cfg.lr
        return cfg.lr * (cfg.epochs - epoch) / (cfg.epochs - start + 1)

    def train_step(self) -> dict:
        """One optimisation step (generator(s) and discriminator(s)); returns the losses."""
        if self.cfg.mode == "unpaired":
            out = self._unpaired_step()
        elif self.cfg.architecture == "fgdl":
            from . import fgdl

            out = fgdl.step(self)
        else:
            out = self._paired_step()
        self.scaler.update()  # once per step, after both optimisers (torch's AMP recipe for several)
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        self.step += 1
        return out

    def _autocast(self):
        """Forward passes and losses in the run's precision (:func:`.distributed.autocast`)."""
        return autocast(self.precision, self.device)

    # ---- checkpoints

    def save_checkpoint(self, folder: str | Path) -> None:
        meta = {
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "config": asdict(self.cfg),
            "rng.numpy": self.rng.bit_generator.state,
        }
        if self.scaler.is_enabled():
            meta["grad_scaler"] = self.scaler.state_dict()  # the fp16 loss scale reached so far
        extra = {}
        if self.best is not None:
            meta["best"] = {"val_psnr": self.best["val_psnr"], "epoch": self.best["epoch"]}
            extra.update({f"best.{k}": v for k, v in self.best["state"].items()})
        if self.cfg.mode == "unpaired":
            for key, pool in (("pool_a", self.pool_a), ("pool_b", self.pool_b)):
                stacked = pool.state()
                if stacked is not None:
                    extra[key] = stacked
        save_checkpoint(Path(folder), self.nets, self.opts, meta, extra)

    def load_checkpoint(self, folder: str | Path) -> None:
        js = Path(folder) / "checkpoint.json"
        saved = json.loads(js.read_text()).get("config", {}) if js.is_file() else {}
        for key in (
            "mode",
            "inputs",
            "output",
            "architecture",
            "arch_args",
            "context",
            "dims",
            "seed",
            "disc_base",
            "disc_layers",
        ):
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise NeurosynthError(
                    f"--resume: the checkpoint was trained with {key}={saved[key]!r}, not {getattr(self.cfg, key)!r}; "
                    "use the same options or a fresh --checkpoint-dir"
                )
        meta = load_checkpoint(Path(folder), self.nets, self.opts)
        if self.cfg.mode == "unpaired":
            self.pool_a.restore(meta["extra_tensors"].get("pool_a"), self.device)
            self.pool_b.restore(meta["extra_tensors"].get("pool_b"), self.device)
        self.step, self.epoch, self.history = meta["step"], meta["epoch"], meta["history"]
        if meta.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["grad_scaler"])
        if meta.get("best"):
            state = {k[len("best.") :]: v for k, v in meta["extra_tensors"].items() if k.startswith("best.")}
            self.best = {**meta["best"], "state": state}
        self.rng.bit_generator.state = meta["rng.numpy"]

    # ---- fit

    def fit(
        self,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> list[dict]:
        """Train for ``cfg.epochs`` epochs (continuing a checkpoint with ``resume``), validating each epoch.

        ``stop_after`` ends this call after that many epochs in total (as if the
        run were interrupted there); a later ``resume=True`` call finishes it.

        Returns the history: one dict per epoch with mean losses, validation
        metrics (``val_psnr``, ``val_ssim``, ``val_mae``) and seconds.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        if resume:
            if ckpt is None:
                raise NeurosynthError("--resume needs --checkpoint-dir")
            self.load_checkpoint(ckpt)
            self.log(f"resumed from {ckpt} at epoch {self.epoch}, step {self.step}")
        last = cfg.epochs if stop_after is None else min(cfg.epochs, int(stop_after))
        for epoch in range(self.epoch, last):
            self.epoch = epoch
            t0 = time.perf_counter()
            for opt in self.opts.values():
                for group in opt.param_groups:
                    group["lr"] = self.lr_at(self.epoch)
            sums: dict[str, float] = {}
            bar = tqdm(
                range(cfg.steps_per_epoch),
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                leave=False,
                disable=not (progress and self.dist.is_main),
                file=sys.stderr,
            )
            for _ in bar:
                losses = self.train_step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})
            row = {
                "epoch": self.epoch + 1,
                "step": self.step,
                "lr": self.lr_at(self.epoch),
                **{k: v / cfg.steps_per_epoch for k, v in sums.items()},
            }
            # rank 0 validates, checkpoints and remembers the best weights; the other ranks hold the
            # same weights and meet it again at the next step's all-reduce
            if self.val_subjects and self.dist.is_main:
                if cfg.dims == 3:
                    from .patch3d import validate_3d

                    val = validate_3d(self.generator, self.val_subjects, cfg.inputs, cfg.output, cfg.patch)
                else:
                    val = validate(self.generator, self.val_subjects, cfg.inputs, cfg.output, cfg.context)
                row.update({f"val_{k}": v for k, v in val.items()})
            row["seconds"] = round(time.perf_counter() - t0, 2)
            self.history.append(row)
            self._remember_if_best(row)
            self.log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if ckpt is not None and self.dist.is_main:
                self.epoch += 1  # saved state = "epochs completed"
                self.save_checkpoint(ckpt)
                self.epoch -= 1
        self.epoch = last
        return self.history

    # ---- export

    def card(self, command: str | None = None) -> dict:
        """The bundle card for the trained generator (:func:`~napari_neurosynth.training.export.training_card`)."""
        from .export import training_card

        return training_card(self, command)
