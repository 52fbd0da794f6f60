"""Training loops (paired, unpaired, MCSR), checkpoints, validation and bundle export.

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
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import losses as L
from .data import PreparedSubject, SliceSampler, load_subjects, parse_seeds, prepare
from .errors import NeurosynthError
from .networks import build_network, count_parameters
from .preprocessing import DEFAULT_NORMALIZATION

MODES = ("paired", "unpaired", "mcsr")

LICENSE = ("weights: CC0 / BSD-3-Clause for the phantom-trained demo models; "
           "trained on a synthetic phantom, not for clinical use")


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
        if self.patch % 4:
            raise NeurosynthError("--patch must be a multiple of 4 (the generators downsample by 4)")


# --------------------------------------------------------------------------- networks


def build_generator(cfg: TrainConfig, reverse: bool = False) -> nn.Module:
    """The generator for ``cfg`` with its channel counts filled in from inputs and context."""
    per = 2 * cfg.context + 1
    args = dict(cfg.arch_args)
    if reverse:  # CycleGAN B -> A: same architecture, one input
        return build_network(cfg.architecture, **{**args, "in_channels": per})
    if cfg.architecture == "fusion":
        args.update(n_inputs=len(cfg.inputs), channels_per_input=per)
    elif cfg.architecture == "mcsr":
        args.update(source_channels=per * (len(cfg.inputs) - 1), lowres_channels=per)
    else:
        args["in_channels"] = per * len(cfg.inputs)
    return build_network(cfg.architecture, **args)


def _seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # GPU runs trade bit-reproducibility for cuDNN's fastest kernels; CPU runs stay exact
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------- checkpoints


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimiser state as (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors, plain = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        plain["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
                plain["state"][str(idx)][k] = "tensor"
            else:
                plain["state"][str(idx)][k] = v
    return tensors, plain


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, plain: dict) -> None:
    state = {}
    for idx, st in plain["state"].items():
        state[int(idx)] = {k: (tensors[f"{prefix}.state.{idx}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(folder: Path, nets: dict, opts: dict, meta: dict, extra: dict | None = None) -> None:
    """Write ``checkpoint.safetensors`` + ``checkpoint.json`` atomically (weights, optimisers, RNG, step)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, net in nets.items():
        for k, v in net.state_dict().items():
            tensors[f"net.{key}.{k}"] = v.detach().cpu().contiguous().clone()
    opt_plain = {}
    for key, opt in opts.items():
        t, p = _flatten_optimizer(f"opt.{key}", opt)
        tensors.update(t)
        opt_plain[key] = p
    tensors["rng.torch"] = torch.get_rng_state()
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
    tmp = folder / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "checkpoint.safetensors")
    tmpj = folder / "checkpoint.json.tmp"
    tmpj.write_text(json.dumps({**meta, "optimizers": opt_plain}, indent=1))
    os.replace(tmpj, folder / "checkpoint.json")


