"""Restoring one input of each format predict takes: a DICOM series, a NIfTI volume, a PNG/TIFF/JPEG image.

Each is mapped to the network's units by its task's DataModule (``unit_map``), restored (a volume slice by slice
along the slice axis training cuts), and written in the input's own format, name and geometry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.inputs import format_problem
from ratlit.data.io import (
    DicomSlice,
    derived_series_number,
    image_bits,
    read_dicom,
    read_image,
    read_volume,
    stack_series,
    write_derived_dicom,
    write_image,
)
from ratlit.data.unit_map import UnitMap
from ratlit.inference.regions import RegionMaps
from ratlit.inference.restorer import Restorer
from ratlit.utils.errors import InputError
from ratlit.utils.files import atomic_output

log = logging.getLogger("ratlit.predict")


@dataclass
class Job:
    """What predict restores: the checkpoint's network, its task's intensity interface and the user's switches."""

    restorer: Restorer
    datamodule: RestorationDataModule
    task: str
    ckpt: Path
    channels: int
    slice_axis: int
    floor: float | None
    upscale: int | None
    force: bool
    regions: RegionMaps | None = None  # the user's own label maps (regions=), else the run's partitioner's
    regions_from: str = ""  # what gave the regions, for the log


def log_regions(job: Job, source: object) -> None:
    """Say which partitioner (or which label maps) gave the regions of ``source``, and how many."""
    counts = job.restorer.take_region_counts()
    if counts:
        spread = f"{counts[0]}" if len(counts) == 1 else f"{min(counts)}-{max(counts)} per slice (mean " \
            f"{sum(counts) / len(counts):.1f})"
        log.info("%s: regions from %s: %s", source, job.regions_from, spread)


def check_finite(values: np.ndarray, source: object) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(f"{source} holds {bad} NaN or infinite value(s); predict needs finite pixel values")


def check_format(job: Job, kind: str, source: object, modality: str | None = None) -> bool:
    """Raise (or, with force, warn) unless ``source``'s format and DICOM modality are what the checkpoint's task
    takes. Returns whether the format is the task's: only then do its intensities map through the task."""
    dm = type(job.datamodule)
    problem = format_problem(job.datamodule, job.task, kind, modality)
    if problem is not None:
        if not job.force:
            raise InputError(f"{source} {problem} (checkpoint {job.ckpt}); use a {job.task} input or pass force=true")
        log.warning("%s %s; restoring it anyway (force=true)", source, problem)
    return kind in dm.input_formats


def restore_volume(volume: np.ndarray, mapping: UnitMap, job: Job, labels: np.ndarray | None = None) -> np.ndarray:
    """``[X, Y, Z]`` in the scan's units -> restored, cut along ``job.slice_axis`` as training cuts it;
    ``labels``: the user's label map of the volume (same shape), cut alike."""
    units = mapping.to_unit(volume)
    restored = np.empty_like(units)
    count = units.shape[job.slice_axis]
    for index in tqdm(range(count), desc="slices", unit="slice", leave=False, disable=count < 2):
        piece = np.take(units, index, axis=job.slice_axis)
        slicer: list[slice | int] = [slice(None)] * 3
        slicer[job.slice_axis] = index
        regions = None if labels is None else np.take(labels, index, axis=job.slice_axis)
        restored[tuple(slicer)] = job.restorer(piece[None], regions)[0]
    values = mapping.from_unit(restored)
    if mapping.clip is not None:
        # The network sees the window training saw; what the window cut off (metal above it, the air outside
        # the scan circle below it) comes back as it went in, so no input value returns clipped to the window.
        unclipped = (np.asarray(volume, dtype=np.float32) - mapping.offset) / mapping.scale
        cut = (unclipped < mapping.clip[0]) | (unclipped > mapping.clip[1])
        values[cut] += (np.asarray(volume, dtype=np.float64)[cut] - mapping.from_unit(units[cut])).astype(np.float32)
    return np.maximum(values, job.floor) if job.floor is not None else values


def volume_map(job: Job, volume: np.ndarray, source: object, matches: bool) -> UnitMap:
    check_finite(volume, source)
    if job.channels != 1:
        raise InputError(f"{source} is a one-channel volume; the checkpoint {job.ckpt} takes {job.channels} channels")
    return job.datamodule.unit_map(volume, str(source)) if matches else UnitMap()


