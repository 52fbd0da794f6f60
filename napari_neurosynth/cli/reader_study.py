"""The typed-answer parts of ``neurosynth study``: iMRMC, marks/lesions tables, AUCs, migrate-file.

``cli/study.py`` registers the sub-commands and calls these:

::

    neurosynth study export --db r.sqlite --study-file study.yaml --format imrmc --task lroc -o lroc.imrmc
    neurosynth study export --db r.sqlite --study-file study.yaml --marks marks.csv --lesions lesions.csv
    neurosynth study export --db r.sqlite --study ms --answers answers.csv --audit audit.csv
    neurosynth study summary --db r.sqlite --study-file study.yaml --auc-plot auc.png
    neurosynth study migrate-file old.yaml -o new.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NeurosynthError

if TYPE_CHECKING:
    from ..ratings import RatingStore
    from ..study import Study

#: Extra tables ``study export`` can write, option name -> what it holds.
TABLES = {
    "answers": "typed answers (one row per question)",
    "audit": "the audit trail of typed answers (old value, new value, time)",
    "marks": "one row per localisation mark (hit or miss, lesion, distance)",
    "lesions": "one row per lesion per read (found or missed, confidence): FROC-ready",
    "cases": "one row per case read with its LROC-ready score",
}


def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=["csv", "json", "imrmc"],
        help="format of -o (default: from its extension; imrmc = the iMRMC input file of --task)",
    )
    parser.add_argument(
        "--task",
        choices=["turing", "lroc"],
        default=None,
        help="the ROC task of an iMRMC export: real-vs-synthetic, or lesion localisation (needs --study-file)",
    )
    parser.add_argument("--study-file", type=Path, metavar="STUDY.yaml", help="the study (lesion masks, questions)")
    for name, what in TABLES.items():
        parser.add_argument(f"--{name}", type=Path, metavar="OUT.csv", help=f"also write {what}")


def add_summary_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study-file",
        type=Path,
        metavar="STUDY.yaml",
        help="add reader-averaged AUCs (Turing; LROC when the study asks a localisation question)",
    )
    parser.add_argument("--auc-plot", type=Path, metavar="OUT.png", help="save the AUCs per condition as a plot")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates of the AUC CIs (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")


def register_migrate_file(sub: Any) -> None:
    migrate = sub.add_parser(
        "migrate-file",
        help="rewrite an old study file in the typed-question form (version 2), asking the same questions",
    )
    migrate.add_argument("source", type=Path, metavar="OLD.yaml")
    migrate.add_argument("-o", "--output", type=Path, required=True, metavar="NEW.yaml")
    migrate.add_argument("--force", action="store_true", help="overwrite an existing output file")
    migrate.set_defaults(func=_migrate_file)


def _migrate_file(args: argparse.Namespace) -> int:
    from ..study import migrate_study_file

    study = migrate_study_file(args.source, args.output, force=args.force)
    print(f"wrote {args.output}: study {study.id!r} with {len(study.questions)} typed questions")
    return 0


def _study(args: argparse.Namespace, why: str) -> Study:
    from ..study import load_study

    if args.study_file is None:
        raise NeurosynthError(f"{why} needs --study-file STUDY.yaml")
    return load_study(args.study_file, check_files=False)


def wanted_outputs(args: argparse.Namespace) -> list[Path]:
    """The extra files ``study export`` was asked to write."""
    return [getattr(args, name) for name in TABLES if getattr(args, name, None) is not None]


def export_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = args.output.suffix.lower() if args.output is not None else ""
    return {".json": "json", ".imrmc": "imrmc"}.get(suffix, "csv")


def _reads(store: RatingStore, study_id: str | None) -> list[dict[str, Any]]:
    """One dict per read with its typed answers; ratings rows stand in where no typed answers exist."""
    from ..reader_stats import answers_by_item

    reads = answers_by_item(store.answers(study=study_id))
    typed = {(r["rater"], r["case_id"], r["condition"]) for r in reads if "turing" in r}
    for row in store.ratings(study=study_id):
        if (row["rater"], row["case_id"], row["condition"]) not in typed and row.get("turing_choice"):
            reads.append({**row, "turing": row["turing_choice"], "reading_session": ""})
    return reads


def write_imrmc_export(args: argparse.Namespace, store: RatingStore) -> int:
    """``--format imrmc``: the Turing or LROC scores of a study; returns the number of score rows."""
    from ..reader_stats import localisation_tables, lroc_scores, turing_scores, write_imrmc

    study = None if args.study_file is None else _study(args, "an iMRMC export")
    study_id = args.study if args.study is not None else (study.id if study is not None else None)
    task = args.task or (
        "lroc" if study is not None and any(q.type == "localisation" for q in study.questions) else "turing"
    )
    if task == "lroc":
        study = study or _study(args, "an LROC iMRMC export")
        _, _, cases = localisation_tables(study, store.answers(study=study.id))
        rows = lroc_scores(cases)
        what = "LROC-ready score (localisation needed for a positive rating)"
    else:
        rows = turing_scores(_reads(store, study_id))
        what = "synthetic suspicion 1-10 (real 5 .. synthetic 5)"
    if not rows:
        raise NeurosynthError(f"no {task} answers to export in {store.path}")
    description = f"napari-neurosynth reader study {study_id or '(all studies)'}, task {task}: score = {what}"
    write_imrmc(args.output, rows, description)
    return len(rows)


def write_tables(args: argparse.Namespace, store: RatingStore) -> list[str]:
    """``--answers/--audit/--marks/--lesions/--cases``; returns one message per file written."""
    from ..export import write_csv
    from ..ratings import ANSWER_COLUMNS, AUDIT_COLUMNS

    messages = []
    study_id = args.study
    if args.answers is not None or args.audit is not None:
        if args.answers is not None:
            rows = [
                {**r, "value": _json(r["value"])} for r in store.answers(study=study_id, history=not args.current_only)
            ]
            write_csv(rows, args.answers, ANSWER_COLUMNS)
            messages.append(f"wrote {len(rows)} answers to {args.answers}")
        if args.audit is not None:
            rows = [
                {**r, "old_value": _json(r["old_value"]), "new_value": _json(r["new_value"])}
                for r in store.audit(study=study_id)
            ]
            write_csv(rows, args.audit, AUDIT_COLUMNS)
            messages.append(f"wrote {len(rows)} audit rows to {args.audit}")
    if any(getattr(args, n) is not None for n in ("marks", "lesions", "cases")):
        from ..reader_stats import localisation_tables

        study = _study(args, "--marks/--lesions/--cases")
        marks, lesions, cases = localisation_tables(study, store.answers(study=study.id))
        for name, rows in (("marks", marks), ("lesions", lesions), ("cases", cases)):
            path = getattr(args, name)
            if path is None:
                continue
            columns = list(rows[0]) if rows else ["rater", "reading_session", "case_id", "condition"]
            write_csv(rows, path, columns)
            messages.append(f"wrote {len(rows)} {name} rows to {path}")
    return messages


def _json(value: Any) -> str | None:
    import json

    return None if value is None else json.dumps(value, sort_keys=True)


def auc_summary(args: argparse.Namespace, store: RatingStore) -> dict[str, Any]:
    """Reader-averaged AUCs of the study (``--study-file``): ``{"turing": {...}, "lroc": {...}}``."""
    from ..reader_stats import lroc_auc, turing_auc

    study = _study(args, "AUCs")
    out: dict[str, Any] = {"turing": turing_auc(_reads(store, study.id), n_boot=args.n_boot, seed=args.seed)}
    if any(q.type == "localisation" for q in study.questions):
        out["lroc"] = lroc_auc(study, store.answers(study=study.id), n_boot=args.n_boot, seed=args.seed)
    return out


def format_aucs(aucs: dict[str, Any]) -> str:
    from ..reader_stats import format_auc_table

    titles = {"turing": "Real-vs-synthetic AUC", "lroc": "Localisation (LROC-ready) AUC"}
    return "\n".join(format_auc_table(titles[k], v) for k, v in aucs.items())