def load_checkpoint(folder: Path, nets: dict, opts: dict) -> dict:
    """Restore networks, optimisers and torch's RNG from ``folder``; return the JSON metadata."""
    from safetensors.torch import load_file

    st, js = folder / "checkpoint.safetensors", folder / "checkpoint.json"
    if not (st.is_file() and js.is_file()):
        raise NeurosynthError(f"--resume: no checkpoint in {folder} (expected checkpoint.safetensors and checkpoint.json)")
    tensors = load_file(str(st))
    meta = json.loads(js.read_text())
    for key, net in nets.items():
        prefix = f"net.{key}."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for key, opt in opts.items():
        _restore_optimizer(f"opt.{key}", opt, tensors, meta["optimizers"][key])
    torch.set_rng_state(tensors["rng.torch"])
    meta["extra_tensors"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def predict_stack(network: nn.Module, subj: PreparedSubject, inputs: Sequence[str], context: int,
                  batch: int = 16) -> np.ndarray:
    """Run ``network`` over every slice of a prepared subject (padding to its size divisor)."""
    from .data import context_stack

    network.eval()
    device = next(network.parameters()).device
    S, H, W = subj.mask.shape
    div = int(getattr(network, "size_divisor", 1))
    Hp, Wp = -(-H // div) * div, -(-W // div) * div
    out = np.zeros((S, H, W), np.float32)
    for start in range(0, S, batch):
        idx = range(start, min(S, start + batch))
        x = np.stack([np.concatenate([context_stack(subj.arrays[m], s, context) for m in inputs]) for s in idx])
        x = np.pad(x, ((0, 0), (0, 0), (0, Hp - H), (0, Wp - W)))
        out[start:start + len(idx)] = network(torch.from_numpy(x).to(device)).cpu().numpy()[:, 0, :H, :W]
    network.train()
    return out


def validate(network: nn.Module, subjects: Sequence[PreparedSubject], inputs, output, context) -> dict:
    """Mean PSNR/SSIM/MAE inside the brain over the validation subjects (:func:`metrics.evaluate`)."""
    from .metrics import evaluate

    rows = []
    for subj in subjects:
        pred = predict_stack(network, subj, inputs, context)
        r = evaluate(pred, subj.arrays[output], mask=subj.mask, kspace=False)
        rows.append({k: r[f"{k}_brain"] for k in ("psnr", "ssim", "mae", "nmse")})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


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

    def __init__(self, cfg: TrainConfig, subjects=None, val_subjects=None, log: Callable[[str], None] | None = None):
        cfg.check()
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        mods = list(cfg.inputs) + [cfg.output]
        if subjects is None:
            subjects = load_subjects(cfg.data, mods, cfg.resolution)
        val_source = cfg.val_data or ("phantom:900" if cfg.data.startswith("phantom:") else None)
        if val_subjects is None and val_source:
            val_subjects = load_subjects(val_source, mods, cfg.resolution[0] if cfg.resolution else 2.0)
        self.train_subjects = [prepare(s, mods, cfg.normalization, cfg.plane) for s in subjects]
        self.val_subjects = [prepare(s, mods, cfg.normalization, cfg.plane) for s in (val_subjects or [])]
        self.rng = np.random.default_rng(cfg.seed)
        from .inference import resolve_device

        self.device = resolve_device(cfg.device)
        _seed_everything(cfg.seed, self.device)
        self.G = build_generator(cfg).to(self.device)
        self.nets: dict[str, nn.Module] = {"G": self.G}
        per = 2 * cfg.context + 1
        betas = (cfg.beta1, 0.999)
        if cfg.mode == "unpaired":
            if len(self.train_subjects) < 2:
                raise NeurosynthError("unpaired training needs at least 2 subjects (source and target come from different ones)")
            self.F = build_generator(cfg, reverse=True).to(self.device)
            self.DA = build_network("patchgan", in_channels=1, base=cfg.disc_base, n_layers=cfg.disc_layers).to(self.device)
            self.DB = build_network("patchgan", in_channels=1, base=cfg.disc_base, n_layers=cfg.disc_layers).to(self.device)
            self.disc_low_pass = L.LowPass(cfg.disc_blur).to(self.device)
            self.pool_a, self.pool_b = ImagePool(cfg.pool_size, self.rng), ImagePool(cfg.pool_size, self.rng)
            self.cycle_low_pass = L.LowPass(cfg.cycle_blur).to(self.device)
            self.nets.update(F=self.F, DA=self.DA, DB=self.DB)
            half_a, half_b = self.train_subjects[0::2], self.train_subjects[1::2]
            self.sampler_a = SliceSampler(half_a, cfg.inputs, None, 0, cfg.patch, self.rng)
            self.sampler_b = SliceSampler(half_b, [cfg.output], None, 0, cfg.patch, self.rng)
            self.opts = {
                "G": torch.optim.Adam(list(self.G.parameters()) + list(self.F.parameters()), cfg.lr, betas),
                "D": torch.optim.Adam(list(self.DA.parameters()) + list(self.DB.parameters()), cfg.lr, betas),
            }
        else:
            self.D = build_network("patchgan", in_channels=per * len(cfg.inputs) + 1, base=cfg.disc_base,
                                   n_layers=cfg.disc_layers).to(self.device)
            self.nets["D"] = self.D
            self.sampler = SliceSampler(self.train_subjects, cfg.inputs, cfg.output, cfg.context, cfg.patch, self.rng)
            self.opts = {"G": torch.optim.Adam(self.G.parameters(), cfg.lr, betas),
                         "D": torch.optim.Adam(self.D.parameters(), cfg.lr, betas)}
        self.G_ema = None
        if cfg.ema:
            # Exponential moving average of the generator's weights (Yazici et al. 2019): GAN
            # generators oscillate around a good solution and their average sits nearer to it.
            # Validation and the exported bundle use the average.
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.G_ema = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            self.nets["G_ema"] = self.G_ema
        if cfg.keep_best and not self.val_subjects:
            raise NeurosynthError("--keep-best selects the epoch with the best validation PSNR and needs "
                                  "validation data: pass --val-data")
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        #: With ``keep_best``: the generator's weights (CPU) at the best validation PSNR so far.
        self.best: dict | None = None

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
        x, y, _ = self.sampler.batch(cfg.batch)
        x, y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        fake = self.G(x)
        # discriminator: real pairs -> 1, synthesized pairs -> 0
        self.opts["D"].zero_grad()
        d_loss = L.lsgan_discriminator_loss(self.D(torch.cat([x, y], 1)), self.D(torch.cat([x, fake.detach()], 1)))
        d_loss.backward()
        self.opts["D"].step()
        # generator: fool D, stay close to the target
        self.opts["G"].zero_grad()
        adv = L.lsgan_generator_loss(self.D(torch.cat([x, fake], 1)))
        l1 = L.l1_loss(fake, y)
        g_loss = cfg.lambda_l1 * l1 + cfg.lambda_adv * adv
        out = {"l1": l1.item(), "adv": adv.item(), "d": d_loss.item()}
        if cfg.lambda_gdl:
            gdl = L.gradient_difference_loss(fake, y)
            g_loss = g_loss + cfg.lambda_gdl * gdl
            out["gdl"] = gdl.item()
        g_loss.backward()
        self.opts["G"].step()
        out["g"] = g_loss.item()
        return out

    def _unpaired_step(self) -> dict:
        cfg = self.cfg
        a = torch.from_numpy(self.sampler_a.batch(cfg.batch)[0]).to(self.device)
        b = torch.from_numpy(self.sampler_b.batch(cfg.batch)[0]).to(self.device)
        dlp, clp = self.disc_low_pass, self.cycle_low_pass  # identity unless --disc-blur / --cycle-blur
        self.opts["G"].zero_grad()
        fake_b, fake_a = self.G(a), self.F(b)
        adv = L.lsgan_generator_loss(self.DB(dlp(fake_b))) + L.lsgan_generator_loss(self.DA(dlp(fake_a)))
        cyc = L.cycle_loss(clp(self.F(fake_b)), clp(a), clp(self.G(fake_a)), clp(b))
        g_loss = cfg.lambda_adv * adv + cfg.lambda_cycle * cyc
        idt = torch.zeros((), device=self.device)
        if cfg.lambda_identity:
            # identity (Zhu et al.'s colour-preservation term) pulls G towards copying its input,
            # the worst answer for an inverted contrast such as T1 -> T2; skipped when its weight is 0
            idt = L.identity_loss(self.G(b), b) + L.identity_loss(self.F(a), a)
            g_loss = g_loss + cfg.lambda_identity * idt
        g_loss.backward()
        self.opts["G"].step()
        self.opts["D"].zero_grad()
        old_b, old_a = self.pool_b.query(fake_b), self.pool_a.query(fake_a)  # detached
        d_loss = (L.lsgan_discriminator_loss(self.DB(dlp(b)), self.DB(dlp(old_b)))
                  + L.lsgan_discriminator_loss(self.DA(dlp(a)), self.DA(dlp(old_a))))
        d_loss.backward()
        self.opts["D"].step()
        return {"g": g_loss.item(), "cycle": cyc.item(), "identity": idt.item(), "adv": adv.item(),
                "d": d_loss.item()}

    def lr_at(self, epoch: int) -> float:
        """pix2pix/CycleGAN schedule: constant, then linear to 0 from ``lr_decay_start`` of the epochs."""
        cfg = self.cfg
        start = int(round(cfg.lr_decay_start * cfg.epochs))
        if epoch < start or start >= cfg.epochs:
            return cfg.lr
        return cfg.lr * (cfg.epochs - epoch) / (cfg.epochs - start + 1)

    def train_step(self) -> dict:
        """One optimisation step (generator(s) and discriminator(s)); returns the losses."""
        out = self._unpaired_step() if self.cfg.mode == "unpaired" else self._paired_step()
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        self.step += 1
        return out

    # ---- checkpoints

    def save_checkpoint(self, folder: str | Path) -> None:
        meta = {"step": self.step, "epoch": self.epoch, "history": self.history, "config": asdict(self.cfg),
                "rng.numpy": self.rng.bit_generator.state}
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
        for key in ("mode", "inputs", "output", "architecture", "arch_args", "context", "seed", "disc_base",
                    "disc_layers"):
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
        if meta.get("best"):
            state = {k[len("best."):]: v for k, v in meta["extra_tensors"].items() if k.startswith("best.")}
            self.best = {**meta["best"], "state": state}
        self.rng.bit_generator.state = meta["rng.numpy"]

    # ---- fit

    def fit(self, checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
            stop_after: int | None = None) -> list[dict]:
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
        for self.epoch in range(self.epoch, last):
            t0 = time.perf_counter()
            for opt in self.opts.values():
                for group in opt.param_groups:
                    group["lr"] = self.lr_at(self.epoch)
            sums: dict[str, float] = {}
            bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not progress, file=sys.stderr)
            for _ in bar:
                losses = self.train_step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})
            row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.lr_at(self.epoch),
                   **{k: v / cfg.steps_per_epoch for k, v in sums.items()}}
            if self.val_subjects:
                val = validate(self.generator, self.val_subjects, cfg.inputs, cfg.output, cfg.context)
                row.update({f"val_{k}": v for k, v in val.items()})
            row["seconds"] = round(time.perf_counter() - t0, 2)
            self.history.append(row)
            self._remember_if_best(row)
            self.log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if ckpt is not None:
                self.epoch += 1  # saved state = "epochs completed"
                self.save_checkpoint(ckpt)
                self.epoch -= 1
        self.epoch = last
        return self.history

    # ---- export

    def card(self, command: str | None = None) -> dict:
        """The bundle card for the trained generator (metrics are added by :func:`export_bundle`)."""
        cfg = self.cfg
        task = cfg.task or {"mcsr": "mcsr", "unpaired": "cms"}.get(cfg.mode, "cms")
        if cfg.data.startswith("phantom:"):
            seeds = parse_seeds(cfg.data[len("phantom:"):])
            data = (f"synthetic brain phantom (napari_neurosynth.phantom), seeds {cfg.data[len('phantom:'):]} "
                    f"({len(seeds)} subjects), resolution {', '.join(f'{r:g}' for r in cfg.resolution)} mm, "
                    "with lesions (tumour, oedema, T1-isointense plaques)")
        else:
            data = f"{cfg.data} ({len(self.train_subjects)} subjects)"
        recipe = {
            "mode": cfg.mode,
            "losses": ({"adversarial": "LSGAN, PatchGAN per domain", "lambda_adv": cfg.lambda_adv,
                        "cycle": "L1", "lambda_cycle": cfg.lambda_cycle,
                        "identity": "L1", "lambda_identity": cfg.lambda_identity,
                        "disc_blur_px": cfg.disc_blur, "cycle_blur_px": cfg.cycle_blur,
                        "image_pool": cfg.pool_size}
                       if cfg.mode == "unpaired" else
                       {"pixel": "L1", "lambda_l1": cfg.lambda_l1, "adversarial": "LSGAN, conditional PatchGAN",
                        "lambda_adv": cfg.lambda_adv, "lambda_gdl": cfg.lambda_gdl}),
            "discriminator": {"name": "patchgan", "base": cfg.disc_base, "n_layers": cfg.disc_layers},
            "optimizer": (f"Adam lr {cfg.lr:g} betas ({cfg.beta1:g}, 0.999), constant for the first "
                          f"{cfg.lr_decay_start:g} of the epochs, then linear decay towards 0"),
            "epochs": cfg.epochs, "steps_per_epoch": cfg.steps_per_epoch, "steps": self.step,
            "batch": cfg.batch, "patch": cfg.patch, "seed": cfg.seed,
            "weights": (f"exponential moving average of the generator's weights (decay {cfg.ema:g})"
                        if cfg.ema else "the generator's weights")
                       + (f", from epoch {self.best['epoch']} of {len(self.history)} (best validation PSNR, "
                          f"{self.best['val_psnr']:.2f} dB)" if cfg.keep_best and self.best else ", after the last step"),
            "data_spec": cfg.data, "resolution": list(cfg.resolution),
            "validation": cfg.val_data or ("phantom:900" if cfg.data.startswith("phantom:") else None),
            "device": str(self.device) + ("" if self.device.type == "cpu" else " (not bit-reproducible)"),
        }
        card = {
            "name": cfg.name, "version": "1.0", "task": task,
            "inputs": list(cfg.inputs), "output": cfg.output,
            "architecture": dict(self.generator.architecture),
            "normalization": dict(cfg.normalization),
            "slicing": {"plane": cfg.plane, "context": cfg.context},
            "training": {"data": data, "command": command or "", "recipe": recipe,
                         "history": self.history[-1:] if self.history else []},
            "license": LICENSE,
        }
        if cfg.data.startswith("phantom:"):
            card["trained_on"] = "phantom"
            card["training"]["phantom_only"] = True
        return card


