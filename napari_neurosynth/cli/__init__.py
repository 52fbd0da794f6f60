"""The ``neurosynth`` command line.

Each subcommand lives in a module of this package that exposes
``register(subparsers)``; it adds its parser and sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning an exit status.
Errors of type :class:`~napari_neurosynth.errors.NeurosynthError` (and OS errors
such as a full disk) are printed as one line on stderr with exit status 2; any
other exception is a bug, printed as one line with a hint and exit status 70. No
command prints a traceback unless ``-v`` is given; warnings are folded into one
``warning:`` line each, library warnings and logs only with ``-v``.

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
import traceback
import warnings

from ..errors import NeurosynthError, NeurosynthWarning

# Subcommand modules, in the order ``--help`` lists them.
_COMMANDS = ["models", "phantom", "synthesize", "evaluate", "train", "study", "dicom", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurosynth",
        description="Cross-modality MRI synthesis: models, phantom, synthesis, evaluation, training, reader studies.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"neurosynth {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show library warnings and logs, and tracebacks of internal errors"
    )
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


#: Exit statuses: 2 for bad input (a NeurosynthError or an OS error such as a full disk),
#: 70 (EX_SOFTWARE) for an unexpected exception, 130 for Ctrl-C.
EXIT_INPUT, EXIT_BUG, EXIT_INTERRUPT = 2, 70, 130

BUG_HINT = (
    "this is a bug in napari-neurosynth, not in your data; rerun with -v for the details and report it "
    "(with `neurosynth --version`) on the project's issue tracker"
)


def _quiet_libraries(verbose: bool) -> None:
    """Keep third-party chatter (ITK's C++ warnings, nibabel's header log) off stderr unless -v."""
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(name)s: %(message)s")
    for name in ("nibabel", "nibabel.global", "distributed", "py.warnings"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        import SimpleITK as sitk

        # ITK writes its warnings from C++ straight to stderr, before our message; the
        # readers turn what matters (non-uniform spacing, say) into their own errors.
        sitk.ProcessObject.SetGlobalWarningDisplay(verbose)
    except Exception:  # pragma: no cover - SimpleITK is a dependency; never fail the guard on it
        pass


def _is_ours(warning: warnings.WarningMessage) -> bool:
    return issubclass(warning.category, NeurosynthWarning) or "napari_neurosynth" in str(warning.filename)


def _report_warnings(command: str, caught: list[warnings.WarningMessage], verbose: bool) -> None:
    """Each distinct warning once, as one line; library warnings only with -v."""
    seen = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text in seen or not (verbose or _is_ours(w)):
            continue
        seen.add(text)
        where = f" [{w.category.__name__} at {w.filename}:{w.lineno}]" if verbose else ""
        print(f"neurosynth {command}: warning: {text}{where}", file=sys.stderr)


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


def main(argv: list[str] | None = None) -> int:
    """Run one ``neurosynth`` command; return its exit status (never raise, never a traceback)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v works anywhere on the line (`neurosynth synthesize ... -v` as well as `neurosynth -v ...`)
    verbose_flag = any(a in ("-v", "--verbose") for a in argv)
    argv = (["-v"] if verbose_flag else []) + [a for a in argv if a not in ("-v", "--verbose")]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    verbose = bool(getattr(args, "verbose", False))
    command = args.command
    _quiet_libraries(verbose)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = int(args.func(args) or 0)
        except NeurosynthError as exc:
            status = EXIT_INPUT
            error = f"error: {exc}"
        except KeyboardInterrupt:
            status = EXIT_INTERRUPT
            error = "interrupted"
        except OSError as exc:  # a full disk, a read-only folder: the user's environment, not a bug
            status = EXIT_INPUT
            error = f"error: {_os_error_line(exc)}"
        except Exception as exc:
            status = EXIT_BUG
            error = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; {BUG_HINT}"
            if verbose:
                traceback.print_exc()
        else:
            error = ""
    _report_warnings(command, caught, verbose)
    if error:
        print(f"neurosynth {command}: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
