"""``neurosynth study``: create reader studies, summarise and export their ratings.

Examples
--------
::

    neurosynth study create runs/ -o study.yaml --turing --subscores realism lesion_conspicuity --reference t1
    neurosynth study summary --db ratings.sqlite --study runs --plot mos.png
    neurosynth study export --db ratings.sqlite -o ratings.csv
    neurosynth study import --db ratings.sqlite other_site.csv
    neurosynth study summary --db postgresql://lead@db.example.org/reader --study runs
    neurosynth study migrate --from ratings.sqlite --to postgresql://admin@db.example.org/reader

The same, on two tiny cases:

>>> import pathlib, tempfile
>>> import numpy as np
>>> from napari_neurosynth.cli import main
>>> from napari_neurosynth.io import Volume, write_volume
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for cond in ("acquired", "t1_to_t2"):
...     for case in ("sub-01", "sub-02"):
...         _ = write_volume(Volume(np.ones((4, 4, 4), np.float32), np.eye(4)), root / "runs" / cond / f"{case}.nii.gz")
>>> main(["study", "create", str(root / "runs"), "-o", str(root / "study.yaml"), "--turing"])
wrote .../study.yaml: study 'runs', 2 cases, 4 items to rate (acquired: 2, t1_to_t2: 2)
0
>>> _ = (root / "site.csv").write_text("rater,case_id,condition,score,turing_choice\\n"
...     "a,sub-01,acquired,5,real\\na,sub-02,acquired,4,real\\n"
...     "a,sub-01,t1_to_t2,3,synthetic\\na,sub-02,t1_to_t2,4,real\\n")
>>> main(["study", "import", "--db", str(root / "r.sqlite"), str(root / "site.csv"), "--study", "runs"])
imported 4 ratings into .../r.sqlite
0
>>> main(["study", "summary", "--db", str(root / "r.sqlite"), "--study", "runs"])
4 current ratings by 1 rater(s) in study runs
...
Real-vs-synthetic accuracy: 0.750 (3/4), ...
0
>>> main(["study", "export", "--db", str(root / "r.sqlite"), "-o", str(root / "ratings.json")])
wrote 4 ratings to .../ratings.json
0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import NeurosynthError
from .reader_study import add_export_args, add_summary_args, register_migrate_file

if TYPE_CHECKING:
    from ..ratings import RatingStore
    from ..study_stats import Summary


def _db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=_db_location,
        default=None,
        help="ratings database: a SQLite file (default: ratings.sqlite in the user data folder) "
        "or a postgresql://user@host:port/db URL",
    )


def _db_location(text: str) -> Path | str:
    """A ``postgresql://`` URL stays text; anything else is a file path."""
    from ..ratings import is_server_url

    return text if is_server_url(text) else Path(text)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "study",
        help="reader studies: create a study file, summarise and export ratings",
        description="Reader studies: build a study definition, and summarise or export the ratings stored in a "
        "database.",
    )
    sub = parser.add_subparsers(dest="study_command", metavar="ACTION")

    def _help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 1

    parser.set_defaults(func=_help)

    create = sub.add_parser(
        "create",
        help="build a study file from a folder of volumes",
        description="Build a study from FOLDER: either one subfolder per condition (acquired/, <model>/) with files "
        "named by case, or one subfolder per case with files named by condition.",
    )
    create.add_argument("folder", type=Path)
    create.add_argument("-o", "--output", type=Path, required=True, help="study file to write (.yaml or .json)")
    create.add_argument("--id", dest="study_id", help="study id (default: the folder name)")
    create.add_argument("--seed", type=int, default=0, help="seed of the per-rater order (default 0)")
    create.add_argument("--no-blind", dest="blinded", action="store_false", help="show condition and case names")
    create.add_argument(
        "--subscores",
        nargs="*",
        default=None,
        metavar="NAME",
        help="ask Likert sub-scores (all four if no name: realism, anatomical_correctness, "
        "lesion_conspicuity, diagnostic_usability)",
    )
    create.add_argument("--turing", action="store_true", help="ask real vs synthetic with confidence")
    create.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME",
        help="a condition name to show beside each case as a reference instead of rating it (repeatable)",
    )
    create.add_argument("--acquired", default="acquired", help="name of the real condition (default: acquired)")
    create.add_argument("--force", action="store_true", help="overwrite an existing study file")
    create.set_defaults(func=_create)

    summary = sub.add_parser("summary", help="MOS, agreement, Turing-test accuracy and rank tests")
    _db_arg(summary)
    summary.add_argument("--study", help="only this study (default: all current ratings in the file)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")
    summary.add_argument("--plot", type=Path, metavar="OUT.png", help="also save a score-distribution plot")
    summary.add_argument("--force", action="store_true", help="replace an existing plot file")
    summary.add_argument(
        "--ci",
        choices=["wilson", "clopper-pearson"],
        default="wilson",
        help="binomial CI of Turing-test accuracy (default wilson)",
    )
    summary.add_argument("--acquired", default="acquired", help="name of the real condition (default: acquired)")
    add_summary_args(summary)
    summary.set_defaults(func=_summary)

    export = sub.add_parser(
        "export", help="write ratings to CSV (or JSON, or an iMRMC input file), history included; typed answers too"
    )
    _db_arg(export)
    export.add_argument("-o", "--output", type=Path, help="OUT.csv, OUT.json or OUT.imrmc")
    export.add_argument("--study", help="only this study")
    export.add_argument("--current-only", action="store_true", help="leave out superseded ratings")
    export.add_argument("--force", action="store_true", help="replace an existing output file")
    add_export_args(export)
    export.set_defaults(func=_export)

    register_migrate_file(sub)

    imp = sub.add_parser(
        "import",
        help="add ratings from a CSV file (columns rater, case_id, condition, score; optional study and others)",
    )
    _db_arg(imp)
    imp.add_argument("csv", type=Path)
    imp.add_argument("--study", help="study id for rows without one")
    imp.set_defaults(func=_import)

    migrate = sub.add_parser(
        "migrate",
        help="copy a study's SQLite ratings file to a PostgreSQL server (history, sessions and ids kept)",
        description="Copy every study, session and rating (with its history) from a SQLite ratings file to a "
        "ratings database on a PostgreSQL server. Ratings already there (same rating id) are skipped, so "
        "running it again copies only what is new.",
    )
    migrate.add_argument("--from", dest="source", type=Path, required=True, metavar="RATINGS.sqlite")
    migrate.add_argument("--to", dest="target", required=True, metavar="postgresql://USER@HOST:PORT/DB")
    migrate.set_defaults(func=_migrate)


