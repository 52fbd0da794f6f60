"""The ``neurosynth`` command line.

Each subcommand lives in a module of this package that exposes
``register(subparsers)``; it adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit status.
Errors of type :class:`~napari_neurosynth.errors.NeurosynthError` are printed as
one line on stderr with exit status 2, never as a traceback.

Examples
--------
>>> args = build_parser().parse_args(["phantom", "out", "--seed", "3"])
>>> args.command, args.out_dir, args.seed
('phantom', 'out', 3)
>>> main(["study", "export", "--db", "/nonexistent/ratings.sqlite", "-o", "r.csv"])  # message on stderr
2
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import NeurosynthError

# Subcommand modules, in the order ``--help`` lists them.
_COMMANDS = ["models", "phantom", "synthesize", "evaluate", "train", "study", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurosynth",
        description="Cross-modality MRI synthesis: models, phantom, synthesis, evaluation, training, reader studies.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"neurosynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except NeurosynthError as exc:
        print(f"neurosynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neurosynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
