"""DICOM rescale rules: a CT DICOM file must say how its stored values map to HU (RescaleSlope /
RescaleIntercept) unless the user confirms they are HU (``assume_hu``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ratlit.utils.messages import say_once

log = logging.getLogger("ratlit.data")
RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")


def missing_rescale(header: Any) -> list[str]:
    """The rescale tags a DICOM header lacks (an empty value counts as missing)."""
    return [tag for tag in RESCALE_TAGS if header.get(tag, None) in (None, "")]


def check_ct_rescale(header: Any, path: Path, assume_hu: bool, key: str = "data.assume_hu") -> None:
    """Raise ValueError naming ``path`` when a CT DICOM lacks RescaleSlope / RescaleIntercept: its stored values
    need not be HU (many scanners store HU + 1024). ``assume_hu`` (the user's ``key``=true) takes them as HU."""
    missing = missing_rescale(header)
    if not missing:
        return
    if not assume_hu:
        raise ValueError(f"CT DICOM file {path} has no {' / '.join(missing)}: its stored values need not be HU "
                         f"(often HU + 1024); if they are HU, pass {key}=true")
    say_once("ct-assume-hu", f"CT DICOM files without RescaleSlope / RescaleIntercept (e.g. {path}): stored values "
             f"taken as HU ({key}=true)", logging.WARNING, log=log)