def _open(args: argparse.Namespace) -> RatingStore:
    """The ratings database of ``--db``, opened read-only (summary and export never write)."""
    from ..ratings import RatingStore, default_db_path

    path = args.db if args.db is not None else default_db_path()
    if isinstance(path, Path) and not path.exists():
        hint = "" if args.db is not None else "; pass --db with the ratings file"
        raise NeurosynthError(f"ratings database {path} does not exist{hint}")
    return RatingStore(path, read_only=True)


def _create(args: argparse.Namespace) -> int:
    from ..ratings import SUBSCORES
    from ..study import create_study

    if args.output.exists() and not args.force:
        raise NeurosynthError(f"{args.output} exists; pass --force to overwrite it")
    subscores = () if args.subscores is None else (tuple(args.subscores) or SUBSCORES)
    study = create_study(
        args.folder,
        study_id=args.study_id,
        seed=args.seed,
        blinded=args.blinded,
        subscores=subscores,
        turing=args.turing,
        references=args.reference,
        acquired=args.acquired,
    )
    study.save(args.output)
    counts = {c: sum(c in case.conditions for case in study.cases) for c in study.conditions}
    print(
        f"wrote {args.output}: study {study.id!r}, {len(study.cases)} cases, {len(study.items)} items to rate "
        f"({', '.join(f'{c}: {n}' for c, n in counts.items())})"
    )
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ..study_stats import format_summary, plot_distributions, plot_format, summarize
    from .reader_study import auc_summary, format_aucs

    for plot in (args.plot, args.auc_plot):
        if plot is not None:
            from ..atomic import check_output_path

            plot_format(plot)  # an unknown extension or an existing plot is refused before any work
            check_output_path(plot, force=args.force)
    if args.auc_plot is not None and args.study_file is None:
        raise NeurosynthError("--auc-plot needs --study-file STUDY.yaml")
    aucs = None
    with _open(args) as store:
        if args.study is not None and args.study not in store.studies():
            known = ", ".join(store.studies()) or "none"
            raise NeurosynthError(f"study {args.study!r} has no ratings in {store.path} (studies: {known})")
        rows = store.ratings(study=args.study)
        if args.study_file is not None:
            aucs = auc_summary(args, store)
    result: dict[str, Any]
    if rows:
        result = dict(
            summarize(rows, ci_method="exact" if args.ci == "clopper-pearson" else "wilson", acquired=args.acquired)
        )
    elif aucs is not None:  # a study of typed answers only (e.g. localisation without a MOS)
        result = {"n_ratings": 0}
    else:
        result = dict(summarize(rows))  # refuses with its own message
    if args.plot is not None:
        plot_distributions(rows, args.plot)
        result["plot"] = str(args.plot)
    if aucs is not None:
        result["auc"] = {task: {m: r.to_dict() for m, r in res.items()} for task, res in aucs.items()}
        if args.auc_plot is not None:
            from ..reader_stats import plot_auc

            titles = {"turing": "Real vs synthetic", "lroc": "Localisation"}
            plot_auc({titles[t]: res for t, res in aucs.items()}, args.auc_plot)
            result["auc_plot"] = str(args.auc_plot)
    if args.json:
        from ..export import dumps_json

        print(dumps_json(result))
    else:
        if rows:
            print(format_summary(cast("Summary", result)))
        if aucs is not None:
            print(format_aucs(aucs))
        for name in ("plot", "auc_plot"):
            if name in result:
                print(f"{name.replace('_', ' ')}: {result[name]}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..atomic import check_output_path
    from .reader_study import export_format, wanted_outputs, write_imrmc_export, write_tables

    db = args.db if isinstance(args.db, Path) else None
    outputs = ([args.output] if args.output is not None else []) + wanted_outputs(args)
    if not outputs:
        raise NeurosynthError("give -o OUT (and/or --answers, --audit, --marks, --lesions, --cases OUT.csv)")
    inputs = [p for p in (db, args.study_file) if p is not None]
    for out in outputs:  # every output is checked before anything is written
        check_output_path(out, force=args.force, inputs=inputs)
    with _open(args) as store:
        if args.output is not None:
            fmt = export_format(args)
            if fmt == "imrmc":
                n = write_imrmc_export(args, store)
                print(f"wrote {n} scores to {args.output} (iMRMC input file)")
            elif fmt == "json":
                from ..export import write_json

                rows = store.ratings(study=args.study, history=not args.current_only)
                write_json(rows, args.output)
                print(f"wrote {len(rows)} ratings to {args.output}")
            else:
                n = store.export_csv(args.output, study=args.study, history=not args.current_only)
                print(f"wrote {n} ratings to {args.output}")
        for message in write_tables(args, store):
            print(message)
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..export import read_csv_rows
    from ..ratings import EXTRA_FIELDS, RatingStore

    rows = read_csv_rows(args.csv, ["rater", "case_id", "condition", "score"], what="ratings table")
    if not rows:
        raise NeurosynthError(f"{args.csv} has a header but no ratings")
    batch: list[dict[str, Any]] = []
    for row in rows:
        item: dict[str, Any] = {k: row[k] for k in EXTRA_FIELDS if k != "metadata" and row.get(k) not in (None, "")}
        item.update(
            rater=row["rater"], case=row["case_id"], condition=row["condition"], study=row.get("study") or args.study
        )
        try:
            item["score"] = float(row["score"])
        except ValueError:
            item["score"] = row["score"]  # refused with a clear message by the store
        if row.get("metadata"):
            try:
                item["metadata"] = json.loads(row["metadata"])
            except json.JSONDecodeError:
                item["metadata"] = {"text": row["metadata"]}
        batch.append(item)
    # One transaction: a bad line leaves the database untouched.
    with RatingStore(args.db) as store:
        store.record_many(batch)
        path = store.path
    print(f"imported {len(batch)} ratings into {path}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from ..ratings import RatingStore, is_server_url
    from ..ratings_pg import copy_ratings

    if not is_server_url(args.target):
        raise NeurosynthError(f"--to must be a postgresql:// URL, got {args.target!r}")
    if not args.source.is_file():
        raise NeurosynthError(f"ratings database {args.source} does not exist")
    with RatingStore(args.source, read_only=True) as source, RatingStore(args.target) as target:
        copied, skipped = copy_ratings(source, target)
        where = target.path
    print(f"copied {copied} ratings from {args.source} to {where} ({skipped} already there)")
    return 0
