"""Typed questions of a reader study, and the check of an answer against its question.

A study file may list its questions (``questions:`` as a list, see
``docs/reader-study.md``); each has an ``id`` (the key of its answer), a ``type``
from :data:`QUESTION_TYPES`, a ``prompt``, ``required`` (default true) and the
settings of its type. A study file from before typed questions (``questions:`` a
mapping of ``mos``, ``subscores``, ``turing``) gets :func:`default_questions`,
which ask exactly what such a file asked: the 1-5 MOS, the chosen sub-scores and
the real-vs-synthetic choice with its confidence, plus a free comment.

Every answer is checked here (type, range, options, required) before the store
sees it; the value that comes back is the normalised one that is stored.

Examples
--------
>>> qs = parse_questions([
...     {"id": "mos", "type": "likert", "prompt": "Overall quality", "anchors": {1: "bad", 5: "excellent"}},
...     {"id": "artefacts", "type": "multiple_choice", "options": ["motion", "blur"], "required": False}])
>>> [q.id for q in qs], qs[0].keyboard_map()["5"]
(['mos', 'artefacts'], 5)
>>> validate_answers(qs, {"mos": "4", "artefacts": ["blur", "motion"]})
{'mos': 4, 'artefacts': ['motion', 'blur']}
>>> validate_answers(qs, {"artefacts": []})
Traceback (most recent call last):
...
napari_neurosynth.errors.NeurosynthError: answer: question 'mos' (Overall quality) is required
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import NeurosynthError
from .yaml_lines import where

__all__ = [
    "LEGACY_IDS",
    "QUESTION_TYPES",
    "SUBSCORE_PROMPTS",
    "Question",
    "default_questions",
    "legacy_rating",
    "parse_questions",
    "questions_to_dicts",
    "validate_answers",
]

#: The question types a study file may use.
QUESTION_TYPES = ("likert", "choice", "multiple_choice", "number", "yes_no", "text", "localisation")

#: Spellings accepted for a type, mapped to the canonical name.
_TYPE_ALIASES = {
    "single_choice": "choice",
    "multiple": "multiple_choice",
    "yesno": "yes_no",
    "boolean": "yes_no",
    "free_text": "text",
    "localization": "localisation",
}

#: Prompts of the sub-scores of studies from before typed questions.
SUBSCORE_PROMPTS = {
    "realism": "Realism",
    "anatomical_correctness": "Anatomical correctness",
    "lesion_conspicuity": "Lesion conspicuity",
    "diagnostic_usability": "Diagnostic usability",
}

#: Question ids that also have a column of their own in the ratings table (the MOS and the rest).
LEGACY_IDS = ("mos", *SUBSCORE_PROMPTS, "turing", "turing_confidence", "comment")

#: The MOS anchors every study before typed questions showed.
MOS_ANCHORS = {1: "bad", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}

_COMMON_KEYS = {"id", "type", "prompt", "required", "keys"}
_TYPE_KEYS = {
    "likert": {"min", "max", "anchors"},
    "choice": {"options", "labels"},
    "multiple_choice": {"options", "labels", "min_selected", "max_selected"},
    "number": {"min", "max", "step", "unit"},
    "yes_no": set(),
    "text": {"max_length"},
    "localisation": {"margin_mm", "max_marks"},
}


@dataclass(frozen=True)
class Question:
    """One question of a study.

    Examples
    --------
    >>> q = Question("size", "number", "Largest lesion diameter", min=0, max=80, step=0.5, unit="mm")
    >>> q.validate("12.5"), q.validate(3)
    (12.5, 3.0)
    >>> q.validate(81)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: question 'size': answer must be a number from 0 to 80 (mm), got 81
    >>> Question("diag", "yes_no", "Diagnostic?").validate("y"), Question("diag", "yes_no", "").keyboard_map()
    (True, {'y': True, 'n': False})
    >>> marks = Question("lesions", "localisation", "Mark lesions", margin_mm=3).validate([[10, -2.5, 30, 4]])
    >>> marks
    [{'x': 10.0, 'y': -2.5, 'z': 30.0, 'confidence': 4}]
    """

    id: str
    type: str
    prompt: str = ""
    required: bool = True
    min: float | None = None
    max: float | None = None
    anchors: dict[int, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    min_selected: int = 0
    max_selected: int | None = None
    step: float | None = None
    unit: str = ""
    max_length: int | None = None
    margin_mm: float = 0.0
    max_marks: int | None = None
    keys: dict[str, Any] = field(default_factory=dict)

    # -- keyboard ------------------------------------------------------------------
    def keyboard_map(self) -> dict[str, Any]:
        """Keys that answer this question: key -> value.

        Likert: the digits of its range; choices: ``1``, ``2``, ... for the options
        in order (a multiple choice toggles); yes/no: ``y``/``n``. Number, text and
        localisation are typed or clicked (an empty map); ``keys:`` in the study file
        replaces the defaults.

        Examples
        --------
        >>> Question("t", "choice", options=("real", "synthetic"), keys={"r": "real", "s": "synthetic"}).keyboard_map()
        {'r': 'real', 's': 'synthetic'}
        >>> Question("q", "likert", min=0, max=3).keyboard_map()
        {'0': 0, '1': 1, '2': 2, '3': 3}
        """
        if self.keys:
            return dict(self.keys)
        if self.type == "likert":
            low, high = int(self.low), int(self.high)
            if 0 <= low and high <= 9:
                return {str(v): v for v in range(low, high + 1)}
            return {}
        if self.type in ("choice", "multiple_choice"):
            return {str(i + 1): option for i, option in enumerate(self.options[:9])}
        if self.type == "yes_no":
            return {"y": True, "n": False}
        return {}

    @property
    def low(self) -> float:
        """Lowest allowed value (likert default 1)."""
        return self.min if self.min is not None else (1 if self.type == "likert" else -math.inf)

    @property
    def high(self) -> float:
        """Highest allowed value (likert default 5)."""
        return self.max if self.max is not None else (5 if self.type == "likert" else math.inf)

    def label(self, option: str) -> str:
        """The text shown for a choice option."""
        return self.labels.get(option, option)

    # -- answers -------------------------------------------------------------------------
    def is_empty(self, value: object) -> bool:
        """True when ``value`` means "not answered" (``None``, ``""``; an empty localisation is an answer)."""
        return value is None or (isinstance(value, str) and not value.strip() and self.type != "text") or value == ""

    def validate(self, value: object) -> Any:
        """The normalised answer, or :class:`NeurosynthError` naming the question and the problem."""
        check = getattr(self, f"_check_{self.type}")
        return check(value)

    def _fail(self, expected: str, value: object) -> NeurosynthError:
        return NeurosynthError(f"question {self.id!r}: answer must be {expected}, got {value!r}")

    def _number(self, value: object, expected: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            raise self._fail(expected, value)
        try:
            number = float(value)
        except ValueError:
            raise self._fail(expected, value) from None
        if not math.isfinite(number):
            raise self._fail(expected, value)
        return number

    def _check_likert(self, value: object) -> int:
        expected = f"an integer from {int(self.low)} to {int(self.high)}"
        number = self._number(value, expected)
        if not number.is_integer() or not self.low <= number <= self.high:
            raise self._fail(expected, value)
        return int(number)

    def _check_number(self, value: object) -> float:
        span = f"from {_fmt(self.low)} to {_fmt(self.high)}" if self.min is not None or self.max is not None else ""
        expected = " ".join(p for p in ("a number", span, f"({self.unit})" if self.unit else "") if p)
        number = self._number(value, expected)
        if not self.low <= number <= self.high:
            raise self._fail(expected, value)
        if self.step:
            steps = (number - (self.min or 0.0)) / self.step
            if abs(steps - round(steps)) > 1e-6:
                raise self._fail(f"{expected} in steps of {_fmt(self.step)}", value)
        return number

    def _check_choice(self, value: object) -> str:
        text = "" if value is None else str(value).strip()
        if text not in self.options:
            raise self._fail(f"one of {', '.join(self.options)}", value)
        return text

    def _check_multiple_choice(self, value: object) -> list[str]:
        if isinstance(value, str):
            value = [v for v in value.split(";") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise self._fail(f"a list drawn from {', '.join(self.options)}", value)
        chosen = {str(v).strip() for v in value}
        unknown = sorted(chosen - set(self.options))
        if unknown:
            raise self._fail(f"a list drawn from {', '.join(self.options)}", unknown[0])
        if len(chosen) < self.min_selected or (self.max_selected is not None and len(chosen) > self.max_selected):
            high = "" if self.max_selected is None else f" and at most {self.max_selected}"
            raise self._fail(f"at least {self.min_selected}{high} choice(s)", sorted(chosen))
        return [o for o in self.options if o in chosen]

    def _check_yes_no(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text in ("yes", "y", "true"):
            return True
        if text in ("no", "n", "false"):
            return False
        raise self._fail("yes or no", value)

    def _check_text(self, value: object) -> str:
        if not isinstance(value, str):
            raise self._fail("text", value)
        text = value.strip()
        if self.max_length is not None and len(text) > self.max_length:
            raise self._fail(f"at most {self.max_length} characters", f"{len(text)} characters")
        return text

    def _check_localisation(self, value: object) -> list[dict[str, Any]]:
        expected = "a list of marks {x, y, z (world mm, RAS), confidence 1-5}"
        if not isinstance(value, (list, tuple)):
            raise self._fail(expected, value)
        marks = []
        for mark in value:
            if isinstance(mark, Mapping):
                parts = [mark.get(k) for k in ("x", "y", "z", "confidence")]
            elif isinstance(mark, (list, tuple)) and len(mark) == 4:
                parts = list(mark)
            else:
                raise self._fail(expected, mark)
            try:
                x, y, z = (self._number(p, expected) for p in parts[:3])
            except NeurosynthError:
                raise self._fail(expected, mark) from None
            confidence = parts[3]
            if (
                isinstance(confidence, bool)
                or not isinstance(confidence, numbers.Real)
                or not float(confidence).is_integer()
                or not 1 <= float(confidence) <= 5
            ):
                raise NeurosynthError(
                    f"question {self.id!r}: the confidence of a mark must be an integer from 1 to 5, got {confidence!r}"
                )
            marks.append({"x": x, "y": y, "z": z, "confidence": int(float(confidence))})
        if self.max_marks is not None and len(marks) > self.max_marks:
            raise self._fail(f"at most {self.max_marks} marks", f"{len(marks)} marks")
        return marks

    # -- the study-file form ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The question as a study file writes it (defaults left out).

        Examples
        --------
        >>> Question("mos", "likert", "Overall", anchors={1: "bad"}).to_dict()
        {'id': 'mos', 'type': 'likert', 'prompt': 'Overall', 'anchors': {1: 'bad'}}
        """
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.prompt:
            out["prompt"] = self.prompt
        if not self.required:
            out["required"] = False
        defaults = Question(self.id, self.type)
        for name in sorted(_TYPE_KEYS[self.type]):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                out[name] = list(value) if isinstance(value, tuple) else value
        if self.keys:
            out["keys"] = dict(self.keys)
        return out


