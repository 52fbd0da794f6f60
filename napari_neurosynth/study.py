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
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np

from .atomic import atomic_write_text, is_partial
from .errors import NeurosynthError
from .protocol import (
    AnswerPolicy,
    HangingImage,
    HangingProtocol,
    ReadingSessionSpec,
    parse_answer_policy,
    parse_hanging,
    parse_sessions,
)
from .questions import (
    LEGACY_IDS,
    Question,
    default_questions,
    legacy_rating,
    parse_questions,
    questions_to_dicts,
    validate_answers,
)
from .ratings import SUBSCORES, AuditRow, RatingRow, RatingStore
from .yaml_lines import LinedDict, LinedList, where

__all__ = [
    "DEFAULT_WINDOW",
    "VOLUME_SUFFIXES",
    "Case",
    "ReaderSession",
    "ShownImage",
    "Study",
    "check_case_files",
    "create_study",
    "load_study",
    "migrate_study_file",
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
    #: Ground-truth lesion mask (non-zero = lesion) for localisation questions; all zero = a normal case.
    lesion_mask: Path | None = None

    def image(self, key: str) -> Path | None:
        """The path of a reference or condition ``key`` (what a hanging protocol names), or ``None``."""
        return self.references.get(key, self.conditions.get(key))


@dataclass(frozen=True)
class ShownImage:
    """One image on the reading screen, in hanging-protocol order (``is_test``: the image being rated)."""

    key: str
    path: Path
    preset: str
    contrast: str | None
    is_test: bool


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
    typed_questions : tuple of Question
        The study file's ``questions:`` list; empty for a file from before typed
        questions, which asks :func:`~napari_neurosynth.questions.default_questions`
        (see :attr:`questions`).
    hanging : HangingProtocol or None
        What hangs beside the test image (``None``: the test image and the case's references).
    policy : AnswerPolicy
        Going back and changing answers.
    sessions : tuple of ReadingSessionSpec
        Crossover reading sessions, read in this order (empty: one implicit session).

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
    typed_questions: tuple[Question, ...] = ()
    hanging: HangingProtocol | None = None
    policy: AnswerPolicy = field(default_factory=AnswerPolicy)
    sessions: tuple[ReadingSessionSpec, ...] = ()

    @property
    def questions(self) -> tuple[Question, ...]:
        """The questions asked of every item (the typed ones, else those of an old-style file)."""
        return self.typed_questions or default_questions(self.subscores, self.turing)

    @property
    def is_v2(self) -> bool:
        """True when the study uses a feature only the typed form of the study file can write."""
        return bool(
            self.typed_questions
            or self.hanging is not None
            or self.policy != AnswerPolicy()
            or self.sessions
            or any(c.lesion_mask is not None for c in self.cases)
        )

    def session_spec(self, session_id: str) -> ReadingSessionSpec | None:
        """The reading session ``session_id`` (``None`` for ``""``, the one session of a study without sessions)."""
        if not session_id:
            return None
        for spec in self.sessions:
            if spec.id == session_id:
                return spec
        raise NeurosynthError(
            f"study {self.id!r} has no reading session {session_id!r} "
            f"(it has {', '.join(s.id for s in self.sessions) or 'none'})"
        )

    def items_for(self, session_id: str = "") -> list[tuple[str, str]]:
        """The (case, condition) items rated in a reading session (all items for ``""``)."""
        spec = self.session_spec(session_id)
        if spec is None or spec.conditions is None:
            return self.items
        return [item for item in self.items if item[1] in spec.conditions]

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

    def to_dict(self, relative_to: str | os.PathLike | None = None, form: str = "auto") -> dict[str, Any]:
        """The definition as plain data (paths relative to ``relative_to`` when given).

        ``form`` is ``"v1"`` (the file form from before typed questions), ``"v2"``
        (typed questions, ``version: 2``) or ``"auto"``: v2 when the study uses
        anything v1 cannot say (:attr:`is_v2`), so that old files are written as they were.

        Examples
        --------
        >>> study = Study("pilot", [Case("c1", {"acquired": Path("a.nii.gz")})], subscores=("realism",))
        >>> v2 = study.to_dict(form="v2")
        >>> v2["version"], [q["id"] for q in v2["questions"]]
        (2, ['mos', 'realism', 'comment'])
        >>> study_from_dict(v2).questions == study.questions
        True
        """
        if form not in ("auto", "v1", "v2"):
            raise ValueError(f"form must be auto, v1 or v2, got {form!r}")
        v2 = form == "v2" or (form == "auto" and self.is_v2)

        def rel(path: Path) -> str:
            if relative_to is None:
                return str(path)
            return os.path.relpath(path, relative_to)

        def case_dict(case: Case) -> dict[str, Any]:
            out: dict[str, Any] = {"id": case.id, "conditions": {k: rel(v) for k, v in case.conditions.items()}}
            if case.references:
                out["references"] = {k: rel(v) for k, v in case.references.items()}
            if case.lesion_mask is not None:
                out["lesion_mask"] = rel(case.lesion_mask)
            return out

        out: dict[str, Any] = {"study": self.id}
        if v2:
            out["version"] = 2
        out.update(seed=int(self.seed), blinded=bool(self.blinded))
        if v2:
            out["questions"] = questions_to_dicts(self.questions)
            if self.hanging is not None:
                out["hanging"] = self.hanging.to_dict()
            if self.policy != AnswerPolicy():
                out["answers"] = self.policy.to_dict()
            if self.sessions:
                out["sessions"] = [spec.to_dict() for spec in self.sessions]
        else:
            out["questions"] = {"mos": True, "subscores": list(self.subscores), "turing": bool(self.turing)}
        out["display"] = {"window_percentiles": [float(v) for v in self.window]}
        out["cases"] = [case_dict(case) for case in self.cases]
        return out

    def save(self, path: str | os.PathLike[str], form: str = "auto") -> Path:
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
        data = self.to_dict(relative_to=path.parent.resolve(), form=form)
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
    napari_neurosynth.errors.NeurosynthError: study.yaml: unknown key(s) 'colour'; known: answers, blinded, ...
    >>> study_from_dict({"study": "pilot", "display": {"window_percentiles": [99, 1]}, "cases": []})
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: 'display.window_percentiles' must be [low, high] with 0 <= ...
    """
    base = Path(base)
    if not isinstance(data, dict):
        raise NeurosynthError(f"{source}: expected a mapping with keys study, cases, ...; got {type(data).__name__}")
    known = {
        "study",
        "id",
        "version",
        "seed",
        "blinded",
        "questions",
        "display",
        "cases",
        "description",
        "hanging",
        "answers",
        "sessions",
    }
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

    version = data.get("version", 1)
    if version not in (1, 2):
        raise NeurosynthError(f"{where(source, data, 'version')}: 'version' must be 1 or 2, got {version!r}")
    questions = data.get("questions") or {}
    typed: tuple[Question, ...] = ()
    if isinstance(questions, list):  # the typed form; sub-scores and Turing are questions of it
        typed = parse_questions(questions, source)
        ids = {q.id: q for q in typed}
        questions = {
            "subscores": [s for s in SUBSCORES if s in ids and ids[s].type == "likert"],
            "turing": "turing" in ids,
        }
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
    seen: dict[str, str] = {}
    for i, raw in enumerate(raw_cases):
        place = f"{where(source, raw_cases, i)}: case #{i + 1}"
        if not isinstance(raw, dict) or "id" not in raw or "conditions" not in raw:
            raise NeurosynthError(f"{place} needs 'id' and 'conditions'")
        case_id = str(raw["id"]).strip()
        if not case_id:
            raise NeurosynthError(f"{place}: empty id")
        if case_id in seen:
            raise NeurosynthError(
                f"{where(source, raw, 'id')}: case id {case_id!r} appears twice (first at {seen[case_id]})"
            )
        seen[case_id] = where("", raw, "id").lstrip(", ") or "an earlier case"
        if not isinstance(raw["conditions"], dict) or not raw["conditions"]:
            raise NeurosynthError(f"{place}: 'conditions' must be a non-empty mapping of condition -> volume path")
        extra = sorted(set(raw) - {"id", "conditions", "references", "lesion_mask"})
        if extra:
            raise NeurosynthError(
                f"{where(source, raw, extra[0])}: case #{i + 1}: unknown key(s) {', '.join(map(repr, extra))}"
            )
        mask = raw.get("lesion_mask")
        if mask is not None and (not isinstance(mask, (str, os.PathLike)) or not str(mask).strip()):
            raise NeurosynthError(f"{where(source, raw, 'lesion_mask')}: 'lesion_mask' must be a file path")
        mask_path = None if mask is None else Path(mask).expanduser()
        cases.append(
            Case(
                case_id,
                _paths(raw["conditions"], base, f"{source}: case {case_id!r}", "conditions"),
                _paths(raw.get("references"), base, f"{source}: case {case_id!r}", "references"),
                None if mask_path is None else (mask_path if mask_path.is_absolute() else base / mask_path),
            )
        )
    study = Study(
        id=str(study_id).strip(),
        cases=cases,
        blinded=blinded,
        seed=int(seed),
        subscores=tuple(subscores),
        turing=turing,
        window=(float(window[0]), float(window[1])),
        typed_questions=typed,
        hanging=None if data.get("hanging") is None else parse_hanging(data["hanging"], source),
        policy=parse_answer_policy(data.get("answers"), source),
    )
    study.sessions = parse_sessions(data.get("sessions"), study.conditions, source)
    _check_cross_references(study, data, source)
    return study


def _check_cross_references(study: Study, data: Mapping[str, Any], source: str) -> None:
    """Refuse hanging images a case lacks and localisation questions without lesion masks, naming the line."""
    protocols = [(study.hanging, data.get("hanging"))]
    raw_sessions = data.get("sessions") or []
    protocols += [(spec.hanging, raw.get("hanging")) for spec, raw in zip(study.sessions, raw_sessions)]
    for protocol, raw in protocols:
        if protocol is None:
            continue
        raw_images = raw.get("images", []) if isinstance(raw, Mapping) else []
        for key in protocol.image_keys:
            index = next(
                (
                    i
                    for i, item in enumerate(raw_images)
                    if str(item.get("image") if isinstance(item, Mapping) else item).strip() == key
                ),
                None,
            )
            for case in study.cases:
                if case.image(key) is None:
                    raise NeurosynthError(
                        f"{where(source, raw_images, index)}: hanging image {key!r} is missing from case {case.id!r} "
                        f"(it has {', '.join([*case.references, *case.conditions])}); add it to the case's references"
                    )
    localisation = [i for i, q in enumerate(study.typed_questions) if q.type == "localisation"]
    if localisation:
        raw_questions = data.get("questions")
        without = [c.id for c in study.cases if c.lesion_mask is None]
        if without:
            question = study.typed_questions[localisation[0]]
            shown = ", ".join(without[:3]) + (f" and {len(without) - 3} more" if len(without) > 3 else "")
            raise NeurosynthError(
                f"{where(source, raw_questions, localisation[0])}: localisation question {question.id!r} needs a "
                f"ground-truth 'lesion_mask' in every case; missing in {shown}"
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
        masks = [case.lesion_mask] if case.lesion_mask is not None else []
        for path in [*case.conditions.values(), *case.references.values(), *masks]:
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

    def construct_lined_map(loader: Any, node: Any) -> Any:
        # Mappings and sequences keep the line of each key/item, so that the checks
        # of questions, hanging protocols and sessions can name the line (yaml_lines).
        data = LinedDict()
        data.line = node.start_mark.line + 1
        yield data
        data.update(loader.construct_mapping(node))
        data.key_lines = {loader.construct_object(k): k.start_mark.line + 1 for k, _ in node.value}

    def construct_lined_seq(loader: Any, node: Any) -> Any:
        data = LinedList()
        data.line = node.start_mark.line + 1
        data.item_lines = [item.start_mark.line + 1 for item in node.value]
        yield data
        data.extend(loader.construct_sequence(node))

    StrictLoader.add_constructor("tag:yaml.org,2002:map", construct_lined_map)
    StrictLoader.add_constructor("tag:yaml.org,2002:seq", construct_lined_seq)
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
        masks = {"lesion_mask": case.lesion_mask} if case.lesion_mask is not None else {}
        for role, mapping in (("condition", case.conditions), ("reference", case.references), ("truth", masks)):
            for name, path in mapping.items():
                place = f"case {case.id!r}, {role} {name!r} ({path})"
                key = path.resolve()
                if key in by_file:
                    raise NeurosynthError(
                        f"{place} names the same file as {by_file[key]!r}; each image of a case must be its own file"
                    )
                by_file[key] = name
                if not path.exists():
                    raise NeurosynthError(f"{place}: the file does not exist")
                try:
                    vol = read_volume(path)
                except NeurosynthError as exc:
                    raise NeurosynthError(f"{place} cannot be opened: {exc}") from None
                if role != "condition":
                    continue
                if first is None:
                    first = (name, vol)
                elif not same_grid(vol, first[1]):
                    raise NeurosynthError(
                        f"{place} is on another grid (shape {vol.shape}, spacing "
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


def rater_seed(study: Study, rater: str, session: str = "") -> int:
    """Seed of one rater's order: a hash of the study seed, the rater id and the reading session.

    Python's ``hash()`` of a string changes between runs, so a cryptographic hash
    gives the stable value needed to reproduce an order.

    Examples
    --------
    >>> study = Study("pilot", [], seed=3)
    >>> rater_seed(study, "dr-a") == rater_seed(study, "dr-a"), rater_seed(study, "dr-a") == rater_seed(study, "dr-b")
    (True, False)
    >>> 0 <= rater_seed(study, "dr-a") < 2**63   # fits SQLite's signed 64-bit INTEGER
    True
    >>> rater_seed(study, "dr-a", "aided") == rater_seed(study, "dr-a", "unaided")   # a new order per session
    False
    """
    # The implicit session "" keeps the seed of studies from before reading sessions.
    key = f"{study.id}\0{study.seed}\0{rater}" + (f"\0{session}" if session else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits SQLite's signed 64-bit INTEGER


def presentation_order(study: Study, rater: str, session: str = "") -> list[tuple[str, str]]:
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
    rng = np.random.default_rng(rater_seed(study, rater, session))
    pool = study.items_for(session)
    items = [pool[i] for i in rng.permutation(len(pool))]
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
    """One rater working through one study (one reading session of it, in a crossover design).

    Opening a session for a rater who has one already resumes it: same order,
    same position. Every move is saved, every answer is recorded at once, and every
    changed answer keeps its old value in the store's audit trail.

    Parameters
    ----------
    study : Study
    rater : str
    store : RatingStore
    clock : callable, optional
        Returns seconds (default :func:`time.monotonic`); time on each item is
        measured with it, and only while the item is on screen (:meth:`pause`).
    session : str, optional
        The reading session of a crossover study (default: the first one this rater
        has not ended). Studies without ``sessions:`` have one implicit session ``""``.
    now : callable, optional
        Returns the current time with a time zone (default: UTC now); the washout
        between reading sessions is checked against it.

    Raises
    ------
    NeurosynthError
        No rater id; a reading session whose washout has not passed since the
        rater's previous session ended (the message gives the date it opens), or
        whose previous session is not finished; a study changed in a way that
        would orphan this rater's answers (an item or question removed).

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
    >>> session.rating_for()["seconds_on_case"] > 0, session.answers_for()
    (True, {'mos': 4, 'realism': 3})
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
        self,
        study: Study,
        rater: str,
        store: RatingStore,
        clock: Callable[[], float] = time.monotonic,
        *,
        session: str | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        rater = "" if rater is None else str(rater).strip()
        if not rater:
            raise NeurosynthError("enter a rater id to start the study")
        self.study = study
        self.rater = rater
        self.store = store
        self._clock = clock
        self._now = now or (lambda: datetime.now(timezone.utc))
        store.register_study(study.id, study.to_dict())
        self._check_definition_change()
        self.session_id = self._choose_session(session)
        self.spec = study.session_spec(self.session_id)
        items = study.items_for(self.session_id)
        stored: Mapping[str, Any] | None
        if self.session_id:
            stored = store.load_reading_session(rater, study.id, self.session_id)
            if stored is None:
                self._check_washout()
                stored = store.create_reading_session(
                    rater,
                    study.id,
                    self.session_id,
                    rater_seed(study, rater, self.session_id),
                    presentation_order(study, rater, self.session_id),
                )
        else:
            stored = store.load_session(rater, study.id)
            if stored is None:
                stored = store.create_session(
                    rater, study.id, rater_seed(study, rater), presentation_order(study, rater)
                )
        order = cast(list[tuple[str, str]], [tuple(item) for item in stored["order"]])
        self.items: list[tuple[str, str]] = self._reconcile(order, items)
        ended = stored.get("ended_at")
        self.ended_at: str | None = None if ended is None else str(ended)
        self.resumed = stored["started_at"] != stored["updated_at"] or self._rated_count() > 0
        self._position = min(int(stored["position"]), len(self.items) - 1)
        self._elapsed: dict[tuple[str, str], float] = {}
        self._running_since: float | None = self._clock()

    # -- reading sessions, washout and study changes -------------------------------------
    def _choose_session(self, session: str | None) -> str:
        if session is not None:
            self.study.session_spec(str(session))  # refuses an unknown one
            return str(session)
        for spec in self.study.sessions:
            record = self.store.load_reading_session(self.rater, self.study.id, spec.id)
            if record is None or record.get("ended_at") is None:
                return spec.id
        return self.study.sessions[-1].id if self.study.sessions else ""

    def _check_washout(self) -> None:
        """Refuse to start a session before the rater's previous one ended plus the washout."""
        ids = [s.id for s in self.study.sessions]
        index = ids.index(self.session_id)
        if index == 0 or self.spec is None:
            return
        previous = self.study.sessions[index - 1]
        record = self.store.load_reading_session(self.rater, self.study.id, previous.id)
        if record is None or record.get("ended_at") is None:
            raise NeurosynthError(
                f"rater {self.rater!r} must finish reading session {previous.id!r} of study {self.study.id!r} "
                f"before session {self.session_id!r}"
            )
        ended = datetime.fromisoformat(str(record["ended_at"]))
        opens = ended + self.spec.washout
        now = self._now()
        if now < opens:
            days = self.spec.washout.total_seconds() / 86400
            raise NeurosynthError(
                f"reading session {self.session_id!r} of study {self.study.id!r} opens for rater {self.rater!r} on "
                f"{opens.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC: the washout is {days:g} days after session "
                f"{previous.id!r} ended ({ended.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC)"
            )

    def _check_definition_change(self) -> None:
        """Refuse a study file that dropped questions this store holds answers to."""
        stored = self.store.study_definition(self.study.id)
        if not stored:
            return
        try:
            before = study_from_dict(stored, base="/")
        except NeurosynthError:
            return  # a definition this version cannot read: nothing to compare
        removed = [q.id for q in before.questions if q.id not in {q.id for q in self.study.questions}]
        if not removed:
            return
        answered = sorted({a["question"] for a in self.store.answers(study=self.study.id)} & set(removed))
        if answered:
            raise NeurosynthError(
                f"study {self.study.id!r} changed after answers were given: question(s) {', '.join(answered)} "
                "were removed; put them back or give the changed study a new id"
            )

    def _reconcile(self, order: list[tuple[str, str]], items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The stored order, checked against the study's items now.

        Items removed from the study are refused (answers to them would be
        orphaned, and the rater's order would no longer be the one drawn); items
        added are appended, in this rater's seeded order, with a warning.
        """
        wanted = set(items)
        removed = [item for item in order if item not in wanted]
        if removed:
            answered = {(r["case_id"], r["condition"]) for r in self._current_ratings()} | {
                (a["case_id"], a["condition"]) for a in self._answers()
            }
            rated = [item for item in removed if item in answered]
            shown = ", ".join(f"{c}/{k}" for c, k in (rated or removed)[:3])
            raise NeurosynthError(
                f"study {self.study.id!r} changed since rater {self.rater!r} started it (cases or conditions differ): "
                f"{len(removed)} item(s) removed, {len(rated)} of them rated ({shown}); "
                "give the changed study a new id"
            )
        added = [item for item in presentation_order(self.study, self.rater, self.session_id) if item not in set(order)]
        if added:
            warnings.warn(
                f"study {self.study.id!r}: {len(added)} item(s) added since rater {self.rater!r} started are "
                "appended to their order",
                stacklevel=3,
            )
        return order + added

    # -- what the reader sees -----------------------------------------------------------
    @property
    def questions(self) -> tuple[Question, ...]:
        """The questions asked of every item."""
        return self.study.questions

    @property
    def policy(self) -> AnswerPolicy:
        return self.study.policy

    @property
    def hanging(self) -> HangingProtocol:
        """The hanging protocol in force: the session's, else the study's, else the test image and its references."""
        if self.spec is not None and self.spec.hanging is not None:
            return self.spec.hanging
        if self.study.hanging is not None:
            return self.study.hanging
        keys = list(dict.fromkeys(k for case in self.study.cases for k in case.references))
        return HangingProtocol(images=(HangingImage("test"), *(HangingImage(k) for k in keys)))

    def shown_images(self, item: tuple[str, str] | None = None) -> list[ShownImage]:
        """The images of ``item`` (default: on screen) in hanging order, each with its window preset.

        A key the case lacks is left out (possible only for the default protocol;
        a study file's protocol is checked when it is loaded).
        """
        case_id, condition = item or self.current
        case = self.study.case(case_id)
        shown = []
        test_contrast = next((c for c in ("flair", "t2", "t1", "pd") if c in condition.lower()), None)
        for image in self.hanging.images:
            path = case.conditions[condition] if image.image == "test" else case.image(image.image)
            if path is None:
                continue
            contrast = image.contrast_for(test_contrast)
            shown.append(ShownImage(image.image, path, image.preset, contrast, image.image == "test"))
        return shown

    # -- navigation ------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Index of the item on screen (0-based)."""
        return self._position

    @property
    def current(self) -> tuple[str, str]:
        """(case id, condition) on screen."""
        return self.items[self._position]

    @property
    def can_go_back(self) -> bool:
        """The study lets the reader return to earlier items."""
        return self.policy.allow_back

    def go_to(self, position: int) -> tuple[str, str]:
        """Move to ``position`` (clamped to the study), save it, and return the item."""
        position = max(0, min(int(position), len(self.items) - 1))
        if position < self._position and not self.policy.allow_back:
            raise NeurosynthError(f"study {self.study.id!r} does not let readers go back to earlier images")
        if position != self._position:
            self._accumulate()
            if self.session_id:
                self.store.set_reading_position(self.rater, self.study.id, self.session_id, position)
            else:
                self.store.set_position(self.rater, self.study.id, position)
            self._position = position
            if self._running_since is not None:
                self._running_since = self._clock()
        return self.current

    def next(self) -> tuple[str, str]:
        """Move to the next item (stays on the last one)."""
        return self.go_to(self._position + 1)

    def previous(self) -> tuple[str, str]:
        """Move to the previous item (stays on the first one)."""
        return self.go_to(self._position - 1)

    def first_unrated(self) -> int | None:
        """Position of the first item not done, or ``None`` when all are done."""
        done = self._done_items()
        for i, item in enumerate(self.items):
            if item not in done:
                return i
        return None

    @property
    def at_end(self) -> bool:
        return self._position == len(self.items) - 1

    # -- time on case ---------------------------------------------------------------------
    def _accumulate(self) -> None:
        if self._running_since is not None:
            now = self._clock()
            item = self.current
            self._elapsed[item] = self._elapsed.get(item, 0.0) + max(0.0, now - self._running_since)
            self._running_since = now

    def pause(self) -> None:
        """Stop the clock of the item on screen (the reading window is hidden or minimised)."""
        self._accumulate()
        self._running_since = None

    def resume(self) -> None:
        """Start the clock again when the item is back on screen."""
        if self._running_since is None:
            self._running_since = self._clock()

    @property
    def paused(self) -> bool:
        return self._running_since is None

    def seconds_on_current(self) -> float:
        """Seconds the current item has been on screen in this session, over all visits."""
        running = 0.0 if self._running_since is None else max(0.0, self._clock() - self._running_since)
        return self._elapsed.get(self.current, 0.0) + running

    # -- answers ----------------------------------------------------------------------------
    def _current_ratings(self) -> list[RatingRow]:
        return self.store.ratings(study=self.study.id, rater=self.rater)

    def _answers(self) -> list[Any]:
        return self.store.answers(study=self.study.id, rater=self.rater, reading_session=self.session_id)

    def _all_answers(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Current answers of every item: typed answers, else (files from before them) the rating's columns."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        rated_at: dict[tuple[str, str], str] = {}
        if not self.session_id:  # crossover sessions are typed-only: ratings rows have no session
            for row in self._current_ratings():
                out[(row["case_id"], row["condition"])] = _rating_answers(row)
                rated_at[(row["case_id"], row["condition"])] = str(row["created_at"])
        for answer in self._answers():
            item = (answer["case_id"], answer["condition"])
            # A ratings row newer than the typed answer (saved to the server's journal while
            # it was away, where typed answers cannot go) holds the answer in force.
            if answer["question"] in LEGACY_IDS and rated_at.get(item, "") > str(answer["created_at"]):
                continue
            out.setdefault(item, {})[answer["question"]] = answer["value"]
        return out

    def answers_for(self, item: tuple[str, str] | None = None) -> dict[str, Any]:
        """The answers in force for ``item`` (default: on screen), question id -> value."""
        return dict(self._all_answers().get(item or self.current, {}))

    def _is_done(self, answers: Mapping[str, Any]) -> bool:
        if not self.study.typed_questions:  # an old-style study: rated once the MOS is given
            return "mos" in answers
        return all(q.id in answers for q in self.questions if q.required)

    def _done_items(self) -> set[tuple[str, str]]:
        return {item for item, answers in self._all_answers().items() if self._is_done(answers)}

    def is_done(self, item: tuple[str, str] | None = None) -> bool:
        """Every required question of ``item`` (default: on screen) is answered."""
        return self._is_done(self.answers_for(item))

    def _rated_count(self) -> int:
        return len(self._done_items() & set(self.items))

    @property
    def n_rated(self) -> int:
        """Items of this session this rater has done."""
        return self._rated_count()

    @property
    def progress(self) -> tuple[int, int]:
        """(items done, items in this reading session): this rater's own progress."""
        return self._rated_count(), len(self.items)

    def can_edit(self, item: tuple[str, str] | None = None) -> bool:
        """False when ``item`` is done and the study does not let answers change."""
        return self.policy.allow_edit or not self.is_done(item)

    def audit(self, item: tuple[str, str] | None = None) -> list[AuditRow]:
        """The audit trail of this rater's answers to ``item`` (default: on screen), oldest first."""
        case_id, condition = item or self.current
        rows = self.store.audit(study=self.study.id, rater=self.rater, reading_session=self.session_id)
        return [r for r in rows if r["case_id"] == case_id and r["condition"] == condition]

    def answer(self, answers: Mapping[str, Any], *, partial: bool = False, **legacy_extra: Any) -> int:
        """Answer the item on screen; return the stored row id.

        ``answers`` maps question ids to values (checked by
        :func:`~napari_neurosynth.questions.validate_answers`; ``None`` or ``""`` clears).
        Unless ``partial``, every required question must be answered, and a
        question left out clears an earlier answer to it. The same answers again
        write nothing and return the same id. A changed answer to a done item is
        refused when the study does not let answers change.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> from napari_neurosynth.questions import Question
        >>> from napari_neurosynth.protocol import AnswerPolicy
        >>> from napari_neurosynth.ratings import RatingStore
        >>> study = Study("p", [Case("c1", {"acquired": Path("a.nii.gz")})], policy=AnswerPolicy(allow_edit=False),
        ...               typed_questions=(Question("diag", "yes_no", "Diagnostic?"),))
        >>> store = RatingStore(Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> session = ReaderSession(study, "dr-a", store)
        >>> session.answer({"diag": "y"}) > 0, session.progress, session.can_edit()
        (True, (1, 1), False)
        >>> session.answer({"diag": "n"})
        Traceback (most recent call last):
        ...
        napari_neurosynth.errors.NeurosynthError: study 'p' does not let answers change once given (image 1)
        >>> store.close()
        """
        case_id, condition = self.current
        source = f"study {self.study.id!r}, image {self._position + 1}"
        clean = validate_answers(self.questions, answers, partial=partial, source=source)
        previous = self.answers_for()
        cleared = {k for k in answers if k not in clean and k in previous}
        if not partial:
            cleared |= {k for k in previous if k not in clean}
        delta: dict[str, Any] = {k: v for k, v in clean.items() if previous.get(k) != v}
        delta.update({k: None for k in cleared})
        if not delta and not legacy_extra.get("metadata"):
            return self._current_id()
        if not self.policy.allow_edit and self._is_done(previous) and any(k in previous for k in delta):
            raise NeurosynthError(
                f"study {self.study.id!r} does not let answers change once given (image {self._position + 1})"
            )
        merged = {k: v for k, v in {**previous, **delta}.items() if v is not None}
        legacy = None
        if not self.session_id:
            rating = legacy_rating(merged)
            if rating is not None and (
                any(k in LEGACY_IDS for k in delta) or self.rating_for() is None or legacy_extra
            ):
                legacy = (rating[0], {**rating[1], **{k: v for k, v in legacy_extra.items() if v is not None}})
        seconds = legacy_extra.pop("seconds_on_case", None)
        if seconds is None:
            seconds = round(self.seconds_on_current(), 3)
        row = self.store.record_answers(
            self.rater,
            self.study.id,
            case_id,
            condition,
            delta,
            reading_session=self.session_id,
            seconds_on_case=seconds,
            legacy=None
            if legacy is None
            else (legacy[0], {k: v for k, v in legacy[1].items() if k != "seconds_on_case"}),
        )
        return row or self._current_id()

    def _current_id(self) -> int:
        if not self.session_id:
            rating = self.rating_for()
            if rating is not None:
                return int(rating["id"])
        case_id, condition = self.current
        ids = [a["id"] for a in self._answers() if a["case_id"] == case_id and a["condition"] == condition]
        return max(ids, default=0)

    def finish(self) -> datetime:
        """End this reading session (every item done); the washout of the next one counts from now."""
        left = len(self.items) - self._rated_count()
        if left:
            where_ = f"reading session {self.session_id!r}" if self.session_id else "the study"
            raise NeurosynthError(f"rater {self.rater!r} has {left} image(s) left in {where_}")
        ended = self._now()
        if self.session_id:
            self.store.end_reading_session(self.rater, self.study.id, self.session_id, ended)
            self.ended_at = ended.astimezone(timezone.utc).isoformat()
        return ended

    # -- the ratings API from before typed questions --------------------------------------------
    def rating_for(self, item: tuple[str, str] | None = None) -> RatingRow | None:
        """The rating in force for ``item`` (default: the current one), or ``None``."""
        case_id, condition = item or self.current
        for row in reversed(self._current_ratings()):
            if row["case_id"] == case_id and row["condition"] == condition:
                return row
        return None

    def _check_asked(self, extra: Mapping[str, Any]) -> None:
        """Refuse sub-scores or a Turing answer that this study does not ask for."""
        unasked = [k for k in SUBSCORES if extra.get(k) is not None and k not in self.study.subscores]
        if unasked:
            raise NeurosynthError(f"study {self.study.id!r} does not ask for {', '.join(unasked)}")
        if not self.study.turing and (
            extra.get("turing_choice") is not None or extra.get("turing_confidence") is not None
        ):
            raise NeurosynthError(f"study {self.study.id!r} does not ask the real-vs-synthetic question")

    def record(self, case_id: str, condition: str, score: int, **extra: Any) -> int:
        """Record a rating for an item of this study (refusing anything else); return the row id."""
        self.study.check_item(str(case_id), str(condition))
        self._check_asked(extra)
        return self.store.record(self.rater, str(case_id), str(condition), score, study=self.study.id, **extra)

    def rate(self, score: int, **extra: Any) -> int:
        """Rate the item on screen (MOS, sub-scores, Turing choice, comment), with the time on it; return the row id.

        The ratings API from before typed questions, kept for scripts: the values go
        through :meth:`answer` as the answers to the questions of those ids. Rating
        an item again with the same answers writes nothing and returns the
        existing row; different answers add a row that supersedes the old one.
        """
        if (
            isinstance(score, bool)
            or not isinstance(score, numbers.Real)  # numpy integers and floats too
            or not float(score).is_integer()
            or not 1 <= float(score) <= 5
        ):
            raise NeurosynthError(f"score must be an integer from 1 to 5, got {score!r}")
        unknown = sorted(
            set(extra) - {*SUBSCORES, "turing_choice", "turing_confidence", "comment", "seconds_on_case", "metadata"}
        )
        if unknown:
            raise NeurosynthError(f"unknown rating field(s) {', '.join(unknown)}")
        self._check_asked(extra)
        answers: dict[str, Any] = {"mos": score}
        answers.update({k: extra[k] for k in SUBSCORES if k in extra})
        if "turing_choice" in extra:
            choice = extra["turing_choice"]
            answers["turing"] = choice.strip().lower() if isinstance(choice, str) else choice
        if "turing_confidence" in extra:
            answers["turing_confidence"] = extra["turing_confidence"]
        if "comment" in extra:
            answers["comment"] = "" if extra["comment"] is None else str(extra["comment"])
        legacy_extra = {k: extra[k] for k in ("seconds_on_case", "metadata") if extra.get(k) is not None}
        return self.answer(answers, partial=True, **legacy_extra)

    def paths(self, item: tuple[str, str] | None = None) -> tuple[Path, dict[str, Path]]:
        """Volume path and reference paths of ``item`` (default: the current one)."""
        case_id, condition = item or self.current
        case = self.study.case(case_id)
        return case.conditions[condition], dict(case.references)


def _rating_answers(row: Mapping[str, Any]) -> dict[str, Any]:
    """The answers a ratings row holds, by question id (for stores from before typed answers)."""
    out: dict[str, Any] = {"mos": row["score"]}
    out.update({k: row[k] for k in SUBSCORES if row.get(k) is not None})
    if row.get("turing_choice") is not None:
        out["turing"] = row["turing_choice"]
    if row.get("turing_confidence") is not None:
        out["turing_confidence"] = row["turing_confidence"]
    if row.get("comment"):
        out["comment"] = row["comment"]
    return out


def migrate_study_file(source: str | os.PathLike[str], output: str | os.PathLike[str], *, force: bool = False) -> Study:
    """Write an old-style study file in the typed form (``version: 2``), asking the same questions.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "old.yaml").write_text("study: pilot\\nquestions: {turing: true}\\n"
    ...                                      "cases:\\n  - id: c1\\n    conditions: {acquired: a.nii.gz}\\n")
    >>> study = migrate_study_file(folder / "old.yaml", folder / "new.yaml")
    >>> new = load_study(folder / "new.yaml", check_files=False)
    >>> [q.id for q in new.questions], new.case("c1").conditions == study.case("c1").conditions
    (['mos', 'turing', 'turing_confidence', 'comment'], True)
    """
    from .atomic import check_output_path

    output = Path(output)
    check_output_path(output, force=force, inputs=[Path(source)])
    study = load_study(source, check_files=False)
    study.save(output, form="v2")
    return study