def dicom_series(files: Sequence[Path]) -> list[list[DicomSlice]]:
    """The DICOM files grouped by SeriesInstanceUID (in order of first appearance), each sorted along the normal."""
    series: dict[str, list[DicomSlice]] = {}
    for path in files:
        dicom = read_dicom(path)
        series.setdefault(str(dicom.header.get("SeriesInstanceUID", "")), []).append(dicom)
    return [sorted(slices, key=lambda s: s.position) for slices in series.values()]


def restore_dicom_series(slices: list[DicomSlice], out: Path, job: Job) -> list[Path]:
    from pydicom.uid import generate_uid

    first = slices[0].path
    source = first.parent if len(slices) > 1 else first
    matches = check_format(job, "dicom", source, str(slices[0].header.get("Modality", "")))
    volume = stack_series(slices, source)  # as read_volume stacks a series for training
    labels = None if job.regions is None else job.regions.volume(source, [s.path for s in slices], volume.shape)
    restored = restore_volume(volume, volume_map(job, volume, source, matches), job, labels)
    log_regions(job, source)
    series_uid, written, rescaled, outside = generate_uid(), [], 0, 0
    series_number = derived_series_number(slices[0].header)
    for index, dicom in enumerate(slices):
        result = write_derived_dicom(out / dicom.path.name, dicom.header, restored[..., index], series_uid,
                                     series_number=series_number)
        rescaled += result["slope"] != float(dicom.header.get("RescaleSlope", 1) or 1)
        outside += result["outside"]
        written.append(out / dicom.path.name)
    log.info(
        "%s: %d slice(s), restored values in [%.6g, %.6g] (input [%.6g, %.6g]); %d slice(s) got a new RescaleSlope "
        "to hold them", source, len(slices), restored.min(), restored.max(), volume.min(), volume.max(), rescaled,
    )
    if outside:
        log.warning("%s: %d restored value(s) fall outside the 16-bit stored range and were clipped", source, outside)
    return written


def restore_nifti(path: Path, out: Path, job: Job) -> Path:
    """Restore in RAS+ as training reads the file (``read_volume``), write back in the file's own orientation."""
    import nibabel as nib

    matches = check_format(job, "nifti", path)
    try:
        image = nib.load(str(path))
    except Exception as err:
        raise InputError(f"cannot read NIfTI file {path}: {err}") from err
    volume = read_volume(path)
    # Send every voxel index through the same reorientation, to know where each canonical voxel came from.
    index = np.arange(int(np.prod(image.shape))).reshape(image.shape)
    canonical_index = nib.orientations.apply_orientation(index, nib.io_orientation(image.affine))
    canonical_index = canonical_index.reshape(volume.shape)
    labels = None
    if job.regions is not None:  # a NIfTI label map is reoriented as the scan is; an array is in the file's order
        labels = job.regions.volume(path, [], volume.shape,
                                    (image.shape, lambda native: native.ravel()[canonical_index]))
    restored = restore_volume(volume, volume_map(job, volume, path, matches), job, labels)
    log_regions(job, path)
    native = np.empty(index.size, dtype=np.float32)
    native[canonical_index.ravel()] = restored.ravel()
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    result = nib.Nifti1Image(native.reshape(image.shape), image.affine, header)
    result.header.set_slope_inter(1.0, 0.0)
    with atomic_output(out / path.name, ".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(result, str(tmp))
    return out / path.name


def restore_image(path: Path, out: Path, job: Job) -> Path:
    matches = check_format(job, "image", path)
    image = read_image(path)
    check_finite(image, path)
    grey_through_rgb = image.shape[0] == 1 and job.channels == 3
    if image.shape[0] != job.channels:
        if grey_through_rgb:
            image = np.repeat(image, 3, axis=0)
        else:
            raise InputError(f"{path} has {image.shape[0]} channel(s); the checkpoint {job.ckpt} takes {job.channels}")
    if job.upscale:
        x = torch.from_numpy(image)[None]
        image = torch.nn.functional.interpolate(x, scale_factor=job.upscale, mode="bicubic").clamp(0, 1)[0].numpy()
    mapping = job.datamodule.unit_map(image, str(path)) if matches else UnitMap(clip=(0.0, 1.0))
    labels = None if job.regions is None else job.regions.volume(path, [], image.shape[-2:])
    restored = mapping.from_unit(job.restorer(mapping.to_unit(image), labels), job.floor)
    log_regions(job, path)
    if grey_through_rgb:  # a grey image comes back grey, as it went in
        restored = restored.mean(axis=0, keepdims=True)
    write_image(out / path.name, restored, image_bits(path))  # a 16-bit input keeps its precision
    return out / path.name
