"""The Reader Study's questions panel: one row per typed question, all driven by the keyboard.

The rows are built from the study's :class:`napari_neurosynth.questions.Question`
list (likert with anchors, single and multiple choice, number with range, yes/no,
free text, localisation). One row is *current* (marked ``▶``); keys act on it:

- the keys of its :meth:`~napari_neurosynth.questions.Question.keyboard_map`
  (digits for a likert scale and the options of a choice, ``Y``/``N`` for yes/no,
  the study's own keys such as ``R``/``S`` for real/synthetic) answer it, and a
  one-value answer moves on to the next question;
- ``Tab``/``↓`` and ``Shift+Tab``/``↑`` move between questions; a number or text
  row takes the keyboard focus, so typing goes into its field;
- ``1``-``5`` on a localisation row give the selected mark its confidence,
  ``Delete``/``Backspace`` remove it (the arrow keys stay napari's slice keys);
- ``Enter`` submits (the owner decides what that does: save and next).

Every row shows its keys as a hint. The panel holds no study logic: values are
checked by :func:`napari_neurosynth.questions.validate_answers` when the owner
saves them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QDoubleValidator
from qtpy.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

__all__ = ["QuestionRow", "QuestionsPanel", "make_row"]

_CURRENT_STYLE = "QFrame#question { border: 1px solid #5a8dee; border-radius: 3px; }"
_IDLE_STYLE = "QFrame#question { border: 1px solid transparent; }"


def _button(text: str, checkable: bool = True) -> QPushButton:
    button = QPushButton(text)
    button.setCheckable(checkable)
    button.setFocusPolicy(Qt.NoFocus)  # keys go to the question, not to the button under focus
    button.setMinimumWidth(28)
    button.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)
    return button


def _key_name(key: str) -> str:
    return key.upper() if len(key) == 1 else key


class QuestionRow(QFrame):
    """One question: its prompt, its input and a hint line with its keys.

    Subclasses implement :meth:`value`, :meth:`set_value` and :meth:`key`.
    """

    changed = Signal()

    def __init__(self, question: Any) -> None:
        super().__init__()
        self.setObjectName("question")
        self.question = question
        self.keymap = {str(k).lower(): v for k, v in question.keyboard_map().items()}
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(4, 2, 4, 2)
        self._layout.setSpacing(2)
        required = " *" if question.required else ""
        self.prompt_label = QLabel(f"{question.prompt or question.id}{required}")
        self.prompt_label.setWordWrap(True)
        self._layout.addWidget(self.prompt_label)
        self.body = QHBoxLayout()
        self.body.setContentsMargins(0, 0, 0, 0)
        self._layout.addLayout(self.body)
        self.hint_label = QLabel("")
        self.hint_label.setStyleSheet("color: #8a8f98; font-size: 10px;")
        self.hint_label.setWordWrap(True)
        self._layout.addWidget(self.hint_label)
        self.setStyleSheet(_IDLE_STYLE)

    # -- what subclasses provide
    def value(self) -> Any:
        """The answer on screen (``None`` when unanswered)."""
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        """Show ``value`` (``None`` clears)."""
        raise NotImplementedError

    def key(self, key: str) -> str | None:
        """Act on ``key``: ``"answered"`` (a one-value answer: move on), ``"used"``, or ``None`` (not for this row)."""
        if key in self.keymap:
            self.set_value(self.keymap[key])
            self.changed.emit()
            return "answered"
        return None

    def editor(self) -> QWidget | None:
        """The field that takes the keyboard focus while this row is current (number, text)."""
        return None

    def set_editable(self, editable: bool) -> None:
        """Allow or refuse changes (a study that forbids editing a given answer)."""
        for child in self.findChildren((QPushButton, QLineEdit)):
            child.setEnabled(editable)

    def set_current(self, current: bool) -> None:
        self.setStyleSheet(_CURRENT_STYLE if current else _IDLE_STYLE)
        text = self.prompt_label.text().lstrip("▶ ")
        self.prompt_label.setText(f"▶ {text}" if current else text)

    def _hint(self, text: str) -> None:
        self.hint_label.setText(text)


class _ButtonsRow(QuestionRow):
    """A likert scale or a single choice: exclusive buttons, one value."""

    def __init__(self, question: Any, values: Sequence[Any], texts: Sequence[str]) -> None:
        super().__init__(question)
        self.values = list(values)
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        for i, text in enumerate(texts):
            button = _button(text)
            self.group.addButton(button, i + 1 if question.type != "likert" else int(self.values[i]))
            self.body.addWidget(button)
        self.group.buttonClicked.connect(lambda _b: self.changed.emit())

    def _button_for(self, value: Any) -> QPushButton | None:
        for button, v in zip(self.group.buttons(), self.values):
            if v == value:
                return button
        return None

    def value(self) -> Any:
        for button, v in zip(self.group.buttons(), self.values):
            if button.isChecked():
                return v
        return None

    def set_value(self, value: Any) -> None:
        self.group.setExclusive(False)  # an exclusive group cannot be cleared otherwise
        for button, v in zip(self.group.buttons(), self.values):
            button.setChecked(value is not None and v == value)
        self.group.setExclusive(True)


class LikertRow(_ButtonsRow):
    """Likert scale: one button per value, anchors under the scale."""

    def __init__(self, question: Any) -> None:
        low, high = int(question.low), int(question.high)
        values = list(range(low, high + 1))
        super().__init__(question, values, [str(v) for v in values])
        anchors = " · ".join(f"{k} {v}" for k, v in sorted(question.anchors.items()))
        keys = [_key_name(k) for k, v in self.keymap.items()]
        hint = f"keys {keys[0]}-{keys[-1]}" if keys else "click a value"
        self._hint(f"{anchors}   ({hint})" if anchors else f"({hint})")
        for button, v in zip(self.group.buttons(), values):
            if v in question.anchors:
                button.setToolTip(question.anchors[v])


class ChoiceRow(_ButtonsRow):
    """Single choice: one button per option, labelled with its key."""

    def __init__(self, question: Any) -> None:
        keys = {v: k for k, v in question.keyboard_map().items()}
        texts = [
            f"{question.label(o)} ({_key_name(keys[o])})" if o in keys else question.label(o) for o in question.options
        ]
        super().__init__(question, list(question.options), texts)
        self._hint("one answer: press its key")


class MultipleChoiceRow(QuestionRow):
    """Multiple choice: toggle buttons; each key toggles its option."""

    def __init__(self, question: Any) -> None:
        super().__init__(question)
        keys = {v: k for k, v in question.keyboard_map().items()}
        self.buttons: dict[str, QPushButton] = {}
        for option in question.options:
            text = question.label(option)
            button = _button(f"{text} ({_key_name(keys[option])})" if option in keys else text)
            button.clicked.connect(lambda _c=False: self.changed.emit())
            self.buttons[option] = button
            self.body.addWidget(button)
        self._hint("any number of answers: each key toggles one")

    def value(self) -> Any:
        chosen = [o for o, b in self.buttons.items() if b.isChecked()]
        return chosen or None

    def set_value(self, value: Any) -> None:
        chosen = set(value or [])
        for option, button in self.buttons.items():
            button.setChecked(option in chosen)

    def key(self, key: str) -> str | None:
        if key in self.keymap:
            button = self.buttons[self.keymap[key]]
            button.setChecked(not button.isChecked())
            self.changed.emit()
            return "used"
        return None


class YesNoRow(_ButtonsRow):
    """Yes / no: two buttons, keys Y and N."""

    def __init__(self, question: Any) -> None:
        keys = {v: k for k, v in question.keyboard_map().items()}
        texts = [f"{t} ({_key_name(keys[v])})" if v in keys else t for t, v in (("Yes", True), ("No", False))]
        super().__init__(question, [True, False], texts)
        self._hint("press Y or N" if keys else "click yes or no")


class _FieldRow(QuestionRow):
    """A typed answer: a number or free text in a line field (it takes the focus when current)."""

    def __init__(self, question: Any) -> None:
        super().__init__(question)
        self.edit = QLineEdit()
        self.edit.textChanged.connect(lambda _t: self.changed.emit())
        self.body.addWidget(self.edit)

    def editor(self) -> QWidget:
        return self.edit

    def key(self, key: str) -> str | None:
        return None


class NumberRow(_FieldRow):
    """A number in a range (the field accepts only numbers; the range is checked on save)."""

    def __init__(self, question: Any) -> None:
        super().__init__(question)
        decimals = 0 if question.step is not None and float(question.step).is_integer() else 6
        low = question.min if question.min is not None else -1e12
        high = question.max if question.max is not None else 1e12
        validator = QDoubleValidator(float(low), float(high), decimals, self.edit)
        validator.setNotation(QDoubleValidator.StandardNotation)
        self.edit.setValidator(validator)
        span = []
        if question.min is not None or question.max is not None:
            span.append(f"{low:g} to {high:g}")
        if question.unit:
            span.append(question.unit)
        self.edit.setPlaceholderText(" ".join(span) or "a number")
        self._hint("type the number")

    def value(self) -> Any:
        text = self.edit.text().strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return text  # validation names the question and the value
        return (
            int(number)
            if number.is_integer() and self.question.step and float(self.question.step).is_integer()
            else number
        )

    def set_value(self, value: Any) -> None:
        self.edit.setText("" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value))


class TextRow(_FieldRow):
    """Free text."""

    def __init__(self, question: Any) -> None:
        super().__init__(question)
        if question.max_length:
            self.edit.setMaxLength(int(question.max_length))
        self.edit.setPlaceholderText("optional" if not question.required else "")
        self._hint("type; Tab moves on")

    def value(self) -> Any:
        return self.edit.text().strip() or None

    def set_value(self, value: Any) -> None:
        self.edit.setText(value or "")


class LocalisationRow(QuestionRow):
    """Findings the reader clicks on the image, each with a 1-5 confidence.

    The marks are kept here (world millimetres, RAS: napari world coordinates of
    the study's layers); the owner draws them and adds one per click through
    :meth:`add_mark`. Until a mark is placed, the answer is "no finding" once the
    reader confirms it (``0`` or the *No finding* button), since an empty list is a
    valid answer and must not be confused with "not looked at".
    """

    def __init__(self, question: Any) -> None:
        super().__init__(question)
        self.marks: list[dict[str, Any]] = []
        self.selected: int | None = None
        self.confirmed_none = False
        self.summary = QLabel("")
        self.none_button = _button("No finding (0)")
        self.none_button.clicked.connect(self._toggle_none)
        self.delete_button = _button("Remove mark (Del)", checkable=False)
        self.delete_button.clicked.connect(self.remove_selected)
        self.summary.setWordWrap(True)  # the marks list wraps; the buttons keep their whole labels
        for b in (self.none_button, self.delete_button):
            b.setMinimumWidth(b.sizeHint().width())
        self.body.addWidget(self.summary, 1)
        self.body.addWidget(self.none_button)
        self.body.addWidget(self.delete_button)
        self._hint("click each finding on the image, then 1-5: its confidence; Del removes the last; 0: no finding")
        self._refresh()

    # -- marks
    def add_mark(self, world: Sequence[float]) -> int:
        """Add a mark at ``world`` (x, y, z mm) without a confidence yet; select it; return its index."""
        if self.question.max_marks is not None and len(self.marks) >= self.question.max_marks:
            return -1
        x, y, z = (float(v) for v in list(world)[-3:])
        self.marks.append({"x": x, "y": y, "z": z, "confidence": None})
        self.selected = len(self.marks) - 1
        self.confirmed_none = False
        self._refresh()
        self.changed.emit()
        return self.selected

    def remove_selected(self) -> None:
        if self.selected is None or not self.marks:
            return
        del self.marks[self.selected]
        self.selected = (len(self.marks) - 1) if self.marks else None
        self._refresh()
        self.changed.emit()

    def _toggle_none(self) -> None:
        self.confirmed_none = not self.confirmed_none and not self.marks
        self._refresh()
        self.changed.emit()

    def unrated(self) -> list[int]:
        """Indices (0-based) of marks without a confidence."""
        return [i for i, m in enumerate(self.marks) if m["confidence"] is None]

    def _refresh(self) -> None:
        if self.marks:
            parts = []
            for i, m in enumerate(self.marks):
                text = f"#{i + 1}: {m['confidence'] or '?'}"
                parts.append(f"[{text}]" if i == self.selected else text)
            self.summary.setText("Marks (confidence): " + "  ".join(parts))
        else:
            self.summary.setText("No finding confirmed" if self.confirmed_none else "No marks yet")
        self.none_button.setChecked(self.confirmed_none)

    # -- QuestionRow
    def value(self) -> Any:
        if self.marks:
            return [dict(m) for m in self.marks]
        return [] if self.confirmed_none else None

    def set_value(self, value: Any) -> None:
        self.marks = [dict(m) for m in (value or [])]
        self.selected = (len(self.marks) - 1) if self.marks else None
        self.confirmed_none = value is not None and not self.marks
        self._refresh()

    def key(self, key: str) -> str | None:
        if key == "0" and not self.marks:
            self._toggle_none()
            return "used"
        if key in {"1", "2", "3", "4", "5"} and self.selected is not None:
            self.marks[self.selected]["confidence"] = int(key)
            self._refresh()
            self.changed.emit()
            return "used"
        if key in ("delete", "backspace"):
            self.remove_selected()
            return "used"
        return None


_ROWS: dict[str, type[QuestionRow]] = {
    "likert": LikertRow,
    "choice": ChoiceRow,
    "multiple_choice": MultipleChoiceRow,
    "number": NumberRow,
    "yes_no": YesNoRow,
    "text": TextRow,
    "localisation": LocalisationRow,
}


def make_row(question: Any) -> QuestionRow:
    """The row widget for ``question`` (by its type)."""
    return _ROWS[question.type](question)


class QuestionsPanel(QWidget):
    """The study's questions, one :class:`QuestionRow` each, with a current row that the keys act on.

    Parameters
    ----------
    questions : sequence of Question

    Signals
    -------
    submitted
        ``Enter``: the reader is done with this image.
    changed
        Any answer changed.
    """

    submitted = Signal()
    changed = Signal()

    #: Keys the owner should route to :meth:`handle_key` (besides each question's own keys).
    NAV_KEYS = ("Tab", "Shift+Tab", "Backtab", "Up", "Down", "Delete", "Backspace", "Return", "Enter")

    def __init__(self, questions: Sequence[Any] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.StrongFocus)
        self.rows: dict[str, QuestionRow] = {}
        self.current = 0
        self.editable = True
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self.set_questions(questions)

    # -- building
    def set_questions(self, questions: Sequence[Any]) -> None:
        """Replace the rows by those of ``questions``."""
        for row in self.rows.values():
            self._layout.removeWidget(row)
            row.deleteLater()
        self.rows = {}
        for question in questions:
            row = make_row(question)
            row.changed.connect(self.changed.emit)
            self.rows[question.id] = row
            self._layout.addWidget(row)
        self.current = 0
        self._show_current()

    @property
    def questions(self) -> list[Any]:
        return [row.question for row in self.rows.values()]

    def keys(self) -> set[str]:
        """Every key some question answers (lower case; the owner installs them as shortcuts)."""
        keys = {k for row in self.rows.values() for k in row.keymap}
        if any(isinstance(r, LocalisationRow) for r in self.rows.values()):
            keys |= {"0", "1", "2", "3", "4", "5"}
        return keys

    # -- answers
    def values(self) -> dict[str, Any]:
        """Question id -> answer on screen (``None`` for unanswered)."""
        return {qid: row.value() for qid, row in self.rows.items()}

    def set_values(self, answers: Mapping[str, Any] | None) -> None:
        """Show ``answers`` (others cleared) and make the first question current."""
        answers = answers or {}
        for qid, row in self.rows.items():
            row.set_value(answers.get(qid))
        self.go(0)

    def missing(self) -> list[Any]:
        """Required questions left unanswered, and localisation marks without a confidence, in order."""
        out = []
        for row in self.rows.values():
            if isinstance(row, LocalisationRow) and row.unrated():
                out.append(row.question)
            elif row.question.required and row.value() in (None, ""):
                out.append(row.question)
        return out

    def set_editable(self, editable: bool) -> None:
        """Allow or refuse changes to every answer (keys included)."""
        self.editable = bool(editable)
        for row in self.rows.values():
            row.set_editable(self.editable)

    def localisation_row(self) -> LocalisationRow | None:
        """The first localisation question's row, if the study has one."""
        for row in self.rows.values():
            if isinstance(row, LocalisationRow):
                return row
        return None

    # -- the current question
    @property
    def current_row(self) -> QuestionRow | None:
        rows = list(self.rows.values())
        return rows[self.current] if rows else None

    def go(self, index: int) -> None:
        """Make question ``index`` current (clamped); a number/text row takes the keyboard focus."""
        if not self.rows:
            return
        self.current = max(0, min(int(index), len(self.rows) - 1))
        self._show_current()

    def go_to_question(self, qid: str) -> None:
        self.go(list(self.rows).index(qid))

    def _show_current(self) -> None:
        for i, row in enumerate(self.rows.values()):
            row.set_current(i == self.current)
        row = self.current_row
        if row is None:
            return
        editor = row.editor()
        if editor is not None and self.editable and self.isVisible():
            editor.setFocus()
        elif self.isVisible() and isinstance(self.focusWidget(), QLineEdit):
            # leave the field: the next keys answer questions instead of typing text
            self.setFocus()

    def handle_key(self, key: str) -> bool:
        """Act on ``key`` (a digit or letter, or one of :data:`NAV_KEYS`); return True when used."""
        key = key.lower()
        if key in ("return", "enter"):
            self.submitted.emit()
            return True
        if key in ("tab", "down"):
            self.go(self.current + 1)
            return True
        if key in ("shift+tab", "backtab", "up"):
            self.go(self.current - 1)
            return True
        row = self.current_row
        if row is None or not self.editable:
            return False
        result = row.key(key)
        if result == "answered" and self.current < len(self.rows) - 1:
            self.go(self.current + 1)  # one keystroke, one answer: the next question is current
        return result is not None

    def hint(self) -> str:
        """The one-line summary of the keys, for the owner's status line."""
        return (
            "Keys: answer the marked question (its keys are under it) · Tab/↓ next · Shift+Tab/↑ back · "
            "Enter: save & next · P: pause"
        )


def key_slot(panel: QuestionsPanel, key: str, guard: Callable[[], bool]) -> Callable[[], None]:
    """A shortcut slot that gives ``key`` to ``panel`` when ``guard()`` allows it."""

    def slot() -> None:
        if guard():
            panel.handle_key(key)

    return slot
