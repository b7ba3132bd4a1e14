"""DICOM rescale rules: stored values map to the modality's (e.g. HU) by a Modality LUT Sequence or by
RescaleSlope / RescaleIntercept, applied by pydicom; a CT DICOM file must say how its stored values map to HU
unless the user confirms they are HU (``assume_hu``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ratlit.utils.errors import InputError
from ratlit.utils.messages import say_once

log = logging.getLogger("ratlit.data")
RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")


def missing_rescale(header: Any) -> list[str]:
    """The rescale tags a DICOM header lacks (an empty value counts as missing); none where a Modality LUT
    Sequence maps its stored values instead."""
    if header.get("ModalityLUTSequence"):
        return []
    return [tag for tag in RESCALE_TAGS if header.get(tag, None) in (None, "")]


def modality_values(stored: np.ndarray, header: Any) -> np.ndarray:
    """Stored pixel values -> the modality's values (e.g. HU), float32, by pydicom's ``apply_modality_lut``: the
    Modality LUT Sequence where there is one, else RescaleSlope x stored + RescaleIntercept, a missing or empty
    tag taken as slope 1 / intercept 0 (files without them are read only where allowed: ``check_ct_rescale``)."""
    from pydicom import Dataset
    from pydicom.pixels import apply_modality_lut

    if not header.get("ModalityLUTSequence"):
        rescale = Dataset()  # pydicom rescales only where both tags hold a value
        rescale.RescaleSlope = float(header.get("RescaleSlope", None) or 1)
        rescale.RescaleIntercept = float(header.get("RescaleIntercept", None) or 0)
        header = rescale
    return np.asarray(apply_modality_lut(stored, header), dtype=np.float32)


def check_ct_rescale(header: Any, path: Path, assume_hu: bool, key: str = "data.assume_hu") -> None:
    """Raise ValueError naming ``path`` when a CT DICOM lacks RescaleSlope / RescaleIntercept: its stored values
    need not be HU (many scanners store HU + 1024). ``assume_hu`` (the user's ``key``=true) takes them as HU."""
    missing = missing_rescale(header)
    if not missing:
        return
    if not assume_hu:
        raise InputError(f"CT DICOM file {path} has no {' / '.join(missing)}: its stored values need not be HU "
                         f"(often HU + 1024); if they are HU, pass {key}=true")
    say_once("ct-assume-hu", f"CT DICOM files without RescaleSlope / RescaleIntercept (e.g. {path}): stored values "
             f"taken as HU ({key}=true)", logging.WARNING, log=log)
