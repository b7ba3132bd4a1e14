"""One LQ/HQ pair of a task's data, loaded on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One LQ/HQ pair: ``load() -> (lq, hq)`` float32 ``[C, H, W]``; ``group`` is the unit of splitting;
    ``person`` the scan's own patient id (DICOM PatientID) where it has one, checked across the splits."""

    name: str
    group: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    person: str = ""
