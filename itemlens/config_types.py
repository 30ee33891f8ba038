"""What every part of the configuration shares: the pydantic base model and the name rule.

``StrictModel`` turns a misspelt field into an error that names it (``extra="forbid"``) and
makes parsed configuration immutable. ``NAME`` is the rule for the names a configuration gives
to features, semantic IDs and graphs (they become table names and file names).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

#: a feature, semantic-ID or graph name: a letter, then letters, digits or '_' (64 at most)
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class StrictModel(BaseModel):
    """A configuration model: unknown fields are errors, values are frozen once parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
