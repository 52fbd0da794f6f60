"""Hanging protocols, answer policy and crossover reading sessions of a study file.

* A **hanging protocol** says what the reader sees: which images hang beside the
  image under test (``test``; any other name is a reference or condition key of
  each case, e.g. the source ``t1``), each with a window preset from
  :mod:`napari_neurosynth.windowing`; the plane(s) (one, or all three for a linked
  tri-planar view); whether the views are linked; whether the reader may change
  the windowing.
* The **answer policy** says whether a reader may go back to earlier images and
  whether an answer may be changed once given (every change is kept in the
  store's audit table either way).
* **Reading sessions** make a crossover design: e.g. session ``unaided`` shows only
  the acquired images and session ``aided`` adds the synthetic one, with a
  *washout* (``14d``, ``2w``, ISO-8601 ``P14D``) that must pass between the end of a
  rater's previous session and the start of the next.

Examples
--------
>>> from napari_neurosynth.study import parse_study_text
>>> data = parse_study_text('''
... hanging:
...   images: [{image: test, preset: brain}, {image: t1}]
...   planes: [axial, coronal, sagittal]
...   windowing: fixed
... ''')
>>> protocol = parse_hanging(data["hanging"], "s.yaml")
>>> [i.image for i in protocol.images], protocol.triplanar, protocol.may_change_windowing
(['test', 't1'], True, False)
>>> parse_duration("2w"), parse_duration("P1DT12H")
(datetime.timedelta(days=14), datetime.timedelta(days=1, seconds=43200))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .errors import NeurosynthError
from .windowing import PRESET_NAMES
from .yaml_lines import where

__all__ = [
    "PLANES",
    "AnswerPolicy",
    "HangingImage",
    "HangingProtocol",
    "ReadingSessionSpec",
    "format_duration",
    "parse_answer_policy",
    "parse_duration",
    "parse_hanging",
    "parse_sessions",
]

#: Planes a hanging protocol may show.
PLANES = ("axial", "coronal", "sagittal")

#: The contrast names windowing.PRESETS has tables for, recognised inside an image key.
_CONTRASTS = ("flair", "t1", "t2", "pd")


@dataclass(frozen=True)
class HangingImage:
    """One image of a hanging protocol: ``test`` (the image rated) or a case's reference/condition key."""

    image: str
    preset: str = "soft"
    contrast: str | None = None

    def contrast_for(self, test_contrast: str | None = None) -> str | None:
        """The contrast whose preset table applies (given, else guessed from the key).

        Examples
        --------
        >>> HangingImage("t1_mprage").contrast_for(), HangingImage("test").contrast_for("t2")
        ('t1', 't2')
        """
        if self.contrast:
            return self.contrast
        if self.image == "test":
            return test_contrast
        key = self.image.lower()
        return next((c for c in _CONTRASTS if key.startswith(c) or key.endswith(c)), None)


@dataclass(frozen=True)
class HangingProtocol:
    """What hangs on the reading screen (see the module docstring)."""

    images: tuple[HangingImage, ...] = (HangingImage("test"),)
    planes: tuple[str, ...] = ("axial",)
    linked: bool = True
    windowing: str = "adjustable"

    @property
    def triplanar(self) -> bool:
        """All three planes, as linked views."""
        return len(set(self.planes)) == 3

    @property
    def may_change_windowing(self) -> bool:
        return self.windowing == "adjustable"

    @property
    def image_keys(self) -> list[str]:
        """Keys of the images other than the test image (each case must have them)."""
        return [i.image for i in self.images if i.image != "test"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [
                {"image": i.image, "preset": i.preset, **({"contrast": i.contrast} if i.contrast else {})}
                for i in self.images
            ],
            "planes": list(self.planes),
            "linked": self.linked,
            "windowing": self.windowing,
        }


@dataclass(frozen=True)
class AnswerPolicy:
    """May the reader go back, and change an answer once given?"""

    allow_back: bool = True
    allow_edit: bool = True

    def to_dict(self) -> dict[str, bool]:
        return {"allow_back": self.allow_back, "allow_edit": self.allow_edit}


@dataclass(frozen=True)
class ReadingSessionSpec:
    """One reading session of a crossover study.

    ``conditions`` are the conditions rated in it (``None``: all); ``washout`` is the
    time that must pass after the rater's previous session ended.
    """

    id: str
    conditions: tuple[str, ...] | None = None
    washout: timedelta = field(default_factory=timedelta)
    hanging: HangingProtocol | None = None
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.label:
            out["label"] = self.label
        if self.conditions is not None:
            out["conditions"] = list(self.conditions)
        if self.washout:
            out["washout"] = format_duration(self.washout)
        if self.hanging is not None:
            out["hanging"] = self.hanging.to_dict()
        return out


