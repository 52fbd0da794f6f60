"""``neurosynth train`` (paired / unpaired / mcsr training to a bundle) and ``neurosynth heldout``.

``neurosynth heldout NAME`` recomputes a bundle's held-out table (model vs the
two baselines, inside the brain and lesion masks of phantom subjects whose
seeds were not used in training); it is the documented reproduction command for
the metrics in the shipped cards (docs/models.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NeurosynthError

if TYPE_CHECKING:
    from ..bundle import Model

_ARCH_DEFAULTS = {
    "resnet": "base=16,n_blocks=4",
    "unet": "base=16,depth=3",
    "fusion": "base=16,n_blocks=2",
    "mcsr": "base=16,n_blocks=4",
    "fgdl": "base=16,n_blocks=2",
}


def _arch_args(text: str) -> dict[str, int | str | bool]:
    """Parse ``--arch-args``: comma-separated ``key=value``, integers and true/false where they parse.

    Examples
    --------
    >>> _arch_args("base=16, n_blocks=4,fusion=concat,deformable=false")
    {'base': 16, 'n_blocks': 4, 'fusion': 'concat', 'deformable': False}
    >>> _arch_args("base")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: --arch-args: write key=value pairs separated by commas, not 'base'
    """
    out: dict[str, int | str | bool] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise NeurosynthError(f"--arch-args: write key=value pairs separated by commas, not {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
            continue
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = v
    return out


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a generator (paired pix2pix, unpaired CycleGAN, or MCSR) and export a model bundle",
        description=(
            "Train a slice-wise generator on phantom subjects (--data phantom:0-7), a BraTS or IXI folder, "
            "or a CSV manifest (subject,t1,t2,flair,...,mask,lesion). Random patches are drawn from inside "
            "the brain; each epoch ends with validation PSNR/SSIM on held-out subjects and a checkpoint; "
            "the end result is a bundle folder (card.json + weights.safetensors + README.md)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--mode", choices=["paired", "unpaired", "mcsr"], default="paired", help="training recipe")
    p.add_argument("--name", required=True, help="bundle name (the card's name)")
    p.add_argument("-o", "--out", required=True, metavar="FOLDER", help="bundle folder to write")
    p.add_argument("--inputs", nargs="+", default=["t1"], metavar="MOD", help="input modalities in network order")
    p.add_argument("--output", default="t2", metavar="MOD", help="target modality")
    p.add_argument("--data", default="phantom:0-7", help="phantom:SEEDS, a BraTS/IXI folder, or a CSV manifest")
    p.add_argument("--val-data", default=None, help="validation data (default phantom:900 for phantom training)")
    p.add_argument(
        "--resolution",
        nargs="+",
        default=["2"],
        metavar="MM",
        help="phantom voxel size(s) in mm, cycled over the seeds: 2, or 1x1x3 for anisotropic voxels",
    )
    p.add_argument(
        "--randomize",
        action="store_true",
        help="domain randomisation of the phantom subjects: whole head or skull-stripped, 1.5 or 3 T, "
        "default or random TR/TE/TI, noise, bias, field-of-view crops (seeded per subject)",
    )
    p.add_argument("--flips", action="store_true", help="mirror training patches at random (both in-plane axes)")
    p.add_argument(
        "--target-misalignment",
        choices=["low", "mid", "high", "mixed"],
        default=None,
        help="phantom data: the T2 label and t2_lowres moved against T1 (rigid + elastic; see docs/phantom.md); "
        "mixed cycles the three over the seeds; validation (at mid for mixed) uses the aligned T2",
    )
    p.add_argument(
        "--lowres-mode",
        choices=["slab", "kspace"],
        default="slab",
        help="phantom data: t2_lowres by thick slices or by in-plane k-space centre cropping",
    )
    fg = p.add_argument_group("FGDL (--mode mcsr --arch fgdl)")
    fg.add_argument("--no-label-correction", action="store_true", help="ablation: no registration network, raw labels")
    fg.add_argument("--lambda-smooth", type=float, default=10.0, help="smoothness weight of the registration flow")
    fg.add_argument("--lambda-ssim", type=float, default=0.0, help="weight of the SSIM loss (MONAI SSIMLoss)")
    fg.add_argument("--lambda-diff", type=float, default=0.0, help="weight of the difference-map supervision")
    fg.add_argument(
        "--disc",
        choices=["projection", "patchgan"],
        default="projection",
        help="discriminator: FGDL's difference projection, or the plain conditional PatchGAN (ablation)",
    )
    fg.add_argument(
        "--stage1-fraction", type=float, default=0.4, help="share of the epochs for stage 1 (CMS + label correction)"
    )
    p.add_argument(
        "--normalization",
        choices=["central_median", "percentile"],
        default="central_median",
        help="input intensity normalisation (central_median: the same for whole-head and "
        "skull-stripped images; percentile: the 99.5th percentile of the foreground)",
    )
    p.add_argument(
        "--arch",
        default=None,
        choices=sorted(_ARCH_DEFAULTS),
        help="generator architecture (default: resnet; fusion for several inputs in paired mode; mcsr for --mode mcsr)",
    )
    p.add_argument(
        "--arch-args", default=None, metavar="K=V,...", help="architecture arguments, e.g. base=16,n_blocks=4"
    )
    p.add_argument(
        "--context", type=int, default=None, help="neighbour slices each side (2.5-D); default 1, 0 for unpaired"
    )
    p.add_argument(
        "--dims",
        type=int,
        choices=[2, 3],
        default=2,
        help="2: slice models (2.5-D with --context); 3: a MONAI BasicUNet on --patch^3 cubes, run with "
        "sliding-window inference (paired mode; --arch-args base=8 or BasicUNet's own arguments)",
    )
    p.add_argument("--patch", type=int, default=64, help="patch edge in pixels")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="steps per epoch")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument(
        "--lr-decay-start",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="fraction of the epochs after which the learning rate decays linearly to 0 (1 = no decay)",
    )
    p.add_argument("--lambda-l1", type=float, default=100.0)
    p.add_argument("--lambda-adv", type=float, default=1.0)
    p.add_argument("--lambda-gdl", type=float, default=0.0)
    p.add_argument("--lambda-cycle", type=float, default=10.0)
    # Identity (Zhu et al.'s colour-preservation term) makes a contrast-inverting
    # generator (T1 -> T2) copy its input; off unless asked for.
    p.add_argument(
        "--lambda-identity",
        type=float,
        default=0.0,
        help="unpaired identity-loss weight (default 0: it pulls T1->T2 towards copying T1)",
    )
    p.add_argument(
        "--lambda-structure",
        type=float,
        default=0.0,
        help="unpaired: weight of a contrast-invariant structure loss between each generator's input "
        "and output (default 0: off)",
    )
    p.add_argument(
        "--structure",
        choices=("mind", "gc"),
        default="mind",
        help="unpaired structure loss: MIND descriptors (Heinrich et al. 2012) or gradient correlation",
    )
    p.add_argument(
        "--lambda-intensity",
        type=float,
        default=0.0,
        help="unpaired: weight of a 1-D Wasserstein term between synthesized and real in-brain intensities "
        "(default 0: off)",
    )
    p.add_argument(
        "--disc-blur",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="unpaired: Gaussian low-pass (sigma in pixels) of real and synthesized images before the "
        "discriminators, so they judge contrast and anatomy rather than noise texture",
    )
    p.add_argument(
        "--cycle-blur",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="unpaired: compare the cycle reconstruction with its input after a Gaussian low-pass, so "
        "the generators need not hide the input's noise in their output",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=0,
        metavar="N",
        help="unpaired: show the discriminators a history of N earlier synthesized images (CycleGAN uses 50)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate and export an exponential moving average of the generator's weights (e.g. 0.999)",
    )
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="export the generator from the epoch with the best validation PSNR, not the last one",
    )
    p.add_argument("--disc-base", type=int, default=16, help="PatchGAN base channels")
    p.add_argument(
        "--disc-layers",
        type=int,
        default=3,
        help="PatchGAN strided layers (3: 70-pixel receptive field; 4: 142; 5: 286)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="write a checkpoint there after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument(
        "--heldout", default=None, metavar="SEEDS", help="phantom seeds for the card's held-out table (e.g. 1000-1002)"
    )
    p.add_argument("--heldout-resolution", type=float, default=2.0, metavar="MM")
    p.add_argument(
        "--grid",
        action="store_true",
        help="also fill the card's evaluation grid (head x voxel size x field/protocol) on the --heldout seeds",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps; only CPU runs are bit-reproducible. "
        "Under torchrun each process takes cuda:LOCAL_RANK (docs/scale.md, 'Training on several GPUs')",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="training precision (default fp32): bf16 or fp16 autocast, fp16 with gradient scaling; fp16 needs a GPU",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: bf16 on GPUs that have it, else fp16; on the CPU it falls back to fp32",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace an existing bundle in the -o folder")
    p.set_defaults(func=run)

    h = subparsers.add_parser(
        "heldout",
        help="recompute a bundle's held-out metrics vs the two baselines on phantom subjects",
        description=(
            "Run the model through the inference engine on phantom subjects whose seeds were not used in "
            "training, and print PSNR/SSIM/MAE/NMSE inside the brain and lesion masks for the model, the input "
            "after intensity standardisation, and a per-voxel intensity lookup table fitted on the training data. "
            "Seeds and resolution default to those in the card."
        ),
    )
    h.add_argument(
        "model",
        metavar="NAME",
        nargs="+",
        help="bundle name(s) or folder(s); several share the grid's phantoms (their first input must agree)",
    )
    h.add_argument("--seeds", default=None, help="phantom seeds, e.g. 1000-1002 (default: the card's)")
    h.add_argument(
        "--resolution", type=float, default=None, metavar="MM", help="phantom voxel size (default: the card's)"
    )
    h.add_argument("--train-data", default=None, help="training data for the LUT baseline (default: the card's)")
    h.add_argument(
        "--write-card",
        action="store_true",
        help="store the recomputed grid in each bundle's card (metrics.grid) and README",
    )
    h.add_argument(
        "--no-grid", action="store_true", help="only the single table at --resolution, not the card's evaluation grid"
    )
    h.add_argument(
        "--heads",
        nargs="+",
        default=None,
        metavar="HEAD",
        help="grid heads to run (whole_head skull_stripped; default all)",
    )
    h.add_argument("--resolutions", nargs="+", default=None, metavar="RES", help="grid voxel sizes (1mm 2mm 1x1x3mm)")
    h.add_argument("--fields", nargs="+", default=None, metavar="FIELD", help="grid fields (3T 1.5T random_protocol)")
    h.add_argument("--json", action="store_true", help="print JSON")
    h.add_argument(
        "--misalignment",
        nargs="+",
        default=None,
        choices=["none", "low", "mid", "high"],
        metavar="SEVERITY",
        help="MCSR models under target misalignment: one table per severity (none low mid high) against the "
        "aligned T2, with the centroid offsets of ventricles and lesions; several models share the phantoms",
    )
    h.add_argument(
        "--lowres-mode", choices=["slab", "kspace"], default="slab", help="with --misalignment: how t2_lowres is made"
    )
    h.add_argument(
        "--unpaired-rule",
        action="store_true",
        help="judge an unpaired model: against histogram matching and a quantile map fitted on unpaired "
        "halves, against the --paired model, and for invented lesions (whole head and skull-stripped, 2 mm, 3 T "
        "unless --heads/--resolutions/--fields say otherwise)",
    )
    h.add_argument(
        "--paired", default="t1_to_t2", metavar="NAME", help="with --unpaired-rule: the paired bundle to compare with"
    )
    h.set_defaults(func=run_heldout)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import parse_resolution
    from ..preprocessing import DEFAULT_NORMALIZATION
    from ..training import TrainConfig, Trainer, command_line, export_bundle
    from ..training.distributed import setup_distributed

    out = Path(args.out).expanduser()
    if (out / "card.json").exists() and not args.force:
        # refused before training, not after hours of it
        raise NeurosynthError(f"{out} already holds a model bundle; pass --force to replace it, or choose another -o")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp and args.precision:
        raise NeurosynthError("give --amp or --precision, not both")
    mode = args.mode
    arch = args.arch or ("mcsr" if mode == "mcsr" else "fusion" if len(args.inputs) > 1 else "resnet")
    context = args.context if args.context is not None else (0 if mode == "unpaired" else 1)
    arch_text = args.arch_args if args.arch_args is not None else _ARCH_DEFAULTS[arch]
    if args.dims == 3:
        if args.arch is not None:
            raise NeurosynthError("--dims 3 trains a MONAI BasicUNet; leave out --arch (size it with --arch-args)")
        # the 3-D generator is MONAI's BasicUNet (training/patch3d.py), no 2.5-D context
        arch, context = "BasicUNet", args.context if args.context is not None else 0
        arch_text = args.arch_args if args.arch_args is not None else "base=8"
    cfg = TrainConfig(
        mode=mode,
        name=args.name,
        inputs=list(args.inputs),
        output=args.output,
        data=args.data,
        val_data=args.val_data,
        resolution=[parse_resolution(r) for r in args.resolution],
        architecture=arch,
        arch_args=_arch_args(arch_text),
        context=context,
        patch=args.patch,
        batch=args.batch,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        lr=args.lr,
        lr_decay_start=args.lr_decay_start,
        lambda_l1=args.lambda_l1,
        lambda_adv=args.lambda_adv,
        lambda_gdl=args.lambda_gdl,
        lambda_cycle=args.lambda_cycle,
        lambda_identity=args.lambda_identity,
        lambda_structure=args.lambda_structure,
        structure=args.structure,
        lambda_intensity=args.lambda_intensity,
        disc_blur=args.disc_blur,
        cycle_blur=args.cycle_blur,
        pool_size=args.pool_size,
        ema=args.ema,
        keep_best=args.keep_best,
        disc_base=args.disc_base,
        disc_layers=args.disc_layers,
        seed=args.seed,
        device=args.device,
        randomize=args.randomize,
        flips=args.flips,
        target_misalignment=args.target_misalignment,
        lowres_mode=args.lowres_mode,
        label_correction=not args.no_label_correction,
        lambda_smooth=args.lambda_smooth,
        lambda_ssim=args.lambda_ssim,
        lambda_diff=args.lambda_diff,
        disc=args.disc,
        stage1_fraction=args.stage1_fraction,
        dims=args.dims,
        precision="auto" if args.amp else (args.precision or "fp32"),
        normalization=(
            dict(DEFAULT_NORMALIZATION)
            if args.normalization == "central_median"
            else {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}
        ),
    )
    cfg.check()  # bad options fail before any process group is set up
    # under torchrun: join the other processes (the batch is checked before anything starts)
    dist = setup_distributed(args.device, args.batch)
    try:
        trainer = Trainer(cfg, dist=dist)
        trainer.fit(args.checkpoint_dir, resume=args.resume, progress=not args.no_progress)
        dist.barrier()  # every rank has finished its last step and rank 0 its last checkpoint
    finally:
        dist.close()
    if not dist.is_main:
        return 0  # rank 0 alone exports (and evaluates) the bundle, after the group is gone
    argv = sys.argv[1:] if sys.argv and sys.argv[0].endswith("neurosynth") else ["train", *_reconstruct(args)]
    folder = export_bundle(
        trainer,
        args.out,
        command=command_line([a for a in argv if a not in ("--resume", "--force")]),
        heldout=args.heldout,
        heldout_resolution=args.heldout_resolution,
        grid=args.grid,
    )
    print(f"wrote bundle {folder}")
    card = json.loads((folder / "card.json").read_text())
    if "metrics" in card:
        print(format_heldout(card["metrics"]))
        if "grid" in card["metrics"]:
            print(format_grid(card["metrics"]["grid"]))
    return 0


def _reconstruct(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces ``args`` (when not called through the console script)."""
    out = []
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "steps":
            flag = "--steps"
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def format_heldout(metrics: dict) -> str:
    """The held-out table as text: one row per predictor, brain (and lesion) metrics."""
    rows = {"model": metrics["held_out"], **metrics["baselines"]}
    keys = [
        k
        for k in ("psnr_brain", "ssim_brain", "mae_brain", "nmse_brain", "psnr_lesion", "ssim_lesion", "mae_lesion")
        if k in metrics["held_out"]
    ]
    lines = [
        f"held-out phantom seeds {metrics['seeds']} at {metrics['resolution_mm']:g} mm (mean over subjects)",
        f"{'predictor':<20}" + "".join(f"{k:>13}" for k in keys),
    ]
    for name, r in rows.items():
        lines.append(f"{name:<20}" + "".join(f"{r[k]:>13.4f}" for k in keys))
    lines.append(
        "model beats both baselines (PSNR and MAE in the brain): " + ("yes" if metrics.get("beats_baselines") else "NO")
    )
    return "\n".join(lines)


