"""Line numbers of parsed study-file nodes, so that an error can name the line.

The study loader (:func:`napari_neurosynth.study.parse_study_text`) builds every
YAML mapping as a :class:`LinedDict` and every sequence as a :class:`LinedList`:
plain ``dict``/``list`` subclasses that also remember the line each node (and each
key or item) starts on. Code that checks a study file asks :func:`where` for the
place to put in its message; data that did not come from a file (a dict built in
Python) has no lines, and the message then names only the source.

Examples
--------
>>> from napari_neurosynth.study import parse_study_text
>>> data = parse_study_text("study: pilot\\nquestions:\\n  - id: mos\\n    type: slider\\n")
>>> where("s.yaml", data["questions"][0], "type")
's.yaml, line 4'
>>> where("s.yaml", data["questions"], 0), where("s.yaml", {"plain": "dict"}, "plain")
('s.yaml, line 3', 's.yaml')
"""

from __future__ import annotations

from typing import Any

__all__ = ["LinedDict", "LinedList", "line_of", "where"]


class LinedDict(dict):
    """A mapping read from YAML: ``line`` (1-based) of the node and ``key_lines[key]`` of each key."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}


class LinedList(list):
    """A sequence read from YAML: ``line`` of the node and ``item_lines[i]`` of each item."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.item_lines: list[int] = []


def line_of(node: object, key: Any = None) -> int | None:
    """The 1-based line of ``node`` (or of its ``key`` / item index), ``None`` when unknown.

    Examples
    --------
    >>> node = LinedDict(a=1); node.line = 3; node.key_lines = {"a": 4}
    >>> line_of(node), line_of(node, "a"), line_of(node, "b"), line_of({"a": 1}, "a")
    (3, 4, 3, None)
    """
    if key is not None:
        if isinstance(node, LinedDict) and key in node.key_lines:
            return node.key_lines[key]
        if isinstance(node, LinedList) and isinstance(key, int) and 0 <= key < len(node.item_lines):
            return node.item_lines[key]
    return getattr(node, "line", None)


def where(source: str, node: object, key: Any = None) -> str:
    """``"SOURCE, line N"`` for a node read from a file, else ``SOURCE``.

    Examples
    --------
    >>> node = LinedList([1, 2]); node.line = 7; node.item_lines = [7, 8]
    >>> where("study.yaml", node, 1), where("study.yaml", None)
    ('study.yaml, line 8', 'study.yaml')
    """
    line = line_of(node, key)
    return source if line is None else f"{source}, line {line}"
