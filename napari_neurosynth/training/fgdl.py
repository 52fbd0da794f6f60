"""FGDL's training recipe (``--mode mcsr --arch fgdl``): label correction, two stages, difference losses.

The networks are in :mod:`napari_neurosynth.fgdl`. A :class:`~.loop.Trainer` whose
architecture is ``fgdl`` calls :func:`build` once and :func:`step` for every step:

- **Stage 1** (the first ``stage1_fraction`` of the epochs): the CMS base and
  the registration network. The acquired target ``y`` is misaligned with the
  source; the registration network warps it onto the CMS output,
  ``y_c = warp(y, R(cms, y))``. The CMS base learns
  ``lambda_l1 * |cms - y_c| + lambda_ssim * (1 - SSIM)``, the registration
  network ``|y_c - cms| + lambda_smooth * smooth(flow)``.
  No adversarial term here: the CMS base is a plain regression that stage 2
  builds on, and on the CPU the discriminator would double the cost of a step.

Two departures from RegGAN-style joint training, both measured on the
misaligned phantom (validation seed 900): (1) the registration network starts
in the second half of stage 1, once the CMS output looks like a T2 (started at
once, it moved labels by 3.6 pixels on average in the first epoch, where the
true displacement is about 1, to match a still-meaningless output); (2) the two
losses are separate (the CMS loss sees ``y_c`` detached, the registration loss
sees the CMS output detached), so the generator cannot lower its loss by
having the label reshaped towards its own output. With joint training the
corrected labels differed from the raw ones by an L1 of 0.18 (normalised
units) and validation PSNR fell in stage 2 while the training loss fell.
- **Stage 2**: the CMS base and the registration network are frozen (eval mode,
  no gradients) and the SR branch learns the fine-grained difference:
  ``lambda_l1 * |out - y_c| + lambda_ssim * (1 - SSIM) + lambda_diff * sum_k
  |d_k - down_k(y_c - cms)| + lambda_adv * LSGAN``, the discriminator seeing the
  image beside the source and, with ``disc="projection"``, the difference map
  ``image - cms`` projected into its logits.

``label_correction=False`` (ablation) compares with ``y`` itself;
``disc="patchgan"`` (ablation) uses the plain conditional PatchGAN of the other
recipes; the deformable alignment is an architecture argument
(``--arch-args deformable=false``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from ..errors import NeurosynthError
from ..fgdl import DifferenceProjectionDiscriminator, RegistrationNet, flow_smoothness
from ..networks import build_network

if TYPE_CHECKING:
    from .loop import Trainer


def stage_of(trainer: Trainer, epoch: int | None = None) -> int:
    """1 during the first ``stage1_fraction`` of the epochs, then 2.

    Examples
    --------
    >>> class T:  # a stand-in with the two fields this reads
    ...     class cfg: epochs, stage1_fraction = 10, 0.4
    ...     epoch = 0
    >>> [stage_of(T, e) for e in range(10)]
    [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    """
    cfg = trainer.cfg
    e = trainer.epoch if epoch is None else epoch
    return 1 if e < round(cfg.stage1_fraction * cfg.epochs) else 2


def registration_start(trainer: Trainer) -> int:
    """The epoch the registration network starts: halfway through stage 1.

    Examples
    --------
    >>> class T:
    ...     class cfg: epochs, stage1_fraction = 20, 0.3
    >>> registration_start(T)
    3
    """
    return round(trainer.cfg.stage1_fraction * trainer.cfg.epochs) // 2


def build(trainer: Trainer) -> None:
    """The registration network, the discriminator, the sampler and the three optimisers."""
    from ..data import SliceSampler

    cfg = trainer.cfg
    if trainer.dist.enabled:
        raise NeurosynthError("--arch fgdl trains in one process; run it without torchrun")
    if cfg.dims != 2:
        raise NeurosynthError("--arch fgdl is a slice model: use --dims 2")
    per = 2 * cfg.context + 1
    n_src = per * (len(cfg.inputs) - 1)
    betas = (cfg.beta1, 0.999)
    dev = trainer.device
    trainer.D = (
        DifferenceProjectionDiscriminator(n_src + 1, cfg.disc_base, cfg.disc_layers)
        if cfg.disc == "projection"
        else build_network("patchgan", in_channels=n_src + 1, base=cfg.disc_base, n_layers=cfg.disc_layers)
    ).to(dev)
    trainer.sampler = SliceSampler(
        trainer.train_subjects, cfg.inputs, cfg.output, cfg.context, cfg.patch, trainer.rng, flips=cfg.flips
    )
    trainer.nets["D"] = trainer.D
    trainer.opts = {
        "G": torch.optim.Adam(trainer.G.parameters(), cfg.lr, betas),
        "D": torch.optim.Adam(trainer.D.parameters(), cfg.lr, betas),
    }
    if cfg.label_correction:
        trainer.R = RegistrationNet(1, max(8, int(cfg.arch_args.get("base", 16)))).to(dev)
        trainer.nets["R"] = trainer.R
        trainer.opts["R"] = torch.optim.Adam(trainer.R.parameters(), cfg.lr, betas)
    from monai.losses import SSIMLoss

    # normalised T2 spans about 0-2 inside the brain (CSF near 2 after central-median scaling)
    trainer.ssim_loss = SSIMLoss(spatial_dims=2, data_range=2.0, win_size=7)


def _freeze(modules: list[nn.Module], frozen: bool) -> None:
    for m in modules:
        m.train(not frozen)
        for p in m.parameters():
            p.requires_grad_(not frozen)


def _pixel_losses(trainer: Trainer, pred: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, dict]:
    cfg = trainer.cfg
    l1 = L.l1_loss(pred, label)
    loss = cfg.lambda_l1 * l1
    out = {"l1": l1.item()}
    if cfg.lambda_ssim:
        ssim = trainer.ssim_loss(pred, label)
        loss = loss + cfg.lambda_ssim * ssim
        out["ssim_loss"] = ssim.item()
    return loss, out


def _correct(trainer: Trainer, fixed: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The label warped onto ``fixed`` by the registration network (the label itself without correction)."""
    if not trainer.cfg.label_correction:
        return label, None
    corrected, flow = trainer.R(fixed, label)
    return corrected, flow


def step(trainer: Trainer) -> dict:
    """One FGDL step of the current stage; returns the losses."""
    cfg = trainer.cfg
    G = cast(Any, trainer.G)
    xs, ys = trainer.sampler.batch(cfg.batch)[:2]
    x = torch.from_numpy(xs).to(trainer.device)
    y = torch.from_numpy(cast(Any, ys)).to(trainer.device)
    n_src = G.source_channels
    src = x[:, :n_src]
    cms = G.cms_modules()
    if stage_of(trainer) == 1:
        _freeze(cms, False)
        base, _ = G._cms(src)
        label, out = y, cast(dict[str, float], {})
        if cfg.label_correction and trainer.epoch >= registration_start(trainer):
            corrected, flow = trainer.R(base.detach(), y)
            smooth = flow_smoothness(flow)
            r_loss = L.l1_loss(corrected, base.detach()) + cfg.lambda_smooth * smooth
            trainer.opts["R"].zero_grad()
            r_loss.backward()
            trainer.opts["R"].step()
            label = corrected.detach()
            out.update(smooth=smooth.item(), flow_px=flow.detach().abs().mean().item())
        loss, pixel = _pixel_losses(trainer, base, label)
        trainer.opts["G"].zero_grad()
        loss.backward()
        trainer.opts["G"].step()
        out.update(pixel, g=loss.item(), stage=1.0)
        return out
    # stage 2: the CMS base and the label correction are fixed; the SR branch and D learn
    _freeze(cms, True)
    if cfg.label_correction:
        _freeze([trainer.R], True)
    parts = G.forward_parts(x)
    base, fake = parts["base"].detach(), parts["output"]
    with torch.no_grad():
        label, _ = _correct(trainer, base, y)
    D = trainer.D
    projection = cfg.disc == "projection"

    def judge(image: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([src, image], 1)
        return D(pair, image - base) if projection else D(pair)

    trainer.opts["D"].zero_grad()
    d_loss = L.lsgan_discriminator_loss(judge(label), judge(fake.detach()))
    d_loss.backward()
    trainer.opts["D"].step()
    trainer.opts["G"].zero_grad()
    loss, out = _pixel_losses(trainer, fake, label)
    adv = L.lsgan_generator_loss(judge(fake))
    loss = loss + cfg.lambda_adv * adv
    if cfg.lambda_diff:
        target_diff = label - base
        diff_loss = sum(
            (F.l1_loss(d, F.adaptive_avg_pool2d(target_diff, d.shape[-2:])) for d in parts["differences"]),
            torch.zeros((), device=trainer.device),
        )
        loss = loss + cfg.lambda_diff * diff_loss
        out["diff"] = float(diff_loss.item())
    loss.backward()
    trainer.opts["G"].step()
    out.update({"adv": adv.item(), "d": d_loss.item(), "g": loss.item(), "stage": 2.0})
    return out


def recipe(cfg: Any) -> dict:
    """The card's description of the FGDL recipe (what :func:`step` does with ``cfg``)."""
    stage1 = round(cfg.stage1_fraction * cfg.epochs)
    return {
        "schedule": f"stage 1 (CMS base{' and label correction' if cfg.label_correction else ''}): epochs 1-{stage1}; "
        f"stage 2 (SR branch, CMS frozen): epochs {stage1 + 1}-{cfg.epochs}",
        "label_correction": (
            f"registration network (2-D flow at 1/4 resolution, at most 6 px), smoothness weight "
            f"{cfg.lambda_smooth:g}, from epoch {round(cfg.stage1_fraction * cfg.epochs) // 2 + 1}"
            if cfg.label_correction
            else "off (ablation): losses against the misaligned label"
        ),
        "lambda_ssim": cfg.lambda_ssim,
        "lambda_diff": cfg.lambda_diff,
        "discriminator": (
            "difference-projection PatchGAN" if cfg.disc == "projection" else "conditional PatchGAN (ablation)"
        ),
        "target_misalignment": cfg.target_misalignment,
        "lowres_mode": cfg.lowres_mode,
    }
