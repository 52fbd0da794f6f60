"""``neurosynth phantom OUT_DIR``: write a seeded multi-contrast brain phantom as NIfTI."""

from __future__ import annotations

import argparse
import contextlib
import json
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
            "(1 tumour core, 2 oedema, 3 plaque, 4 black hole, 5 haemorrhage) and t2_lowres (thick axial "
            "slices) as .nii.gz, replacing files of the same names. "
            "A synthetic test object, not a real subject."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created if missing)")
    p.add_argument("--force", action="store_true", help="replace phantom files already in OUT_DIR")
    p.add_argument("--seed", type=int, default=0, help="subject seed (default 0); same seed, same images")
    p.add_argument(
        "--resolution",
        default="1",
        metavar="MM",
        help="voxel size in mm: 2, or per axis like 1x1x3 (each 0.7-8; default 1)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--no-lesions", action="store_true", help="a healthy subject")
    group.add_argument(
        "--lesions",
        metavar="KINDS",
        help="comma-separated lesion kinds: tumour,plaque,black_hole,haemorrhage (default: all)",
    )
    p.add_argument(
        "--field-strength",
        type=float,
        default=3.0,
        metavar="T",
        help="1.5 or 3 (tesla; default 3): relaxation values of that field",
    )
    p.add_argument(
        "--protocol",
        default="default",
        metavar="P",
        help="default, random (TR/TE/TI drawn per seed within clinical ranges) or a JSON object of "
        'overrides such as \'{"t1": {"tr": 600, "te": 12}}\'',
    )
    p.add_argument("--skull-strip", action="store_true", help="BraTS-like: zero outside the brain mask")
    p.add_argument(
        "--fov-crop",
        default=None,
        metavar="MM",
        help="crop the field of view: mm at every side (10), per axis (10,20,30) or 'random'",
    )
    p.add_argument(
        "--misalignment",
        type=float,
        default=0.0,
        metavar="MM",
        help="max rigid motion (mm and degrees) of T2/PD/FLAIR relative to T1 (default 0)",
    )
    p.add_argument("--noise", type=float, default=0.02, help="Rician noise sigma as a fraction of the bright level")
    p.add_argument("--bias", type=float, default=0.15, help="bias-field amplitude (0 = none)")
    p.add_argument("--lowres-factor", type=int, default=4, metavar="N", help="slab thickness of t2_lowres in slices")
    p.set_defaults(func=run)


def _resolution(text: str) -> float | tuple[float, ...]:
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        raise NeurosynthError(f"--resolution: write a voxel size like 2 or 1x1x3 (mm), not {text!r}") from None
    return values[0] if len(values) == 1 else values


def _protocol(text: str):
    text = str(text).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise NeurosynthError(f'--protocol: not valid JSON ({e.msg}); e.g. \'{{"t1": {{"tr": 600}}}}\'') from None
    return text


def _fov_crop(text: str | None):
    if text is None or str(text).lower() in ("none", ""):
        return None
    if str(text).lower() == "random":
        return "random"
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise NeurosynthError(f"--fov-crop: write mm like 10 or 10,20,30, or 'random'; not {text!r}") from None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_path, check_output_path
    from ..io import write_volume
    from ..phantom import make_phantom

    out = Path(args.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NeurosynthError(f"{out} is a file; give a folder to write the phantom into")
    for key in FILES:
        check_output_path(out / f"{key}.nii.gz", force=args.force)
    lesions = False if args.no_lesions else (args.lesions if args.lesions else True)
    phantom = make_phantom(
        seed=args.seed,
        lesions=lesions,
        resolution=_resolution(args.resolution),
        field_strength=args.field_strength,
        protocol=_protocol(args.protocol),
        skull_strip=args.skull_strip,
        fov_crop=_fov_crop(args.fov_crop),
        noise=args.noise,
        bias=args.bias,
        misalignment=args.misalignment,
        lowres_factor=args.lowres_factor,
    )
    # All files or none: each is staged under a temporary name and renamed only when every one
    # of them was written, so a full disk leaves neither truncated files nor a partial set.
    with contextlib.ExitStack() as stack:
        for key in FILES:
            write_volume(phantom[key], stack.enter_context(atomic_path(out / f"{key}.nii.gz")))
    for key in FILES:
        vol = phantom[key]
        spacing = "x".join(f"{s:g}" for s in vol.spacing)
        shape = "x".join(str(s) for s in vol.shape)
        print(f"wrote {out / f'{key}.nii.gz'}  {shape} voxels of {spacing} mm  {vol.data.dtype}")
    meta = phantom["lesion_mask"].metadata
    kinds = meta["parameters"]["lesions"]
    n = len(meta["lesions"])
    res = "x".join(f"{s:g}" for s in phantom["t1"].spacing)
    prot = ", ".join(
        f"{c} {s['TR_ms']:g}/{s['TE_ms']:g}" + (f"/{s['TI_ms']:g}" if "TI_ms" in s else "")
        for c, s in meta["protocol"].items()
    )
    print(
        f"phantom seed {args.seed}, {res} mm, {meta['field_strength_T']:g} T"
        f"{', skull-stripped' if meta['skull_stripped'] else ''}, "
        f"lesions: {', '.join(kinds) if kinds else 'none'} ({n} placed); TR/TE(/TI) ms: {prot}"
    )
    return 0