def format_grid(grid: dict) -> str:
    """The evaluation grid as text: one row per cell (brain PSNR / SSIM / MAE of model, LUT, input),
    the retained lesion contrast per kind, and the shipping-rule verdict."""
    kinds = sorted({k for c in grid["cells"] for k in (c.get("lesion_contrast") or {})})
    head = (
        f"{'cell':<34}{'PSNR':>7}{'SSIM':>7}{'MAE':>8} |{'LUT PSNR':>9}{'MAE':>8} |{'input':>7}{'MAE':>8} |"
        + "".join(f"{k[:10]:>11}" for k in kinds)
    )
    lines = [f"evaluation grid, held-out phantom seeds {grid['seeds']} (brain mask; retained lesion contrast)", head]
    for c in grid["cells"]:
        m, lut, inp = c["held_out"], c["baselines"]["intensity_lut"], c["baselines"]["input_standardised"]
        lc = c.get("lesion_contrast") or {}
        ret = "".join(
            f"{'' if lc.get(k, {}).get('retained') is None else format(lc[k]['retained'], '.2f'):>11}" for k in kinds
        )
        lines.append(
            f"{c['name']:<34}{m['psnr_brain']:>7.2f}{m['ssim_brain']:>7.3f}{m['mae_brain']:>8.4f} |"
            f"{lut['psnr_brain']:>9.2f}{lut['mae_brain']:>8.4f} |{inp['psnr_brain']:>7.2f}"
            f"{inp['mae_brain']:>8.4f} |{ret}"
        )
    rule = grid.get("rule") or {}
    s = grid.get("summary") or {}
    if s:
        lines.append(
            f"{'mean over the grid':<34}{s['model']['psnr_brain']:>7.2f}{s['model']['ssim_brain']:>7.3f}"
            f"{s['model']['mae_brain']:>8.4f} |{s['intensity_lut']['psnr_brain']:>9.2f}"
            f"{s['intensity_lut']['mae_brain']:>8.4f} |{s['input_standardised']['psnr_brain']:>7.2f}"
            f"{s['input_standardised']['mae_brain']:>8.4f} |"
        )
    if rule:
        lines.append(
            f"gain over the LUT {rule['mean_gain_over_lut_db']:+.2f} dB; largest skull-stripped gap "
            f"{rule['max_skull_strip_gap_db']:.2f} dB; lesion kinds held to the rule: "
            f"{', '.join(rule['required_lesion_kinds']) or 'none'}"
            + (
                f" (not synthesizable from the inputs: {', '.join(rule['not_required'])})"
                if rule.get("not_required")
                else ""
            )
        )
        lines.append("shipping rule: " + ("PASSED" if rule["passed"] else "FAILED: " + "; ".join(rule["failures"])))
    return "\n".join(lines)


