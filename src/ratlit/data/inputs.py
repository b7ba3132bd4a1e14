"""The files a trained network is asked to restore (``ratlit.predict``): found in a folder, and every one of them
checked (format, DICOM modality against the task, channels, readability, what its values mean) before any
output is written, so a folder is restored whole or not at all."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, check_one_slice_shape, is_nifti, read_dicom, read_image
from ratlit.data.value_assumptions import note_values
from ratlit.utils.errors import InputError

log = logging.getLogger("ratlit.predict")
KIND_NAMES = {"dicom": "a DICOM file", "nifti": "a NIfTI volume", "image": "an image file"}


def kind_of(path: Path) -> str:
    """``image``, ``nifti`` or ``dicom`` (anything else, by its name)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if is_nifti(path):
        return "nifti"
    return "dicom"


def is_dicom_file(path: Path) -> bool:
    """Whether the file carries DICOM's ``DICM`` marker after its 128-byte preamble (pydicom reads no other)."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def input_files(path: Path) -> list[Path]:
    """The file itself, or the folder's image, NIfTI and DICOM files (``*.dcm``, ``*.IMA``, or no extension and a
    DICOM marker); other files (a README, notes, ``.json`` sidecars) are skipped with a note naming them."""
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    skipped = [p for p in files if kind_of(p) == "dicom" and (p.suffix.lower() not in DICOM_SUFFIXES
                                                             or (p.suffix == "" and not is_dicom_file(p)))]
    if skipped:
        log.warning("input %s: skipping %d file(s) of no known format: %s", path, len(skipped),
                    ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    files = [p for p in files if p not in skipped]
    if not files:
        raise InputError(
            f"input folder {path} holds no DICOM (*.dcm, *.IMA), NIfTI (.nii, .nii.gz) or image "
            f"({', '.join(IMAGE_SUFFIXES)}) files (sub-folders are not searched: give a series folder)"
        )
    return files


def format_problem(datamodule: RestorationDataModule, task: str, kind: str, modality: str | None = None) -> str | None:
    """Why an input of ``kind`` (and DICOM ``modality``) is not what ``task`` takes, or None."""
    dm = type(datamodule)
    if kind not in dm.input_formats:
        return f"is {KIND_NAMES[kind]}, but task {task} takes {list(dm.input_formats)}"
    if modality is not None and dm.modalities and modality not in dm.modalities:
        return f"has DICOM Modality {modality or '(none)'!r}, but task {task} takes Modality {list(dm.modalities)}"
    return None


def check_inputs(files: Sequence[Path], datamodule: RestorationDataModule, task: str, channels: int, ckpt: Path,
                 force: bool = False, assume_hu: bool = False) -> None:
    """Raise ValueError naming the first file predict could not restore as the checkpoint's task (``force``:
    format and modality may differ), before anything is written; say what the values are taken as."""
    def refuse_unless_forced(source: object, kind: str, modality: str | None = None) -> bool:
        problem = format_problem(datamodule, task, kind, modality)
        if problem is not None and not force:
            raise InputError(f"{source} {problem} (checkpoint {ckpt}); use a {task} input or pass force=true")
        return kind in type(datamodule).input_formats

    series: dict[str, list] = {}
    for path in files:
        if path.stat().st_size == 0:
            raise InputError(f"input {path} is empty (0 bytes)")
        kind = kind_of(path)
        if kind == "image":
            matches = refuse_unless_forced(path, kind)
            check_image_file(path, channels, ckpt)
            if matches:
                note_values(task, kind, path)
        elif kind == "nifti":
            matches = refuse_unless_forced(path, kind)
            check_nifti_file(path, channels, ckpt)
            if matches:
                note_values(task, kind, path)
        else:
            dicom = read_dicom(path, pixels=False)  # readable, with a position to order the series by
            series.setdefault(str(dicom.header.get("SeriesInstanceUID", "")), []).append(dicom)
    for slices in series.values():
        first = slices[0]
        source = first.path.parent if len(slices) > 1 else first.path
        check_one_slice_shape(slices, source)
        matches = refuse_unless_forced(source, "dicom", str(first.header.get("Modality", "")))
        samples = int(first.header.get("SamplesPerPixel", 1) or 1)
        if samples != 1 or channels != 1:
            raise InputError(f"{source} has {samples} channel(s) per pixel; the checkpoint {ckpt} takes {channels}")
        if matches:
            for dicom in slices:
                note_values(task, "dicom", dicom.path, dicom.header, assume_hu, "assume_hu")


def check_image_file(path: Path, channels: int, ckpt: Path) -> None:
    """Readable, finite, and of the checkpoint's channels (a grey image goes through an RGB network)."""
    image = read_image(path)
    if image.shape[0] != channels and not (image.shape[0] == 1 and channels == 3):
        raise InputError(f"{path} has {image.shape[0]} channel(s); the checkpoint {ckpt} takes {channels}")
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if bad:
        raise InputError(f"{path} holds {bad} NaN or infinite value(s); predict needs finite pixel values")


def check_nifti_file(path: Path, channels: int, ckpt: Path) -> None:
    """A readable NIfTI header of one 3D volume, for a one-channel network (its voxels are read when restored)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as err:
        raise InputError(f"cannot read NIfTI file {path}: {err}") from err
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1)):
        raise InputError(f"NIfTI file {path} has shape {shape}; a 3D volume is expected")
    if channels != 1:
        raise InputError(f"{path} is a one-channel volume; the checkpoint {ckpt} takes {channels} channels")
