"""What every quantizer shares: the codes it gives (and, for nearest-free uniqueness, the
distances to the last level's codes) and a count of trainings (tests check that a refresh
trains none)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: how many times a quantizer was trained in this process (tests check that refreshes train none)
TRAININGS = {"count": 0}


@dataclass
class Encoded:
    codes: np.ndarray  # [n, levels] int64
    last_distances: np.ndarray | None  # [n, K] squared distances of the last residual to each