def run_heldout(args: argparse.Namespace) -> int:
    from ..bundle import load_model
    from ..data import parse_seeds
    from ..training import evaluate_bundle

    if getattr(args, "unpaired_rule", False):
        return _run_unpaired_rule(args)
    if getattr(args, "misalignment", None):
        return _run_misalignment(args)
    models = [load_model(name) for name in args.model]
    model = models[0]
    card_metrics = model.card.get("metrics") or {}
    seeds = parse_seeds(args.seeds) if args.seeds else card_metrics.get("seeds")
    if not seeds:
        raise NeurosynthError(f"model {model.name!r} has no held-out seeds in its card; pass --seeds, e.g. 1000-1002")
    resolution = args.resolution or card_metrics.get("resolution_mm") or 2.0
    want_grid = not args.no_grid and (
        card_metrics.get("grid") or args.heads or args.resolutions or args.fields or args.write_card or len(models) > 1
    )
    if want_grid:
        from ..training import evaluate_grids, grid_cells

        grid_seeds = seeds if args.seeds else ((card_metrics.get("grid") or {}).get("seeds") or seeds)
        cells = grid_cells(args.heads, args.resolutions, args.fields)
        grids = evaluate_grids(
            models,
            grid_seeds,
            cells=cells,
            train_data=args.train_data,
            progress=lambda name: print(f"  {name} ...", file=sys.stderr, flush=True),
        )
        for m, grid in zip(models, grids):
            if args.json:
                print(json.dumps({"model": m.name, **grid}, indent=2))
            else:
                print(f"{m.name}: {' + '.join(m.inputs)} -> {m.output}")
                print(format_grid(grid))
            if args.write_card:
                _write_grid(m, grid)
        return 0
    if len(models) > 1:
        raise NeurosynthError("--no-grid takes one model")
    result = evaluate_bundle(model, seeds, resolution, train_data=args.train_data)
    if args.json:
        print(json.dumps(dict(result), indent=2))
    else:
        print(f"{model.name}: {' + '.join(model.inputs)} -> {model.output}")
        print(format_heldout(result))
    return 0


