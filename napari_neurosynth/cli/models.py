"""``neurosynth models``: list, show, verify and convert model bundles.

Examples
--------
``neurosynth models list`` prints one line per bundle found (name, task, inputs
-> output, architecture, parameters, where found); ``--json`` prints a list of
objects instead. ``neurosynth models show NAME`` prints the card;
``neurosynth models verify NAME`` checks the weights' checksum and shapes;
``neurosynth models convert CHECKPOINT --card CARD -o FOLDER`` turns a PyTorch
checkpoint you trust into a bundle (any architecture a card can name, MONAI included).
``neurosynth models import pix2pix CHECKPOINT --netG NAME --norm NORM --input M --output M -o BUNDLE``
imports a pytorch-CycleGAN-and-pix2pix generator (weights-only loading; nothing in the
file runs), and ``neurosynth models export NAME --format onnx -o DIR`` writes an ONNX
bundle (see docs/bundle-format.md, "Models trained elsewhere").

>>> import tempfile
>>> from napari_neurosynth.bundle import save_bundle
>>> from napari_neurosynth.cli import main
>>> from napari_neurosynth.networks import build_network
>>> card = {"name": "tiny", "task": "cms", "inputs": ["t1"], "output": "t2", "slicing": {"context": 1}}
>>> folder = save_bundle(build_network("unet", in_channels=3, base=4, depth=1), card, tempfile.mkdtemp() + "/tiny")
>>> main(["models", "verify", str(folder)])
tiny: OK, sha256 ..., 2,773 parameters (.../tiny)
0
>>> main(["models", "show", str(folder)])
tiny (path: .../tiny)
<BLANKLINE>
# tiny
...
| Inputs (in order) | t1 |
...
0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import NeurosynthError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, show, verify and convert model bundles",
        description="Model bundles: folders with card.json and weights.safetensors.",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")

    p = sub.add_parser("list", help="list the bundles found in the search path")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="print a bundle's card")
    p.add_argument("name", metavar="NAME", help="bundle name or path")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=_show)

    p = sub.add_parser("verify", help="check a bundle's checksum and weight shapes")
    p.add_argument("name", metavar="NAME", help="bundle name or path")
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "convert",
        help="convert a trusted PyTorch checkpoint (.pt/.pth/.ckpt) into a bundle",
        description="Convert a PyTorch checkpoint into a safetensors bundle. The checkpoint is read with "
        "torch.load(weights_only=True), which refuses arbitrary objects, but only convert files you trust.",
    )
    p.add_argument("checkpoint", type=Path, help="the .pt/.pth/.ckpt file")
    p.add_argument(
        "--card",
        type=Path,
        required=True,
        help="card (JSON or YAML) with name, task, inputs, output, architecture, slicing",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    p.add_argument(
        "--key",
        default=None,
        help="key of the state dict inside the checkpoint (default: the checkpoint itself, "
        "or its 'state_dict'/'generator'/'model' entry)",
    )
    p.set_defaults(func=_convert)

    _register_import(sub)
    _register_export(sub)

    def _help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=_help)


def _list(args: argparse.Namespace) -> int:
    from ..bundle import find_models, models_search_path

    problems: list[tuple[Path, str]] = []
    rows = [info.summary() for info in find_models(problems)]
    for folder, message in problems:
        print(f"neurosynth models list: skipped {folder}: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        where = ", ".join(str(p) for _, p in models_search_path())
        print(f"no model bundles found (searched: {where})")
        return 0
    table = [("NAME", "TASK", "INPUTS -> OUTPUT", "ARCH", "PARAMS", "FOUND IN")]
    for r in rows:
        n = r["n_parameters"]
        table.append(
            (
                r["name"],
                str(r["task"]),
                f"{' + '.join(r['inputs'] or [])} -> {r['output']}",
                str(r["architecture"]),
                f"{n:,}" if isinstance(n, int) else "?",
                f"{r['source']}: {r['path']}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..bundle import _resolve, render_readme

    info = _resolve(args.name)
    if args.json:
        print(json.dumps(info.card, indent=2))
    else:
        print(f"{info.name} ({info.source}: {info.path})\n")
        print(render_readme(info.card))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..bundle import verify_bundle

    result = verify_bundle(args.name)
    print(f"{result['name']}: OK, sha256 {result['sha256']}, {result['n_parameters']:,} parameters ({result['path']})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from ..bundle import _build_from_card, _load_state, read_card, save_bundle, validate_card

    card = read_card(args.card)
    card.pop("weights", None)
    validate_card(
        {**card, "normalization": card.get("normalization", {}), "slicing": card.get("slicing", {})},
        require_weights=False,
        where=str(args.card),
    )
    try:
        # weights_only=True: the restricted unpickler that only rebuilds tensors and plain containers
        obj = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NeurosynthError(f"checkpoint {args.checkpoint} does not exist") from None
    except Exception as exc:
        raise NeurosynthError(
            f"cannot read {args.checkpoint} as a weights-only checkpoint ({type(exc).__name__}); "
            "it may contain arbitrary Python objects, which this command refuses to load"
        ) from None
    keys = [args.key] if args.key else [None, "state_dict", "generator", "model", "net_G", "netG"]
    state = None
    for key in keys:
        cand = obj if key is None else (obj.get(key) if isinstance(obj, dict) else None)
        if isinstance(cand, dict) and cand and all(isinstance(v, torch.Tensor) for v in cand.values()):
            state = cand
            break
    if state is None:
        raise NeurosynthError(f"no state dict of tensors found in {args.checkpoint}; name its key with --key")
    network = _build_from_card({**card, "slicing": card.get("slicing", {})}, str(args.card))
    _load_state(network, state, card.get("name", str(args.checkpoint)))
    folder = save_bundle(network, card, args.output)
    print(f"wrote bundle {folder}")
    return 0


# --------------------------------------------------------------------------- import / export


def _register_import(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..external import PIX2PIX_NETG as NETG  # no torch import: every CLI command builds this parser

    NORMS = ("instance", "batch", "none")

    p = sub.add_parser("import", help="import a model trained elsewhere (pytorch-CycleGAN-and-pix2pix)")
    kinds = p.add_subparsers(dest="import_kind", metavar="KIND")
    q = kinds.add_parser(
        "pix2pix",
        help="a pytorch-CycleGAN-and-pix2pix generator checkpoint (latest_net_G.pth)",
        description="Import a pytorch-CycleGAN-and-pix2pix generator. The checkpoint is read with "
        "torch.load(weights_only=True): nothing in it is executed. The options are the original's "
        "--netG, --norm, --ngf and --no_dropout.",
    )
    q.add_argument("checkpoint", type=Path, help="the generator's .pth state dict")
    q.add_argument("--netG", dest="net_g", required=True, choices=list(NETG), help="generator architecture")
    q.add_argument("--norm", required=True, choices=list(NORMS), help="normalisation layers it was trained with")
    q.add_argument(
        "--input",
        dest="inputs",
        action="append",
        required=True,
        metavar="MODALITY",
        help="input modality (repeat for multi-channel models, in channel order)",
    )
    q.add_argument("--output", required=True, metavar="MODALITY", help="output modality")
    q.add_argument(
        "--ngf", type=int, default=None, help="generator filters in the first layer (default: read from the file)"
    )
    q.add_argument(
        "--no-dropout",
        dest="use_dropout",
        action="store_false",
        help="the model was trained with --no_dropout (CycleGAN's usual setting)",
    )
    q.add_argument(
        "--plane",
        default="axial",
        choices=["axial", "coronal", "sagittal"],
        help="slicing plane the model was trained on (default axial)",
    )
    q.add_argument("--context", type=int, default=0, help="neighbouring slices per side fed as extra channels")
    q.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    q.add_argument(
        "-o", "--output-dir", dest="dest", type=Path, required=True, metavar="BUNDLE", help="bundle folder to write"
    )
    q.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    q.set_defaults(func=_import_pix2pix)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 1

    p.set_defaults(func=_help)


def _import_pix2pix(args: argparse.Namespace) -> int:
    import shlex

    from ..external.importer import import_pix2pix

    command = "neurosynth " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    folder = import_pix2pix(
        args.checkpoint,
        args.dest,
        net_g=args.net_g,
        norm=args.norm,
        inputs=args.inputs,
        output=args.output,
        ngf=args.ngf,
        use_dropout=args.use_dropout,
        name=args.name,
        plane=args.plane,
        context=args.context,
        force=args.force,
        command=command if command and " import " in command else None,
    )
    print(f"wrote bundle {folder}")
    return 0


def _register_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export a bundle to another format (ONNX)",
        description="Export a torch bundle as an ONNX bundle (model.onnx + card.json), run with onnxruntime.",
    )
    p.add_argument("name", metavar="NAME", help="bundle name or path")
    p.add_argument("--format", required=True, choices=["onnx"], help="target format")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="bundle folder to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..atomic import check_output_path
    from ..bundle import load_model
    from ..external.onnx_model import export_onnx

    check_output_path(args.output, force=args.force)
    model = load_model(args.name)
    folder = export_onnx(model, args.output, force=args.force, opset=args.opset)
    print(f"wrote ONNX bundle {folder}")
    return 0