def _fmt(value: float) -> str:
    return f"{value:g}"


def _number_field(raw: Mapping[str, Any], name: str, place: str, integer: bool = False) -> Any:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise NeurosynthError(f"{place}: '{name}' must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise NeurosynthError(f"{place}: '{name}' must be an integer, got {value!r}")
    return int(float(value)) if integer else float(value)


def _question(raw: object, source: str, node: Any, index: int) -> Question:
    place = where(source, node, index)
    if not isinstance(raw, Mapping):
        raise NeurosynthError(f"{place}: each question must be a mapping with id, type, prompt, ...; got {raw!r}")
    qid = raw.get("id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
        raise NeurosynthError(f"{place}: a question needs an 'id'")
    qid = str(qid).strip()
    kind = raw.get("type")
    kind = _TYPE_ALIASES.get(str(kind), kind)
    if kind not in QUESTION_TYPES:
        raise NeurosynthError(
            f"{where(source, raw, 'type')}: question {qid!r} has unknown type {raw.get('type')!r}; "
            f"use one of {', '.join(QUESTION_TYPES)}"
        )
    unknown = sorted(set(raw) - _COMMON_KEYS - _TYPE_KEYS[kind])
    if unknown:
        raise NeurosynthError(
            f"{where(source, raw, unknown[0])}: question {qid!r} ({kind}) has unknown key(s) "
            f"{', '.join(map(repr, unknown))}; it takes {', '.join(sorted(_COMMON_KEYS | _TYPE_KEYS[kind]))}"
        )
    place = where(source, raw)
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise NeurosynthError(f"{where(source, raw, 'required')}: 'required' must be true or false")
    prompt = raw.get("prompt", "")
    if not isinstance(prompt, (str, int, float)) or isinstance(prompt, bool):
        raise NeurosynthError(f"{where(source, raw, 'prompt')}: 'prompt' must be text")
    args: dict[str, Any] = {}
    if kind in ("likert", "number"):
        integer = kind == "likert"
        args["min"] = _number_field(raw, "min", where(source, raw, "min"), integer)
        args["max"] = _number_field(raw, "max", where(source, raw, "max"), integer)
        low = args["min"] if args["min"] is not None else (1 if integer else -math.inf)
        high = args["max"] if args["max"] is not None else (5 if integer else math.inf)
        if low >= high:
            raise NeurosynthError(f"{place}: question {qid!r} needs min < max, got {low} and {high}")
    if kind == "likert":
        anchors = raw.get("anchors") or {}
        if not isinstance(anchors, Mapping):
            raise NeurosynthError(f"{where(source, raw, 'anchors')}: 'anchors' must map values to labels")
        clean: dict[int, str] = {}
        for value, text in anchors.items():
            try:
                level = int(value)
            except (TypeError, ValueError):
                level = None
            if level is None or str(level) != str(value).strip() or not low <= level <= high:
                raise NeurosynthError(
                    f"{where(source, anchors, value)}: anchor {value!r} of question {qid!r} is not a value "
                    f"from {low} to {high}"
                )
            clean[level] = str(text)
        args["anchors"] = dict(sorted(clean.items()))
    if kind in ("choice", "multiple_choice"):
        options = raw.get("options")
        if not isinstance(options, list) or len(options) < 2:
            raise NeurosynthError(f"{where(source, raw, 'options')}: question {qid!r} needs at least two 'options'")
        names = [str(o).strip() for o in options]
        if len(set(names)) != len(names) or not all(names):
            raise NeurosynthError(
                f"{where(source, raw, 'options')}: the options of {qid!r} must be distinct and non-empty"
            )
        args["options"] = tuple(names)
        labels = raw.get("labels") or {}
        if not isinstance(labels, Mapping) or any(str(k) not in names for k in labels):
            raise NeurosynthError(f"{where(source, raw, 'labels')}: 'labels' must map options of {qid!r} to text")
        args["labels"] = {str(k): str(v) for k, v in labels.items()}
    if kind == "multiple_choice":
        args["min_selected"] = _number_field(raw, "min_selected", place, True) or 0
        args["max_selected"] = _number_field(raw, "max_selected", place, True)
    if kind == "number":
        step = _number_field(raw, "step", where(source, raw, "step"))
        if step is not None and step <= 0:
            raise NeurosynthError(f"{where(source, raw, 'step')}: 'step' must be > 0")
        args["step"] = step
        args["unit"] = str(raw.get("unit", ""))
    if kind == "text":
        args["max_length"] = _number_field(raw, "max_length", place, True)
    if kind == "localisation":
        margin = _number_field(raw, "margin_mm", where(source, raw, "margin_mm")) or 0.0
        if margin < 0:
            raise NeurosynthError(f"{where(source, raw, 'margin_mm')}: 'margin_mm' must be >= 0")
        args["margin_mm"] = margin
        args["max_marks"] = _number_field(raw, "max_marks", place, True)
    keys = raw.get("keys") or {}
    if not isinstance(keys, Mapping):
        raise NeurosynthError(f"{where(source, raw, 'keys')}: 'keys' must map keys to answers")
    question = Question(qid, kind, str(prompt), required, keys={str(k): v for k, v in keys.items()}, **args)
    for key, value in question.keys.items():
        try:
            question.validate([value] if kind == "multiple_choice" else value)
        except NeurosynthError as exc:
            raise NeurosynthError(f"{where(source, keys, key)}: key {key!r}: {exc}") from None
    return question


def parse_questions(raw: object, source: str = "study") -> tuple[Question, ...]:
    """The questions of a study file's ``questions:`` list.

    Raises
    ------
    NeurosynthError
        Naming the file and the line: an unknown type or key, a bad range, two
        questions with one id, options missing.

    Examples
    --------
    >>> parse_questions([{"id": "q", "type": "slider"}], source="s.yaml")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: s.yaml: question 'q' has unknown type 'slider'; use one of likert, ...
    >>> parse_questions([{"id": "q", "type": "likert"}, {"id": "q", "type": "text"}])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: question id 'q' appears twice
    """
    if not isinstance(raw, list) or not raw:
        raise NeurosynthError(f"{where(source, raw)}: 'questions' must be a non-empty list of questions")
    questions: list[Question] = []
    for i, item in enumerate(raw):
        question = _question(item, source, raw, i)
        if any(q.id == question.id for q in questions):
            raise NeurosynthError(f"{where(source, raw, i)}: question id {question.id!r} appears twice")
        questions.append(question)
    return tuple(questions)


def default_questions(subscores: Iterable[str] = (), turing: bool = False) -> tuple[Question, ...]:
    """The questions of a study file without a ``questions:`` list: what such files always asked.

    Examples
    --------
    >>> [q.id for q in default_questions(("realism",), turing=True)]
    ['mos', 'realism', 'turing', 'turing_confidence', 'comment']
    >>> default_questions()[0].anchors[5], default_questions()[-1].required
    ('excellent', False)
    """
    questions = [Question("mos", "likert", "Overall image quality (MOS)", anchors=dict(MOS_ANCHORS))]
    for name in subscores:
        questions.append(Question(name, "likert", SUBSCORE_PROMPTS[name]))
    if turing:
        questions.append(
            Question(
                "turing",
                "choice",
                "Real or synthetic?",
                options=("real", "synthetic"),
                keys={"r": "real", "s": "synthetic"},
            )
        )
        questions.append(Question("turing_confidence", "likert", "Confidence", anchors={1: "guess", 5: "certain"}))
    questions.append(Question("comment", "text", "Comment", required=False))
    return tuple(questions)


def questions_to_dicts(questions: Sequence[Question]) -> list[dict[str, Any]]:
    """The ``questions:`` list of a study file."""
    return [q.to_dict() for q in questions]


def validate_answers(
    questions: Sequence[Question], answers: Mapping[str, Any], *, partial: bool = False, source: str = "answer"
) -> dict[str, Any]:
    """Check answers against their questions; return the normalised answers (unanswered ones left out).

    Parameters
    ----------
    questions : sequence of Question
    answers : mapping
        Question id -> value; ``None`` or ``""`` means not answered.
    partial : bool
        Allow required questions to be left unanswered (a draft).

    Examples
    --------
    >>> qs = default_questions(turing=True)
    >>> validate_answers(qs, {"mos": 5, "turing": "synthetic", "turing_confidence": 2, "comment": ""})
    {'mos': 5, 'turing': 'synthetic', 'turing_confidence': 2}
    >>> validate_answers(qs, {"mos": 5, "sharpness": 3}, partial=True)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: answer: the study has no question 'sharpness' (it asks mos, turing, ...)
    """
    by_id = {q.id: q for q in questions}
    unknown = [k for k in answers if k not in by_id]
    if unknown:
        raise NeurosynthError(f"{source}: the study has no question {unknown[0]!r} (it asks {', '.join(by_id)})")
    out: dict[str, Any] = {}
    for question in questions:
        value = answers.get(question.id)
        if question.is_empty(value):
            if question.required and not partial:
                text = f" ({question.prompt})" if question.prompt else ""
                raise NeurosynthError(f"{source}: question {question.id!r}{text} is required")
            continue
        normalised = question.validate(value)
        if question.type == "text" and not normalised:
            continue
        out[question.id] = normalised
    return out


def legacy_rating(answers: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """``(score, extra)`` for :meth:`~napari_neurosynth.ratings.RatingStore.record`, or ``None`` without a MOS.

    The MOS, sub-scores, Turing choice and comment keep their columns in the ratings
    table, so summaries and exports written for them keep working.

    Examples
    --------
    >>> legacy_rating({"mos": 4, "turing": "real", "turing_confidence": 3, "lesions": []})
    (4, {'turing_choice': 'real', 'turing_confidence': 3})
    >>> legacy_rating({"lesions": []}) is None
    True
    """
    score = answers.get("mos")
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        return None
    extra: dict[str, Any] = {k: answers[k] for k in SUBSCORE_PROMPTS if isinstance(answers.get(k), int)}
    if answers.get("turing") in ("real", "synthetic"):
        extra["turing_choice"] = answers["turing"]
    if isinstance(answers.get("turing_confidence"), int) and 1 <= answers["turing_confidence"] <= 5:
        extra["turing_confidence"] = answers["turing_confidence"]
    if isinstance(answers.get("comment"), str) and answers["comment"]:
        extra["comment"] = answers["comment"]
    return score, extra