def _bool(node: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = node.get(key, default)
    if not isinstance(value, bool):
        raise NeurosynthError(f"{where(source, node, key)}: '{key}' must be true or false, got {value!r}")
    return value


def _unknown(node: Mapping[str, Any], known: set[str], what: str, source: str) -> None:
    extra = sorted(set(node) - known, key=str)
    if extra:
        raise NeurosynthError(
            f"{where(source, node, extra[0])}: unknown key(s) {', '.join(map(repr, extra))} in {what}; "
            f"known: {', '.join(sorted(known))}"
        )


def parse_hanging(raw: object, source: str = "study") -> HangingProtocol:
    """A :class:`HangingProtocol` from a study file's ``hanging:`` mapping.

    Examples
    --------
    >>> parse_hanging({"planes": ["oblique"]})
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: plane 'oblique' in hanging; use axial, coronal, sagittal ...
    >>> parse_hanging({"images": [{"image": "t1", "preset": "bone"}]})
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: image 't1' has unknown window preset 'bone'; use brain, soft, wide
    """
    if not isinstance(raw, Mapping):
        raise NeurosynthError(f"{where(source, raw)}: 'hanging' must be a mapping (images, planes, linked, windowing)")
    _unknown(raw, {"images", "planes", "linked", "windowing"}, "hanging", source)
    images_raw = raw.get("images", [{"image": "test"}])
    if not isinstance(images_raw, list) or not images_raw:
        raise NeurosynthError(f"{where(source, raw, 'images')}: 'hanging.images' must be a non-empty list")
    images: list[HangingImage] = []
    for i, item in enumerate(images_raw):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, Mapping) or not str(item.get("image") or "").strip():
            raise NeurosynthError(f"{where(source, images_raw, i)}: each hanging image needs 'image' (test or a key)")
        _unknown(item, {"image", "preset", "contrast"}, "a hanging image", source)
        key = str(item["image"]).strip()
        preset = str(item.get("preset", "soft"))
        if preset not in PRESET_NAMES:
            raise NeurosynthError(
                f"{where(source, item, 'preset')}: image {key!r} has unknown window preset {preset!r}; "
                f"use {', '.join(PRESET_NAMES)}"
            )
        if any(im.image == key for im in images):
            raise NeurosynthError(f"{where(source, images_raw, i)}: image {key!r} hangs twice")
        contrast = item.get("contrast")
        images.append(HangingImage(key, preset, None if contrast is None else str(contrast)))
    if not any(im.image == "test" for im in images):
        images.insert(0, HangingImage("test"))
    planes_raw = raw.get("planes", ["axial"])
    if planes_raw in ("triplanar", "tri-planar", "all"):
        planes_raw = list(PLANES)
    if isinstance(planes_raw, str):
        planes_raw = [planes_raw]
    if not isinstance(planes_raw, list) or not planes_raw:
        raise NeurosynthError(f"{where(source, raw, 'planes')}: 'hanging.planes' must list {', '.join(PLANES)}")
    for plane in planes_raw:
        if plane not in PLANES:
            raise NeurosynthError(
                f"{where(source, raw, 'planes')}: plane {plane!r} in hanging; use {', '.join(PLANES)} or 'triplanar'"
            )
    windowing = raw.get("windowing", "adjustable")
    if windowing is True or windowing is False:
        windowing = "adjustable" if windowing else "fixed"
    if windowing not in ("adjustable", "fixed"):
        raise NeurosynthError(f"{where(source, raw, 'windowing')}: 'windowing' must be adjustable or fixed")
    return HangingProtocol(
        images=tuple(images),
        planes=tuple(dict.fromkeys(planes_raw)),
        linked=_bool(raw, "linked", True, source),
        windowing=str(windowing),
    )


def parse_answer_policy(raw: object, source: str = "study") -> AnswerPolicy:
    """An :class:`AnswerPolicy` from a study file's ``answers:`` mapping (``None``: everything allowed).

    Examples
    --------
    >>> parse_answer_policy({"allow_edit": False})
    AnswerPolicy(allow_back=True, allow_edit=False)
    """
    if raw is None:
        return AnswerPolicy()
    if not isinstance(raw, Mapping):
        raise NeurosynthError(f"{where(source, raw)}: 'answers' must be a mapping (allow_back, allow_edit)")
    _unknown(raw, {"allow_back", "allow_edit"}, "answers", source)
    return AnswerPolicy(_bool(raw, "allow_back", True, source), _bool(raw, "allow_edit", True, source))


