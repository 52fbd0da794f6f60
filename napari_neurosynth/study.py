"""Reader-study definitions and per-rater session logic (no Qt).

A *study* is a YAML or JSON file listing cases; each case has one volume per
*condition* (``acquired`` and one per model, e.g. ``t1_to_t2``) and optional
reference images shown beside it (e.g. the source T1). See ``docs/reader-study.md``.

A :class:`ReaderSession` presents the study's (case, condition) items to one
rater in an order drawn from the study seed and the rater id, stores that order
in the :class:`~napari_neurosynth.ratings.RatingStore` so that a rater who comes
back resumes at the same place in the same order, measures the time spent on
each item, and checks every rating against the study before storing it.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np, nibabel as nib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for cond in ("acquired", "t1_to_t2"):
...     (root / cond).mkdir()
...     for case in ("sub-01", "sub-02"):
...         nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), root / cond / f"{case}.nii.gz")
>>> study = create_study(root, study_id="demo", seed=7)
>>> study.conditions, len(study.items)
(['acquired', 't1_to_t2'], 4)
>>> from napari_neurosynth.ratings import RatingStore
>>> store = RatingStore(root / "ratings.sqlite")
>>> session = ReaderSession(study, "dr-a", store)
>>> row = session.rate(4)
>>> _ = session.next(); session.position
1
>>> ReaderSession(study, "dr-a", store).position  # resumes where dr-a left off
1
>>> store.close()
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from .atomic import atomic_write_text, is_partial
from .errors import NeurosynthError
from .ratings import SUBSCORES, RatingRow, RatingStore

__all__ = [
    "DEFAULT_WINDOW",
    "VOLUME_SUFFIXES",
    "Case",
    "ReaderSession",
    "Study",
    "check_case_files",
    "create_study",
    "load_study",
    "missing_volumes",
    "parse_study_text",
    "presentation_order",
    "rater_seed",
    "study_from_dict",
]

#: File name endings recognised as volumes when building a study from a folder.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Default display window, in percentiles of each volume's non-zero voxels.
DEFAULT_WINDOW = (0.5, 99.5)


@dataclass
class Case:
    """One case of a study: a volume per condition, plus optional references."""

    id: str
    conditions: dict[str, Path]
    references: dict[str, Path] = field(default_factory=dict)


@dataclass
class Study:
    """A reader study.

    Attributes
    ----------
    id : str
        Study id, the key of its ratings in the store.
    cases : list of Case
    blinded : bool
        Hide condition, case and file names from the rater.
    seed : int
        Base seed of the per-rater presentation order.
    subscores : tuple of str
        Likert sub-scores asked besides the MOS (subset of
        :data:`~napari_neurosynth.ratings.SUBSCORES`).
    turing : bool
        Ask for a real-vs-synthetic choice with a 1-5 confidence.
    window : tuple of float
        Display window in percentiles, applied identically to every condition.
    path : Path or None
        The file the study was read from.

    Examples
    --------
    >>> from pathlib import Path
    >>> study = Study("pilot", [Case(c, {"acquired": Path(f"acq/{c}.nii.gz"), "t1_to_t2": Path(f"syn/{c}.nii.gz")})
    ...                         for c in ("sub-01", "sub-02", "sub-03")], seed=3)
    >>> study.conditions, study.items[:2]
    (['acquired', 't1_to_t2'], [('sub-01', 'acquired'), ('sub-01', 't1_to_t2')])
    >>> study.case("sub-02").conditions["t1_to_t2"]
    PosixPath('syn/sub-02.nii.gz')
    >>> study.check_item("sub-02", "t1_to_flair")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: case 'sub-02' of study 'pilot' has no condition 't1_to_flair' (it has ...)
    >>> study.to_dict()["questions"], study.to_dict(relative_to="syn")["cases"][0]["conditions"]["t1_to_t2"]
    ({'mos': True, 'subscores': [], 'turing': False}, 'sub-01.nii.gz')
    """

    id: str
    cases: list[Case]
    blinded: bool = True
    seed: int = 0
    subscores: tuple[str, ...] = ()
    turing: bool = False
    window: tuple[float, float] = DEFAULT_WINDOW
    path: Path | None = None

    @property
    def conditions(self) -> list[str]:
        """Condition names in order of first appearance."""
        seen: dict[str, None] = {}
        for case in self.cases:
            for name in case.conditions:
                seen.setdefault(name, None)
        return list(seen)

    @property
    def items(self) -> list[tuple[str, str]]:
        """All (case id, condition) pairs a rater scores, in definition order."""
        return [(case.id, cond) for case in self.cases for cond in case.conditions]

    def case(self, case_id: str) -> Case:
        """The case with this id (:class:`NeurosynthError` if the study has none)."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise NeurosynthError(f"study {self.id!r} has no case {case_id!r}")

    def check_item(self, case_id: str, condition: str) -> None:
        """Refuse a (case, condition) the study does not have."""
        case = self.case(case_id)
        if condition not in case.conditions:
            raise NeurosynthError(
                f"case {case_id!r} of study {self.id!r} has no condition {condition!r} "
                f"(it has {', '.join(case.conditions)})"
            )

    def to_dict(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """The definition as plain data (paths relative to ``relative_to`` when given)."""

        def rel(path: Path) -> str:
            if relative_to is None:
                return str(path)
            return os.path.relpath(path, relative_to)

        return {
            "study": self.id,
            "seed": int(self.seed),
            "blinded": bool(self.blinded),
            "questions": {"mos": True, "subscores": list(self.subscores), "turing": bool(self.turing)},
            "display": {"window_percentiles": [float(v) for v in self.window]},
            "cases": [
                {
                    "id": case.id,
                    "conditions": {k: rel(v) for k, v in case.conditions.items()},
                    **({"references": {k: rel(v) for k, v in case.references.items()}} if case.references else {}),
                }
                for case in self.cases
            ],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the definition as YAML (``.yaml``/``.yml``) or JSON (other suffixes).

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> study = Study("pilot", [Case("sub-01", {"acquired": folder / "a.nii.gz", "model": folder / "m.nii.gz"})])
        >>> saved = study.save(folder / "study.yaml")
        >>> print(saved.read_text().splitlines()[0])
        study: pilot
        >>> back = load_study(saved, check_files=False)
        >>> back.items, back.case("sub-01").conditions == study.case("sub-01").conditions
        ([('sub-01', 'acquired'), ('sub-01', 'model')], True)
        """
        path = Path(path)
        data = self.to_dict(relative_to=path.parent.resolve())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                text = yaml.safe_dump(data, sort_keys=False)
            else:
                text = json.dumps(data, indent=2) + "\n"
            atomic_write_text(path, text)
        except OSError as exc:
            raise NeurosynthError(f"cannot write study file {path}: {exc.strerror}") from None
        self.path = path
        return path


def _as_bool(value: object, name: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise NeurosynthError(f"{where}: '{name}' must be true or false, got {value!r}")


def _paths(mapping: object, base: Path, where: str, what: str) -> dict[str, Path]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not mapping:
        raise NeurosynthError(f"{where}: '{what}' must be a mapping of name -> volume path")
    out = {}
    for name, value in mapping.items():
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise NeurosynthError(f"{where}: {what} {name!r} must be a file path, got {value!r}")
        path = Path(value).expanduser()
        out[str(name)] = path if path.is_absolute() else (base / path)
    return out


def study_from_dict(data: object, base: str | os.PathLike[str] = ".", source: str = "study") -> Study:
    """Build a :class:`Study` from parsed YAML/JSON; relative paths are resolved against ``base``.

    Examples
    --------
    >>> study = study_from_dict({"study": "pilot", "seed": 5, "questions": {"subscores": True, "turing": True},
    ...                          "cases": [{"id": "sub-01", "conditions": {"acquired": "a.nii.gz"}}]}, base="/data")
    >>> study.subscores
    ('realism', 'anatomical_correctness', 'lesion_conspicuity', 'diagnostic_usability')
    >>> study.turing, study.case("sub-01").conditions
    (True, {'acquired': PosixPath('/data/a.nii.gz')})
    >>> study_from_dict({"study": "pilot", "cases": [], "colour": "red"}, source="study.yaml")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study.yaml: unknown key(s) 'colour'; known: blinded, cases, ...
    >>> study_from_dict({"study": "pilot", "display": {"window_percentiles": [99, 1]}, "cases": []})
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: 'display.window_percentiles' must be [low, high] with 0 <= ...
    """
    base = Path(base)
    if not isinstance(data, dict):
        raise NeurosynthError(f"{source}: expected a mapping with keys study, cases, ...; got {type(data).__name__}")
    known = {"study", "id", "seed", "blinded", "questions", "display", "cases", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NeurosynthError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    study_id = data.get("study", data.get("id"))
    if not isinstance(study_id, (str, int)) or not str(study_id).strip():
        raise NeurosynthError(f"{source}: give the study an id (key 'study')")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise NeurosynthError(f"{source}: 'seed' must be a non-negative integer, got {seed!r}")
    blinded = _as_bool(data.get("blinded", True), "blinded", source)

    questions = data.get("questions") or {}
    if not isinstance(questions, dict):
        raise NeurosynthError(f"{source}: 'questions' must be a mapping (mos, subscores, turing)")
    if questions.get("mos", True) is not True:
        raise NeurosynthError(f"{source}: the 1-5 MOS is always asked; remove 'mos: false'")
    subscores = questions.get("subscores", [])
    if subscores is True:
        subscores = list(SUBSCORES)
    elif subscores in (False, None):
        subscores = []
    if not isinstance(subscores, list) or any(s not in SUBSCORES for s in subscores):
        raise NeurosynthError(
            f"{source}: 'questions.subscores' must be a list drawn from {', '.join(SUBSCORES)} (or true for all)"
        )
    turing = _as_bool(questions.get("turing", False), "questions.turing", source)

    display = data.get("display") or {}
    window = display.get("window_percentiles", DEFAULT_WINDOW) if isinstance(display, dict) else None
    if (
        not isinstance(window, (list, tuple))
        or len(window) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
        or not 0 <= window[0] < window[1] <= 100
    ):
        raise NeurosynthError(f"{source}: 'display.window_percentiles' must be [low, high] with 0 <= low < high <= 100")

    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise NeurosynthError(f"{source}: 'cases' must be a non-empty list")
    cases: list[Case] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_cases):
        where = f"{source}: case #{i + 1}"
        if not isinstance(raw, dict) or "id" not in raw or "conditions" not in raw:
            raise NeurosynthError(f"{where} needs 'id' and 'conditions'")
        case_id = str(raw["id"]).strip()
        if not case_id:
            raise NeurosynthError(f"{where}: empty id")
        if case_id in seen:
            raise NeurosynthError(f"{source}: case id {case_id!r} appears twice")
        seen.add(case_id)
        if not isinstance(raw["conditions"], dict) or not raw["conditions"]:
            raise NeurosynthError(f"{where}: 'conditions' must be a non-empty mapping of condition -> volume path")
        extra = sorted(set(raw) - {"id", "conditions", "references"})
        if extra:
            raise NeurosynthError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}")
        cases.append(
            Case(
                case_id,
                _paths(raw["conditions"], base, f"{source}: case {case_id!r}", "conditions"),
                _paths(raw.get("references"), base, f"{source}: case {case_id!r}", "references"),
            )
        )
    return Study(
        id=str(study_id).strip(),
        cases=cases,
        blinded=blinded,
        seed=int(seed),
        subscores=tuple(subscores),
        turing=turing,
        window=(float(window[0]), float(window[1])),
    )


def missing_volumes(study: Study) -> list[Path]:
    """Volume paths named by the study that do not exist.

    Examples
    --------
    >>> from pathlib import Path
    >>> missing_volumes(Study("s", [Case("c1", {"acquired": Path("/nowhere/c1.nii.gz")})]))
    [PosixPath('/nowhere/c1.nii.gz')]
    """
    missing = []
    for case in study.cases:
        for path in [*case.conditions.values(), *case.references.values()]:
            if not path.exists():
                missing.append(path)
    return missing


def _strict_loader() -> type:
    """A safe YAML loader that refuses a key repeated in one mapping, naming its line.

    PyYAML keeps the last of two equal keys without a word; in a study file that can
    point the model condition at the acquired scan. PyYAML has no option for this, so
    the check is the loader's mapping constructor, a few lines here.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise NeurosynthError(
                        f"line {line}: key {key!r} appears twice in one mapping (first at line {seen[key]}); "
                        "each key may appear once"
                    )
                seen[key] = line
            return cast(dict[Any, Any], super().construct_mapping(node, deep=deep))

    return StrictLoader


def parse_study_text(text: str, source: str = "study") -> Any:
    """Parse study YAML/JSON text, refusing duplicate keys; errors name the line.

    Examples
    --------
    >>> parse_study_text("study: pilot\\ncases: []\\n")
    {'study': 'pilot', 'cases': []}
    >>> parse_study_text("cases:\\n  - id: c1\\n    conditions:\\n      model: a.nii.gz\\n      model: b.nii.gz\\n")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: line 5: key 'model' appears twice in one mapping ...
    """
    import yaml

    try:
        # YAML is a superset of JSON, so one parser reads both.
        return yaml.load(text, Loader=_strict_loader())  # a SafeLoader subclass: no arbitrary objects
    except NeurosynthError as exc:
        raise NeurosynthError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NeurosynthError(f"{source} does not parse{where}: {problem}; fix the YAML/JSON syntax") from None
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. an unhashable key such as [a, b]
        raise NeurosynthError(f"{source} does not parse: {exc}") from None


def check_case_files(study: Study) -> None:
    """Open every volume the study names and check each case's conditions share one grid.

    Done when the study is loaded, so that a missing, corrupt or misplaced file is
    reported before a rater starts, not in the middle of a session. Conditions must
    share a grid because a different voxel size or field of view would unblind them;
    two conditions naming the same file would have raters score one image as two.

    Raises
    ------
    NeurosynthError
        Naming the case, the condition and the file.
    """
    from .io import read_volume, same_grid

    for case in study.cases:
        by_file: dict[Path, str] = {}
        first: tuple[str, Any] | None = None
        for role, mapping in (("condition", case.conditions), ("reference", case.references)):
            for name, path in mapping.items():
                where = f"case {case.id!r}, {role} {name!r} ({path})"
                key = path.resolve()
                if key in by_file:
                    raise NeurosynthError(
                        f"{where} names the same file as {by_file[key]!r}; each image of a case must be its own file"
                    )
                by_file[key] = name
                if not path.exists():
                    raise NeurosynthError(f"{where}: the file does not exist")
                try:
                    vol = read_volume(path)
                except NeurosynthError as exc:
                    raise NeurosynthError(f"{where} cannot be opened: {exc}") from None
                if role != "condition":
                    continue
                if first is None:
                    first = (name, vol)
                elif not same_grid(vol, first[1]):
                    raise NeurosynthError(
                        f"{where} is on another grid (shape {vol.shape}, spacing "
                        f"{', '.join(f'{s:.3g}' for s in vol.spacing)} mm) than condition {first[0]!r} "
                        f"(shape {first[1].shape}); the conditions of a case must share one grid, or the "
                        "difference in resolution unblinds them"
                    )


def load_study(path: str | os.PathLike[str], check_files: bool = True) -> Study:
    """Read a study definition (YAML or JSON).

    Parameters
    ----------
    path : str or Path
        The study file; volume paths in it are relative to its folder.
    check_files : bool
        Refuse a study that names volumes that do not exist.

    Raises
    ------
    NeurosynthError
        The file is missing or does not parse, a field is wrong, or volumes are missing.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "study.yaml"
    >>> _ = path.write_text("study: pilot\\ncases:\\n  - id: sub-01\\n    conditions: {acquired: acq/sub-01.nii.gz}\\n")
    >>> load_study(path, check_files=False).case("sub-01").conditions["acquired"] == path.parent / "acq/sub-01.nii.gz"
    True
    >>> load_study(path)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study file ...study.yaml names 1 missing volume(s): .../acq/sub-01.nii.gz
    >>> _ = path.write_text("study: [pilot")
    >>> load_study(path)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study file ...study.yaml does not parse at line 1, column 14: ...
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NeurosynthError(f"study file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NeurosynthError(f"cannot read study file {path}: {exc}") from None
    data = parse_study_text(text, source=f"study file {path}")
    study = study_from_dict(data, base=path.parent, source=f"study file {path}")
    study.path = path
    if check_files:
        missing = missing_volumes(study)
        if missing:
            shown = ", ".join(str(p) for p in missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            raise NeurosynthError(f"study file {path} names {len(missing)} missing volume(s): {shown}")
        try:
            check_case_files(study)
        except NeurosynthError as exc:
            raise NeurosynthError(f"study file {path}: {exc}") from None
    return study


def _volume_stem(path: Path) -> str | None:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _volumes_in(folder: Path) -> dict[str, Path]:
    """Volumes in ``folder`` by name without extension; two files of one name are refused."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _volume_stem(path)
        if is_partial(path):  # an interrupted write's temporary file, not a case
            continue
        if stem and (path.is_file() or path.suffix.lower() == ".nhdr"):
            if stem in out:
                raise NeurosynthError(
                    f"{folder} holds both {out[stem].name} and {path.name}: it is ambiguous which is {stem!r}; "
                    "remove or rename one"
                )
            out[stem] = path
    return out


def create_study(
    folder: str | os.PathLike[str],
    study_id: str | None = None,
    seed: int = 0,
    blinded: bool = True,
    subscores: Iterable[str] = (),
    turing: bool = False,
    references: Iterable[str] = (),
    acquired: str = "acquired",
) -> Study:
    """Build a study from a folder of volumes.

    Two layouts are recognised:

    * one subfolder per **condition**, files named by case:
      ``acquired/sub-01.nii.gz``, ``t1_to_t2/sub-01.nii.gz``, ... (what
      ``neurosynth synthesize`` writes for many subjects);
    * one subfolder per **case**, files named by condition:
      ``sub-01/acquired.nii.gz``, ``sub-01/t1_to_t2.nii.gz``, ...

    Parameters
    ----------
    folder : str or Path
    study_id : str, optional
        Defaults to the folder name.
    seed : int
    blinded : bool
    subscores : iterable of str
        Sub-scores to ask (see :data:`~napari_neurosynth.ratings.SUBSCORES`).
    turing : bool
        Ask the real-vs-synthetic question.
    references : iterable of str
        Names (subfolders in the first layout, file stems in the second) that are
        references shown beside each case (e.g. ``t1``), not conditions to rate.
    acquired : str
        Name of the acquired (real) condition; it must exist.

    Returns
    -------
    Study
        Not yet saved; call :meth:`Study.save`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NeurosynthError(f"{folder} is not a folder of volumes")
    reference_names = [str(r) for r in references]
    asked = tuple(subscores)
    bad = [s for s in asked if s not in SUBSCORES]
    if bad:
        raise NeurosynthError(f"unknown sub-score(s) {', '.join(bad)}; choose from {', '.join(SUBSCORES)}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    cases: dict[str, Case] = {}
    if (folder / acquired).is_dir():  # one folder per condition
        for sub in subdirs:
            for case_id, path in _volumes_in(sub).items():
                case = cases.setdefault(case_id, Case(case_id, {}, {}))
                (case.references if sub.name in reference_names else case.conditions)[sub.name] = path
        # acquired first, then models in name order
        for case in cases.values():
            case.conditions = dict(sorted(case.conditions.items(), key=lambda kv: (kv[0] != acquired, kv[0])))
    else:  # one folder per case
        for sub in subdirs:
            volumes = _volumes_in(sub)
            if acquired not in volumes:
                continue
            case = Case(sub.name, {}, {})
            for name, path in sorted(volumes.items(), key=lambda kv: (kv[0] != acquired, kv[0])):
                (case.references if name in reference_names else case.conditions)[name] = path
            cases[sub.name] = case
    cases = {k: c for k, c in cases.items() if c.conditions}
    if not cases:
        raise NeurosynthError(
            f"no volumes found in {folder}: expected {acquired}/<case>.nii.gz plus one folder per model, "
            f"or <case>/{acquired}.nii.gz plus one file per model"
        )
    if not any(acquired in c.conditions for c in cases.values()):
        raise NeurosynthError(f"no '{acquired}' condition found in {folder}")
    conditions = {cond for c in cases.values() for cond in c.conditions}
    if len(conditions) < 2:
        raise NeurosynthError(
            f"{folder} holds only the condition(s) {', '.join(sorted(conditions))}; add model outputs to compare"
        )
    return Study(
        id=study_id or folder.resolve().name,
        cases=list(cases.values()),
        blinded=blinded,
        seed=int(seed),
        subscores=asked,
        turing=turing,
    )


def rater_seed(study: Study, rater: str) -> int:
    """Seed of one rater's order: a hash of the study seed and rater id.

    Python's ``hash()`` of a string changes between runs, so a cryptographic hash
    gives the stable value needed to reproduce an order.

    Examples
    --------
    >>> study = Study("pilot", [], seed=3)
    >>> rater_seed(study, "dr-a") == rater_seed(study, "dr-a"), rater_seed(study, "dr-a") == rater_seed(study, "dr-b")
    (True, False)
    >>> 0 <= rater_seed(study, "dr-a") < 2**63   # fits SQLite's signed 64-bit INTEGER
    True
    """
    digest = hashlib.sha256(f"{study.id}\0{study.seed}\0{rater}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits SQLite's signed 64-bit INTEGER


def presentation_order(study: Study, rater: str) -> list[tuple[str, str]]:
    """The randomized order of (case, condition) items for one rater.

    A random permutation, then a pass that moves items so the same case is not
    shown twice in a row where that can be avoided (seeing the acquired image
    right before its synthetic twin would bias the second score).

    Examples
    --------
    >>> from pathlib import Path
    >>> study = Study("pilot", [Case(c, {"acquired": Path(f"acq/{c}.nii.gz"), "t1_to_t2": Path(f"syn/{c}.nii.gz")})
    ...                         for c in ("sub-01", "sub-02", "sub-03")], seed=3)
    >>> order = presentation_order(study, "dr-a")
    >>> sorted(order) == sorted(study.items), order == presentation_order(study, "dr-a")
    (True, True)
    >>> any(a[0] == b[0] for a, b in zip(order, order[1:]))   # never the same case twice in a row
    False
    """
    rng = np.random.default_rng(rater_seed(study, rater))
    items = [study.items[i] for i in rng.permutation(len(study.items))]
    n = len(items)
    for i in range(1, n):
        if items[i][0] != items[i - 1][0]:
            continue
        here = items[i][0]
        for j in range(i + 1, n):
            other = items[j][0]
            if other == here or (i + 1 < n and j != i + 1 and other == items[i + 1][0]):
                continue
            left = other if j - 1 == i else items[j - 1][0]
            right = items[j + 1][0] if j + 1 < n else None
            if here in (left, right):
                continue
            items[i], items[j] = items[j], items[i]
            break
    return items


class ReaderSession:
    """One rater working through one study.

    Opening a session for a rater who has one already resumes it: same order,
    same position. Every move is saved, every rating is recorded at once.

    Parameters
    ----------
    study : Study
    rater : str
    store : RatingStore
    clock : callable, optional
        Returns seconds (default :func:`time.monotonic`); time on each item is
        measured with it.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from napari_neurosynth.ratings import RatingStore
    >>> study = Study("pilot", [Case(c, {"acquired": Path(f"{c}-a.nii.gz"), "model": Path(f"{c}-m.nii.gz")})
    ...                         for c in ("sub-01", "sub-02")], subscores=("realism",))
    >>> store = RatingStore(Path(tempfile.mkdtemp()) / "r.sqlite")
    >>> ticks = iter(range(0, 1000, 10))   # a clock that advances 10 s per reading
    >>> session = ReaderSession(study, "dr-a", store, clock=lambda: float(next(ticks)))
    >>> session.progress, session.first_unrated(), session.resumed
    ((0, 4), 0, False)
    >>> row_id = session.rate(4, realism=3)
    >>> session.rating_for()["realism"], session.rate(4, realism=3) == row_id   # same answers: nothing new
    (3, True)
    >>> session.rating_for()["seconds_on_case"] > 0
    True
    >>> session.record(*session.current, 5, lesion_conspicuity=2)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study 'pilot' does not ask for lesion_conspicuity
    >>> session.record("sub-03", "model", 3)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study 'pilot' has no case 'sub-03'
    >>> _ = session.go_to(99); session.position, session.at_end, session.first_unrated()
    (3, True, 1)
    >>> session.paths(("sub-01", "model"))
    (PosixPath('sub-01-m.nii.gz'), {})
    >>> store.close()
    """

    def __init__(
        self, study: Study, rater: str, store: RatingStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        rater = "" if rater is None else str(rater).strip()
        if not rater:
            raise NeurosynthError("enter a rater id to start the study")
        self.study = study
        self.rater = rater
        self.store = store
        self._clock = clock
        store.register_study(study.id, study.to_dict())
        stored = store.load_session(rater, study.id)
        if stored is None:
            stored = store.create_session(rater, study.id, rater_seed(study, rater), presentation_order(study, rater))
        order = cast(list[tuple[str, str]], [tuple(item) for item in stored["order"]])
        if sorted(order) != sorted(study.items):
            raise NeurosynthError(
                f"study {study.id!r} changed since rater {rater!r} started it (cases or conditions differ); "
                "give the changed study a new id"
            )
        self.items: list[tuple[str, str]] = order
        self.resumed = stored["started_at"] != stored["updated_at"] or self._rated_count() > 0
        self._position = min(int(stored["position"]), len(order) - 1)
        self._elapsed: dict[tuple[str, str], float] = {}
        self._shown_at = self._clock()

    # -- navigation ------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Index of the item on screen (0-based)."""
        return self._position

    @property
    def current(self) -> tuple[str, str]:
        """(case id, condition) on screen."""
        return self.items[self._position]

    def go_to(self, position: int) -> tuple[str, str]:
        """Move to ``position`` (clamped to the study), save it, and return the item."""
        position = max(0, min(int(position), len(self.items) - 1))
        if position != self._position:
            self._stop_timer()
            self.store.set_position(self.rater, self.study.id, position)
            self._position = position
            self._shown_at = self._clock()
        return self.current

    def next(self) -> tuple[str, str]:
        """Move to the next item (stays on the last one)."""
        return self.go_to(self._position + 1)

    def previous(self) -> tuple[str, str]:
        """Move to the previous item (stays on the first one)."""
        return self.go_to(self._position - 1)

    def first_unrated(self) -> int | None:
        """Position of the first item without a rating, or ``None`` when all are rated."""
        rated = {(r["case_id"], r["condition"]) for r in self._current_ratings()}
        for i, item in enumerate(self.items):
            if item not in rated:
                return i
        return None

    @property
    def at_end(self) -> bool:
        return self._position == len(self.items) - 1

    # -- time on case ---------------------------------------------------------------------
    def _stop_timer(self) -> None:
        item = self.current
        self._elapsed[item] = self._elapsed.get(item, 0.0) + max(0.0, self._clock() - self._shown_at)
        self._shown_at = self._clock()

    def seconds_on_current(self) -> float:
        """Seconds spent on the current item in this session, over all visits."""
        return self._elapsed.get(self.current, 0.0) + max(0.0, self._clock() - self._shown_at)

    # -- ratings ----------------------------------------------------------------------------
    def _current_ratings(self) -> list[RatingRow]:
        return self.store.ratings(study=self.study.id, rater=self.rater)

    def _rated_count(self) -> int:
        items = set(self.study.items)
        return sum((r["case_id"], r["condition"]) in items for r in self._current_ratings())

    @property
    def n_rated(self) -> int:
        """Items of the study this rater has rated."""
        return self._rated_count()

    @property
    def progress(self) -> tuple[int, int]:
        """(items rated, items in the study)."""
        return self._rated_count(), len(self.items)

    def rating_for(self, item: tuple[str, str] | None = None) -> RatingRow | None:
        """The rating in force for ``item`` (default: the current one), or ``None``."""
        case_id, condition = item or self.current
        for row in reversed(self._current_ratings()):
            if row["case_id"] == case_id and row["condition"] == condition:
                return row
        return None

    def record(self, case_id: str, condition: str, score: int, **extra: Any) -> int:
        """Record a rating for an item of this study (refusing anything else); return the row id."""
        self.study.check_item(str(case_id), str(condition))
        unasked = [k for k in SUBSCORES if extra.get(k) is not None and k not in self.study.subscores]
        if unasked:
            raise NeurosynthError(f"study {self.study.id!r} does not ask for {', '.join(unasked)}")
        if not self.study.turing and (
            extra.get("turing_choice") is not None or extra.get("turing_confidence") is not None
        ):
            raise NeurosynthError(f"study {self.study.id!r} does not ask the real-vs-synthetic question")
        return self.store.record(self.rater, str(case_id), str(condition), score, study=self.study.id, **extra)

    def rate(self, score: int, **extra: Any) -> int:
        """Rate the item on screen, with the time spent on it; return the row id.

        Rating an item again with the same answers writes nothing and returns the
        existing row; different answers add a row that supersedes the old one.
        """
        case_id, condition = self.current
        previous = self.rating_for()
        if (
            previous is not None
            and previous["score"] == score
            and all(previous.get(k) == (v if v != "" else None) for k, v in extra.items() if k != "seconds_on_case")
        ):
            return int(previous["id"])
        extra.setdefault("seconds_on_case", round(self.seconds_on_current(), 3))
        return self.record(case_id, condition, score, **extra)

    def paths(self, item: tuple[str, str] | None = None) -> tuple[Path, dict[str, Path]]:
        """Volume path and reference paths of ``item`` (default: the current one)."""
        case_id, condition = item or self.current
        case = self.study.case(case_id)
        return case.conditions[condition], dict(case.references)
