"""Between a scan's own values and the network's units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnitMap:
    """Between a scan's own values (HU, Bq/ml, [0, 1] pixels) and the network's units, one volume at a time.

    ``to_unit(x) = (x - offset) / scale``, clipped to ``clip`` when given (as the task's loaders do), computed
    in float32 like the loaders so that a file restored by predict sees exactly the values training saw;
    ``from_unit(y) = y * scale + offset``, held at or above ``floor`` when given (e.g. PET activity >= 0).
    """

    scale: float = 1.0
    offset: float = 0.0
    clip: tuple[float, float] | None = None

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.offset) / self.scale
        return (np.clip(y, *self.clip) if self.clip is not None else y).astype(np.float32)

    def from_unit(self, y: np.ndarray, floor: float | None = None) -> np.ndarray:
        x = np.asarray(y, dtype=np.float64) * self.scale + self.offset
        return (np.maximum(x, floor) if floor is not None else x).astype(np.float32)