_SHORT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(w|d|h|m|min|s|weeks?|days?|hours?|minutes?|seconds?)\s*$", re.I)
_ISO = re.compile(
    r"^P(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: object, source: str = "study") -> timedelta:
    """A washout duration: ``14d``, ``2w``, ``36h``, ``90m``, ``"14 days"`` or ISO-8601 ``P14D``, ``P2W``, ``PT36H``.

    ISO-8601 years and months are refused: their length in days is ambiguous.
    (A regular expression, because the duration parsers on PyPI add a dependency
    for what is a dozen lines here and none reads both spellings.)

    Examples
    --------
    >>> parse_duration("14d") == parse_duration("P14D") == parse_duration("2 weeks")
    True
    >>> parse_duration(0), parse_duration("PT90M")
    (datetime.timedelta(0), datetime.timedelta(seconds=5400))
    >>> parse_duration("two weeks", "s.yaml, line 9")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: s.yaml, line 9: washout 'two weeks' is not a duration; ...
    """
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text == 0:
        return timedelta(0)
    value = str(text).strip() if isinstance(text, str) else ""
    short = _SHORT.match(value)
    if short:
        unit = short.group(2).lower()
        unit = "m" if unit.startswith("min") else unit[0]
        return timedelta(seconds=float(short.group(1)) * _UNIT_SECONDS[unit])
    iso = _ISO.match(value.upper())
    if iso and value.upper() not in ("P", "PT") and any(iso.groups()):
        weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
        return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise NeurosynthError(f"{source}: washout {text!r} is not a duration; write e.g. 14d, 2w, 36h or ISO-8601 P14D")


def format_duration(delta: timedelta) -> str:
    """The study-file spelling of a duration (ISO-8601).

    Examples
    --------
    >>> format_duration(timedelta(days=14)), format_duration(timedelta(hours=36)), format_duration(timedelta(0))
    ('P14D', 'P1DT12H', 'P0D')
    """
    seconds = round(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if v)
    out = "P" + (f"{days}D" if days or not time else "")
    return out + (f"T{time}" if time else "")


def parse_sessions(raw: object, conditions: list[str], source: str = "study") -> tuple[ReadingSessionSpec, ...]:
    """The reading sessions of a study file's ``sessions:`` list (``None``: one implicit session).

    Examples
    --------
    >>> specs = parse_sessions([{"id": "unaided", "conditions": ["acquired"]},
    ...                         {"id": "aided", "washout": "14d"}], ["acquired", "model"])
    >>> [(s.id, s.conditions, s.washout.days) for s in specs]
    [('unaided', ('acquired',), 0), ('aided', None, 14)]
    >>> parse_sessions([{"id": "s1", "conditions": ["model_b"]}], ["acquired", "model"])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: study: session 's1' names condition 'model_b', which no case has ...
    """
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise NeurosynthError(f"{where(source, raw)}: 'sessions' must be a non-empty list of reading sessions")
    specs: list[ReadingSessionSpec] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not str(item.get("id") or "").strip():
            raise NeurosynthError(f"{where(source, raw, i)}: each reading session needs an 'id'")
        _unknown(item, {"id", "label", "conditions", "washout", "hanging"}, "a reading session", source)
        sid = str(item["id"]).strip()
        if any(s.id == sid for s in specs):
            raise NeurosynthError(f"{where(source, raw, i)}: reading session id {sid!r} appears twice")
        conds = item.get("conditions")
        if conds is not None:
            if isinstance(conds, str):
                conds = [conds]
            if not isinstance(conds, list) or not conds:
                raise NeurosynthError(f"{where(source, item, 'conditions')}: 'conditions' must list condition names")
            for cond in conds:
                if str(cond) not in conditions:
                    raise NeurosynthError(
                        f"{where(source, item, 'conditions')}: session {sid!r} names condition {cond!r}, which no "
                        f"case has (conditions: {', '.join(conditions)})"
                    )
        washout = parse_duration(item.get("washout", 0), where(source, item, "washout"))
        hanging = item.get("hanging")
        specs.append(
            ReadingSessionSpec(
                id=sid,
                conditions=None if conds is None else tuple(str(c) for c in conds),
                washout=washout,
                hanging=None if hanging is None else parse_hanging(hanging, source),
                label=str(item.get("label", "")),
            )
        )
    return tuple(specs)
