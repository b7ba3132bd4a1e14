"""What the stored values of a scan are taken to mean: a CT DICOM file's rescale is checked
(:mod:`ratlit.data.dicom_rescale`); PET and other inputs say once per process what they assume (units, SUV or not),
so nothing is taken silently."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ratlit.data.dicom_rescale import check_ct_rescale, missing_rescale
from ratlit.utils.messages import say_once

log = logging.getLogger("ratlit.data")
PET_UNITS = {"BQML": "activity concentration in Bq/ml", "GML": "SUV (g/ml)", "CNTS": "counts",
             "PROPCPS": "counts per second", "NONE": "no unit"}


def note_values(task: str, kind: str, source: Path, header: Any = None, assume_hu: bool = False,
                key: str = "data.assume_hu") -> None:
    """Check (CT DICOM) or say once (everything else) what the values of ``source`` are taken as for ``task``:
    ``kind`` is ``dicom`` (``header`` one slice's), ``nifti`` or ``image``."""
    modality = str(header.get("Modality", "") or "") if header is not None else ""
    if task == "ct" and kind == "dicom" and modality == "CT":
        check_ct_rescale(header, source, assume_hu, key)
    elif task == "ct" and kind == "dicom":  # another modality, forced through a CT network
        say_once(f"ct-as-{modality}", f"{modality or 'untyped'} DICOM values (e.g. {source}) are taken as CT HU "
                 "(stored x RescaleSlope + RescaleIntercept where given)", logging.WARNING, log=log)
    elif task == "ct" and kind == "nifti":
        say_once("ct-nifti", f"CT NIfTI values (e.g. {source}) are taken as HU (scl_slope / scl_inter applied)",
                 log=log)
    elif task == "pet" and kind == "dicom":
        if missing_rescale(header):
            say_once("pet-no-rescale", f"PET DICOM files without RescaleSlope / RescaleIntercept (e.g. {source}): "
                     "stored values taken as activity as they are", logging.WARNING, log=log)
        units = str(header.get("Units", "") or "").upper()
        meaning = PET_UNITS.get(units, "an unknown unit" if units else "no Units tag")
        say_once(f"pet-units-{units}", f"PET DICOM values (e.g. {source}) are taken as stored x RescaleSlope + "
                 f"RescaleIntercept in their Units ({units or '?'}: {meaning}), not converted to SUV; each volume "
                 "is divided by its 99.9th percentile, so the unit cancels out", log=log)
    elif task == "pet" and kind == "nifti":
        say_once("pet-nifti", f"PET NIfTI values (e.g. {source}) are taken as stored (scl_slope / scl_inter applied), "
                 "activity or SUV, not converted; each volume is divided by its 99.9th percentile, so the unit "
                 "cancels out", log=log)
    elif kind == "image":
        say_once("image", f"image values (e.g. {source}): 8- and 16-bit pixels are taken over their full range "
                 "as [0, 1], float pixels as they are", log=log)
