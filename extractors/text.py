"""Turning catalog rows into the texts that text features encode.

A template like ``"{title}. {bullet_points}"`` is filled per row: missing values (None,
NaN) become empty, lists are joined with ``"; "``, other values go through ``str``. A text
with no word character left (``". "`` from two empty columns) is an ``input`` error, not a
vector of punctuation.
"""

from __future__ import annotations

import hashlib
import math
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

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __format__(self, spec: str) -> str:
        if spec:
            return format(self.value, spec)
        return cell_text(self.value)

    def __str__(self) -> str:
        return cell_text(self.value)


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return LIST_SEPARATOR.join(t for t in (cell_text(v) for v in value) if t)
    return str(value)


class TextTemplate:
    def __init__(self, template: str):
        self.template = template
        self.columns = template_columns(template)
        self._formatter = string.Formatter()

    def render(self, row: Mapping[str, Any]) -> str:
        """The row's text, stripped; ItemError("input", ...) when it has no word in it."""
        values = {name: _Cell(row.get(name)) for name in self.columns}
        try:
            text = self._formatter.vformat(self.template, (), values).strip()
        except (ValueError, TypeError) as exc:  # e.g. {price:.2f} on a string cell
            raise ItemError("input", f"template {self.template!r} does not apply to this row: {exc}") from None
        if not _WORD.search(text):
            raise ItemError("input", f"empty text (template {self.template!r} gave {text!r})")
        return text


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
