"""Bundle export: the card a trained generator gets (data, recipe, metrics) and the bundle folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import parse_seeds
from .config import LICENSE
from .heldout import evaluate_bundle, evaluate_grid, fit_lut
from .loop import Trainer


def training_card(trainer: Trainer, command: str | None = None) -> dict:
    """The bundle card for the trained generator (metrics are added by :func:`export_bundle`)."""
    cfg = trainer.cfg
    task = cfg.task or {"mcsr": "mcsr", "unpaired": "cms"}.get(cfg.mode, "cms")
    if cfg.data.startswith("phantom:"):
        seeds = parse_seeds(cfg.data[len("phantom:") :])
        data = (
            f"synthetic brain phantom (napari_neurosynth.phantom), seeds {cfg.data[len('phantom:') :]} "
            f"({len(seeds)} subjects), voxel sizes {', '.join(_res(r) for r in cfg.resolution)} mm (cycled), "
            "with lesions (tumour core, oedema, T1-isointense plaques, T1 black holes, T1-bright haemorrhage)"
            + (
                "; domain randomisation per subject: whole head or skull-stripped, 1.5 or 3 T, default or "
                "randomised TR/TE/TI, noise, bias and field-of-view crops"
                if cfg.randomize
                else ""
            )
            + ("; random patch flips" if cfg.flips else "")
        )
    else:
        data = f"{cfg.data} ({len(trainer.train_subjects)} subjects)"
    recipe = {
        "mode": cfg.mode,
        "losses": (
            {
                "adversarial": "LSGAN, PatchGAN per domain",
                "lambda_adv": cfg.lambda_adv,
                "cycle": "L1",
                "lambda_cycle": cfg.lambda_cycle,
                "identity": "L1",
                "lambda_identity": cfg.lambda_identity,
                "disc_blur_px": cfg.disc_blur,
                "cycle_blur_px": cfg.cycle_blur,
                "image_pool": cfg.pool_size,
                # input-output structure term, only when on (cards of runs without it are unchanged)
                **(
                    {"structure": cfg.structure, "lambda_structure": cfg.lambda_structure}
                    if cfg.lambda_structure
                    else {}
                ),
                **(
                    {"intensity": "1-D Wasserstein, brain voxels", "lambda_intensity": cfg.lambda_intensity}
                    if cfg.lambda_intensity
                    else {}
                ),
            }
            if cfg.mode == "unpaired"
            else {
                "pixel": "L1",
                "lambda_l1": cfg.lambda_l1,
                "adversarial": "LSGAN, conditional PatchGAN",
                "lambda_adv": cfg.lambda_adv,
                "lambda_gdl": cfg.lambda_gdl,
            }
        ),
        "discriminator": {"name": "patchgan", "base": cfg.disc_base, "n_layers": cfg.disc_layers},
        "optimizer": (
            f"Adam lr {cfg.lr:g} betas ({cfg.beta1:g}, 0.999), constant for the first "
            f"{cfg.lr_decay_start:g} of the epochs, then linear decay towards 0"
        ),
        "epochs": cfg.epochs,
        "steps_per_epoch": cfg.steps_per_epoch,
        "steps": trainer.step,
        "batch": cfg.batch,
        "patch": cfg.patch,
        "seed": cfg.seed,
        "weights": (
            f"exponential moving average of the generator's weights (decay {cfg.ema:g})"
            if cfg.ema
            else "the generator's weights"
        )
        + (
            f", from epoch {trainer.best['epoch']} of {len(trainer.history)} (best validation PSNR, "
            f"{trainer.best['val_psnr']:.2f} dB)"
            if cfg.keep_best and trainer.best
            else ", after the last step"
        ),
        "data_spec": cfg.data,
        "resolution": [list(r) if isinstance(r, tuple) else r for r in cfg.resolution],
        "randomize": bool(cfg.randomize),
        "flips": bool(cfg.flips),
        "dims": cfg.dims,
        "validation": cfg.val_data or ("phantom:900" if cfg.data.startswith("phantom:") else None),
        "device": str(trainer.device) + ("" if trainer.device.type == "cpu" else " (not bit-reproducible)"),
        "precision": getattr(trainer, "precision", "fp32"),
        "processes": trainer.dist.world_size,  # --batch is the global batch, shared among them
    }
    if cfg.architecture == "fgdl":
        from .fgdl import recipe as fgdl_recipe

        recipe["fgdl"] = fgdl_recipe(cfg)
    if cfg.target_misalignment or cfg.lowres_mode != "slab":
        recipe["phantom_options"] = {"target_misalignment": cfg.target_misalignment, "lowres_mode": cfg.lowres_mode}
    card: dict[str, Any] = {
        "name": cfg.name,
        "version": "1.0",
        "task": task,
        "inputs": list(cfg.inputs),
        "output": cfg.output,
        "architecture": dict(getattr(trainer.generator, "architecture", {})),
        "normalization": dict(cfg.normalization),
        "slicing": _slicing(cfg),
        "training": {
            "data": data,
            "command": command or "",
            "recipe": recipe,
            "history": trainer.history[-1:] if trainer.history else [],
        },
        "license": LICENSE,
    }
    if cfg.data.startswith("phantom:"):
        card["trained_on"] = "phantom"
        card["training"]["phantom_only"] = True
    return card


def _slicing(cfg) -> dict[str, Any]:
    """The card's ``slicing``: plane and 2.5-D context, or a 3-D model's patch size and overlap."""
    if cfg.dims == 3:
        from .patch3d import slicing_card

        return slicing_card(cfg.patch, cfg.plane)
    return {"plane": cfg.plane, "context": cfg.context}


def _res(r) -> str:
    return "x".join(f"{v:g}" for v in r) if isinstance(r, (tuple, list)) else f"{r:g}"


def export_bundle(
    trainer: Trainer,
    folder: str | Path,
    command: str | None = None,
    heldout: str | None = None,
    heldout_resolution: float = 2.0,
    log=None,
    grid: bool | list[dict] = False,
) -> Path:
    """Write the trained generator as a bundle, with held-out metrics and baselines in the card.

    ``heldout`` is a phantom seed specification (``"1000-1002"``); the metrics
    come from :func:`evaluate_bundle`, i.e. from the real inference engine. With
    ``grid`` (True for all cells, or a list from :func:`~.heldout.grid_cells`) the
    card also gets the evaluation grid (``metrics.grid``) and its shipping-rule verdict.
    """
    from ..bundle import load_model, save_bundle

    card = training_card(trainer, command)
    network = trainer.export_network()
    folder = Path(folder)
    save_bundle(network, card, folder)
    if heldout:
        seeds = parse_seeds(heldout)
        (log or trainer.log)(f"held-out evaluation on phantom seeds {seeds} at {heldout_resolution:g} mm ...")
        lut = fit_lut(trainer.train_subjects, trainer.cfg.inputs, trainer.cfg.output)
        table = evaluate_bundle(load_model(folder), seeds, heldout_resolution, lut=lut)
        card["metrics"] = table
        if grid:
            say = log or trainer.log
            cells = None if grid is True else list(grid)
            g = evaluate_grid(load_model(folder), seeds, lut=lut, cells=cells, progress=lambda n: say(f"  grid {n}"))
            card["metrics"]["grid"] = g
        save_bundle(network, card, folder)
    return folder