def export_bundle(trainer: Trainer, folder: str | Path, command: str | None = None,
                  heldout: str | None = None, heldout_resolution: float = 2.0, log=None) -> Path:
    """Write the trained generator as a bundle, with held-out metrics and baselines in the card.

    ``heldout`` is a phantom seed specification (``"1000-1002"``); the metrics
    come from :func:`evaluate_bundle`, i.e. from the real inference engine.
    """
    from .bundle import load_model, save_bundle

    card = trainer.card(command)
    network = trainer.export_network()
    folder = Path(folder)
    save_bundle(network, card, folder)
    if heldout:
        seeds = parse_seeds(heldout)
        (log or trainer.log)(f"held-out evaluation on phantom seeds {seeds} at {heldout_resolution:g} mm ...")
        lut = fit_lut(trainer.train_subjects, trainer.cfg.inputs, trainer.cfg.output)
        table = evaluate_bundle(load_model(folder), seeds, heldout_resolution, lut=lut)
        card["metrics"] = table
        save_bundle(network, card, folder)
    return folder


# --------------------------------------------------------------------------- held-out evaluation


def fit_lut(prepared: Sequence[PreparedSubject], inputs: Sequence[str], output: str):
    """The :class:`~napari_neurosynth.baselines.IntensityLUT` baseline fitted on training subjects (brain voxels)."""
    from .baselines import IntensityLUT

    return IntensityLUT().fit(
        [([s.arrays[m] for m in inputs], s.arrays[output]) for s in prepared], [s.mask for s in prepared]
    )


