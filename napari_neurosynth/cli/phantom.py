"""``neurosynth phantom OUT_DIR``: write a seeded multi-contrast brain phantom as NIfTI."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import NeurosynthError

#: Files written, in this order (key of make_phantom -> file name).
FILES = ("t1", "t2", "pd", "flair", "brain_mask", "lesion_mask", "t2_lowres")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "phantom",
        help="write a synthetic multi-contrast brain phantom (T1, T2, PD, FLAIR, masks, low-res T2)",
        description=(
            "Write a seeded MNI152-based brain phantom: t1, t2, pd, flair, brain_mask, lesion_mask "
            "(1 tumour core, 2 oedema, 3 plaque) and t2_lowres (thick axial slices) as .nii.gz, "
            "replacing files of the same names. "
            "A synthetic test object, not a real subject."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="subject seed (default 0); same seed, same images")
    p.add_argument("--resolution", type=float, default=1.0, metavar="MM", help="isotropic voxel size in mm (default 1)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--no-lesions", action="store_true", help="a healthy subject")
    group.add_argument("--lesions", metavar="KINDS", help="comma-separated lesion kinds: tumour,plaque (default: all)")
    p.add_argument("--misalignment", type=float, default=0.0, metavar="MM",
                   help="max rigid motion (mm and degrees) of T2/PD/FLAIR relative to T1 (default 0)")
    p.add_argument("--noise", type=float, default=0.02, help="Rician noise sigma as a fraction of the bright level")
    p.add_argument("--bias", type=float, default=0.15, help="bias-field amplitude (0 = none)")
    p.add_argument("--lowres-factor", type=int, default=4, metavar="N", help="slab thickness of t2_lowres in slices")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import write_volume
    from ..phantom import make_phantom

    out = Path(args.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NeurosynthError(f"{out} is a file; give a folder to write the phantom into")
    lesions = False if args.no_lesions else (args.lesions if args.lesions else True)
    phantom = make_phantom(
        seed=args.seed, lesions=lesions, resolution=args.resolution, noise=args.noise, bias=args.bias,
        misalignment=args.misalignment, lowres_factor=args.lowres_factor,
    )
    for key in FILES:
        vol = phantom[key]
        path = write_volume(vol, out / f"{key}.nii.gz")
        spacing = "x".join(f"{s:g}" for s in vol.spacing)
        shape = "x".join(str(s) for s in vol.shape)
        print(f"wrote {path}  {shape} voxels of {spacing} mm  {vol.data.dtype}")
    kinds = phantom["lesion_mask"].metadata["parameters"]["lesions"]
    n = len(phantom["lesion_mask"].metadata["lesions"])
    print(f"phantom seed {args.seed}, {args.resolution:g} mm, lesions: {', '.join(kinds) if kinds else 'none'} ({n} placed)")
    return 0
