"""Turning catalog rows into the texts that text features encode.

A template like ``"{title}. {bullet_points}"`` is filled per row: strings as they are, missing
values (None, NaN) empty, numbers (decimals too) through ``str`` (or a format spec:
``{price:.2f}``), bytes decoded as UTF-8, lists of those joined with ``"; "``. Anything else (a dict from a JSON object
or a struct column, a list of lists) is an ``input`` error naming the column: its Python repr
is not a text anyone meant to embed. A row whose template columns are all empty has no text:
an ``absent`` input, recorded apart from failures. A text with no word character left (``". "``
from a lone full stop) is an ``input`` error, not a vector of punctuation.
"""

from __future__ import annotations

import decimal
import hashlib
import math
import numbers
import re
import string
from collections.abc import Mapping
from typing import Any

from itemlens.extractors.base import ItemError
from itemlens.extractors.spec import template_columns

_WORD = re.compile(r"\w", re.UNICODE)
LIST_SEPARATOR = "; "


class _Cell:
    """Wraps a value so that format specs like {price:.2f} still work on real numbers."""

    __slots__ = ("column", "value")

    def __init__(self, value: Any, column: str = ""):
        self.value = value
        self.column = column

    def __format__(self, spec: str) -> str:
        if spec and not _missing(self.value):  # a missing value is empty, with or without a spec
            return format(self.value, spec)
        return cell_text(self.value, self.column)

    def __str__(self) -> str:
        return cell_text(self.value, self.column)


def _missing(value: Any) -> bool:
    """None, or a NaN of any float or decimal type (pandas gives NaN for a missing number)."""
    if value is None:
        return True
    if isinstance(value, decimal.Decimal):
        return value.is_nan()
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value)


def cell_text(value: Any, column: str = "", *, nested: bool = False) -> str:
    """A catalog cell as text by the rules above; ItemError("input") for a value that is not one."""
    if _missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (numbers.Real, decimal.Decimal)):  # Python and numpy numbers, bools, decimals
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if not nested and (isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"):
        return LIST_SEPARATOR.join(t for t in (cell_text(v, column, nested=True) for v in value) if t)
    what = f"a list holding a {type(value).__name__}" if nested else f"a {type(value).__name__}"
    raise ItemError(
        "input", f"column {column!r} holds {what}, not text: a template takes strings, numbers or lists of them"
    )


class TextTemplate:
    def __init__(self, template: str):
        self.template = template
        self.columns = template_columns(template)
        self._formatter = string.Formatter()

    def render(self, row: Mapping[str, Any]) -> str:
        """The row's text, stripped; ItemError("input", ...) when it has no word in it."""
        if all(_blank(row.get(name)) for name in self.columns):
            raise ItemError("absent", f"no text: {', '.join(self.columns)} empty")
        values = {name: _Cell(row.get(name), name) for name in self.columns}
        try:
            text = self._formatter.vformat(self.template, (), values).strip()
        except (ValueError, TypeError) as exc:  # e.g. {price:.2f} on a string cell
            raise ItemError("input", f"template {self.template!r} does not apply to this row: {exc}") from None
        if not _WORD.search(text):
            raise ItemError("input", f"empty text (template {self.template!r} gave {text!r})")
        return text


def _blank(value: Any) -> bool:
    """A missing value: None, NaN, a string of spaces, or a list of such values."""
    if _missing(value):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return all(_blank(v) for v in value)
    return False


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