METRIC_KEYS = ("psnr", "ssim", "mae", "nmse")


def _region_row(r: dict) -> dict:
    row = {f"{k}_brain": r[f"{k}_brain"] for k in METRIC_KEYS}
    if "psnr_lesion" in r:
        row.update({f"{k}_lesion": r[f"{k}_lesion"] for k in METRIC_KEYS})
    return row


def evaluate_bundle(model, seeds: Sequence[int], resolution: float = 2.0, lut=None,
                    train_data: str | None = None, train_resolution=None, progress=None) -> dict:
    """Held-out metrics of a bundle and both baselines on phantom subjects ``seeds``.

    The model runs through the real engine (:func:`napari_neurosynth.inference.synthesize`)
    on each phantom's acquired inputs; the acquired target is normalised the same
    way the engine normalises (``intensity_scale`` with the card's spec); metrics
    (:func:`napari_neurosynth.metrics.evaluate`) are computed inside the brain mask
    and inside the lesion mask and averaged over subjects.

    Parameters
    ----------
    model : Model or str
        A loaded bundle or its name/path.
    seeds : sequence of int
        Phantom seeds (must not be training seeds).
    resolution : float
        Phantom voxel size in mm.
    lut : IntensityLUT, optional
        The intensity-mapping baseline; fitted on the card's training data when omitted
        (``train_data``/``train_resolution`` override what the card says).

    Returns
    -------
    dict
        ``held_out`` (model), ``baselines`` (``input_standardised``, ``intensity_lut``),
        ``seeds``, ``resolution``, ``region``, ``per_subject``, ``beats_baselines``.
    """
    from .baselines import baseline_input_index, input_standardised
    from .bundle import load_model
    from .inference import synthesize
    from .metrics import evaluate
    from .preprocessing import intensity_scale

    if not hasattr(model, "card"):
        model = load_model(model)
    card = model.card
    inputs, output = list(card["inputs"]), card["output"]
    spec = card.get("normalization")
    if lut is None:
        lut = _lut_from_card(card, train_data, train_resolution)
    rows: dict[str, list[dict]] = {"model": [], "input_standardised": [], "intensity_lut": []}
    per_subject = []
    subjects = load_subjects(f"phantom:{','.join(str(s) for s in seeds)}", inputs + [output], resolution)
    for i, subj in enumerate(subjects):
        vols = [subj.images[m] for m in inputs]
        target = np.asarray(subj.images[output].data, np.float32)
        target = target / intensity_scale(target, spec)
        # the engine gets the acquired volumes on their own grids (t2_lowres included)
        raw_inputs = _raw_phantom_inputs(subj, inputs)
        synth = np.asarray(synthesize(model, raw_inputs, device="cpu"), np.float32)
        norm_inputs = [np.asarray(v.data, np.float32) / intensity_scale(np.asarray(v.data), spec) for v in vols]
        preds = {
            "model": synth,
            "input_standardised": input_standardised(vols[baseline_input_index(inputs, output)].data, spec),
            "intensity_lut": lut.predict(norm_inputs),
        }
        lesion = subj.lesion_mask if subj.lesion_mask is not None and subj.lesion_mask.any() else None
        entry = {"subject": subj.name}
        for key, pred in preds.items():
            r = _region_row(evaluate(pred, target, mask=subj.brain_mask, lesion=lesion, kspace=False))
            rows[key].append(r)
            entry[key] = r
        per_subject.append(entry)
        if progress:
            progress((i + 1) / len(subjects))

    def mean(rs):
        keys = rs[0].keys()
        return {k: round(float(np.mean([r[k] for r in rs if k in r])), 4) for k in keys}

    table = {k: mean(v) for k, v in rows.items()}
    m, b1, b2 = table["model"], table["input_standardised"], table["intensity_lut"]
    beats = all(m["psnr_brain"] > b["psnr_brain"] and m["mae_brain"] < b["mae_brain"] for b in (b1, b2))
    return {
        "held_out": m,
        "baselines": {"input_standardised": b1, "intensity_lut": b2},
        "seeds": [int(s) for s in seeds],
        "resolution_mm": float(resolution),
        "region": "brain mask (and lesion mask, labels > 0) of each held-out phantom; mean over subjects",
        "target_normalization": "acquired target divided by intensity_scale(target, card normalization)",
        "baseline_notes": {
            "input_standardised": f"the input {inputs[baseline_input_index(inputs, output)]!r} after intensity "
                                  "standardisation (same normalisation as the model's inputs)",
            "intensity_lut": ("per-voxel lookup table from normalised input intensit"
                              + ("y" if len(inputs) == 1 else "ies (joint histogram over all inputs)")
                              + " to the mean normalised target, fitted on the training subjects' brain voxels"),
        },
        "beats_baselines": bool(beats),
        "per_subject": per_subject,
    }


def _raw_phantom_inputs(subj, inputs):
    """The acquired input volumes on their own grids (``t2_lowres`` before resampling)."""
    raw = subj.meta.get("raw_images") or {}
    return [raw.get(m, subj.images[m]) for m in inputs]


def _lut_from_card(card: dict, train_data: str | None, train_resolution) -> object:
    recipe = (card.get("training") or {}).get("recipe") or {}
    data = train_data or recipe.get("data_spec")
    res = train_resolution or recipe.get("resolution") or [2.0]
    if not data:
        raise NeurosynthError(
            f"model {card.get('name')!r}: its card does not say which data it was trained on; "
            "pass the training data (e.g. --train-data phantom:0-7) to fit the intensity-LUT baseline"
        )
    inputs, output = list(card["inputs"]), card["output"]
    subs = load_subjects(data, inputs + [output], res)
    prepared = [prepare(s, inputs + [output], card.get("normalization"), card["slicing"].get("plane", "axial"))
                for s in subs]
    return fit_lut(prepared, inputs, output)


def command_line(argv: Sequence[str]) -> str:
    """The exact ``neurosynth train ...`` command line for the card."""
    return "neurosynth " + " ".join(shlex.quote(a) for a in argv)