def _run_misalignment(args: argparse.Namespace) -> int:
    """``neurosynth heldout A B ... --misalignment low mid high``: :mod:`~napari_neurosynth.training.misalignment`."""
    from ..bundle import load_model
    from ..data import parse_seeds
    from ..training.misalignment import evaluate_misalignment, format_misalignment

    models = [load_model(name) for name in args.model]
    result = evaluate_misalignment(
        models,
        parse_seeds(args.seeds or "1000-1002"),
        args.misalignment,
        resolution=args.resolution or 2.0,
        lowres_mode=args.lowres_mode,
        train_data=args.train_data,
        progress=lambda sev: print(f"  severity {sev} ...", file=sys.stderr, flush=True),
    )
    print(json.dumps(result, indent=2) if args.json else format_misalignment(result))
    return 0


def _run_unpaired_rule(args: argparse.Namespace) -> int:
    """``neurosynth heldout NAME --unpaired-rule``: :func:`~napari_neurosynth.training.unpaired.evaluate_unpaired`."""
    from ..bundle import load_model
    from ..data import parse_seeds
    from ..training.heldout import grid_cells
    from ..training.unpaired import evaluate_unpaired, format_unpaired

    if len(args.model) != 1:
        raise NeurosynthError("--unpaired-rule judges one unpaired model at a time")
    model = load_model(args.model[0])
    seeds = parse_seeds(args.seeds or "1000-1002")
    cells = grid_cells(
        args.heads or ["whole_head", "skull_stripped"], args.resolutions or ["2mm"], args.fields or ["3T"]
    )
    report = evaluate_unpaired(
        model,
        load_model(args.paired),
        seeds,
        cells=cells,
        train_data=args.train_data,
        progress=lambda name: print(f"  {name} ...", file=sys.stderr, flush=True),
    )
    print(json.dumps(report, indent=2) if args.json else format_unpaired(report))
    return 0


def _write_grid(model: Model, grid: dict[str, Any]) -> None:
    """Store ``grid`` in the bundle's card (rewritten with its README by :func:`save_bundle`)."""
    from ..bundle import save_bundle

    if model.path is None:
        raise NeurosynthError(f"model {model.name!r} has no folder to write its card into")
    card: dict[str, Any] = dict(model.card)
    card["metrics"] = {**(card.get("metrics") or {}), "grid": grid}
    save_bundle(model.network, card, model.path)
    print(f"wrote the evaluation grid into {model.path / 'card.json'}", file=sys.stderr)
