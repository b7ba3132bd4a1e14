"""Restore scans: ``python -m ratlit.predict ckpt=<ckpt> input=<file or folder> output=<folder>``.

Each input is read and normalised as the run's task reads its training data, one volume at a time: a DICOM
series (the files of one SeriesInstanceUID in the input folder, ordered along the slice normal) or a NIfTI
file (reoriented to RAS+ and cut along ``slice_axis``, as training does) is mapped to the network's units
by the task's DataModule (``unit_map``: CT its HU window, PET the whole LQ volume's 99.9th percentile) and
restored slice by slice (values a window cut off come back as they went in); PNG/TIFF/JPEG images are
restored whole. Regions come from the partitioner the run was trained with, computed once per image and cached.

Outputs keep the input's format, name and geometry: DICOM slices as derived DICOM (header kept, ImageType
DERIVED\\SECONDARY, new SOP / series UIDs, RescaleSlope/Intercept chosen per slice so no restored value is
clipped, uncompressed Explicit VR Little Endian whatever the input's encoding); NIfTI in the input's own
orientation, affine and header (float32); images in their format, bit depth and channels. ``nonnegative``
keeps restored values >= 0 (default: the task's, on for PET activity). The input's modality (DICOM Modality) and
format are checked against the checkpoint's task; ``force=true`` runs anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ratlit.cli.command import exit_on_user_error, hydra_command
from ratlit.data.base import RestorationDataModule, UnitMap
from ratlit.data.inputs import check_inputs, format_problem, input_files, kind_of
from ratlit.data.io import (
    DICOM_SUFFIXES,
    DicomSlice,
    image_bits,
    read_dicom,
    read_image,
    read_volume,
    stack_series,
    write_derived_dicom,
    write_image,
)
from ratlit.inference import Tiling, keeps_freed_memory, tile_multiple, tiled_forward
from ratlit.partition import PartitionCache, partitioner_from_spec
from ratlit.training.checkpoint import build_module, checkpoint_file, load_checkpoint
from ratlit.utils.allocator import keep_freed_memory
from ratlit.utils.config import instantiate, user_path
from ratlit.utils.files import atomic_output, staged_folder

log = logging.getLogger("ratlit.predict")
USAGE = "python -m ratlit.predict ckpt=<checkpoint .ckpt> input=<file or folder> output=<folder>"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


class Restorer:
    """A trained module + its partitioner; ``restorer(image [C, H, W]) -> [C, H, W]`` in network units.

    Regions are computed on the whole image; the network runs on tiles of ``tiling`` (ratlit.inference)."""

    def __init__(self, module: torch.nn.Module, cache: PartitionCache, device: torch.device,
                 tiling: Tiling = Tiling(None)) -> None:
        self.module, self.cache, self.device, self.tiling = module.to(device), cache, device, tiling
        self.multiple = tile_multiple(getattr(module, "net", module))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        regions = self.cache.labels(image)
        lq = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            out = tiled_forward(self.module, lq, torch.from_numpy(regions)[None].to(self.device), self.tiling,
                                self.multiple)
        return out[0].float().cpu().numpy()


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


def check_finite(values: np.ndarray, source: object) -> None:
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(f"{source} holds {bad} NaN or infinite value(s); predict needs finite pixel values")


def check_format(job: Job, kind: str, source: object, modality: str | None = None) -> bool:
    """Raise (or, with force, warn) unless ``source``'s format and DICOM modality are what the checkpoint's task
    takes. Returns whether the format is the task's: only then do its intensities map through the task."""
    dm = type(job.datamodule)
    problem = format_problem(job.datamodule, job.task, kind, modality)
    if problem is not None:
        if not job.force:
            raise ValueError(f"{source} {problem} (checkpoint {job.ckpt}); use a {job.task} input or pass force=true")
        log.warning("%s %s; restoring it anyway (force=true)", source, problem)
    return kind in dm.input_formats


def restore_volume(volume: np.ndarray, mapping: UnitMap, job: Job) -> np.ndarray:
    """``[X, Y, Z]`` in the scan's units -> restored, cut along ``job.slice_axis`` as training cuts it."""
    units = mapping.to_unit(volume)
    restored = np.empty_like(units)
    count = units.shape[job.slice_axis]
    for index in tqdm(range(count), desc="slices", unit="slice", leave=False, disable=count < 2):
        piece = np.take(units, index, axis=job.slice_axis)
        slicer: list[slice | int] = [slice(None)] * 3
        slicer[job.slice_axis] = index
        restored[tuple(slicer)] = job.restorer(piece[None])[0]
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
        raise ValueError(f"{source} is a one-channel volume; the checkpoint {job.ckpt} takes {job.channels} channels")
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
    restored = restore_volume(volume, volume_map(job, volume, source, matches), job)
    series_uid, written, rescaled, outside = generate_uid(), [], 0, 0
    for index, dicom in enumerate(slices):
        result = write_derived_dicom(out / dicom.path.name, dicom.header, restored[..., index], series_uid)
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
        raise ValueError(f"cannot read NIfTI file {path}: {err}") from err
    volume = read_volume(path)
    # Send every voxel index through the same reorientation, to know where each canonical voxel came from.
    index = np.arange(int(np.prod(image.shape))).reshape(image.shape)
    canonical_index = nib.orientations.apply_orientation(index, nib.io_orientation(image.affine))
    canonical_index = canonical_index.reshape(volume.shape)
    restored = restore_volume(volume, volume_map(job, volume, path, matches), job)
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
            raise ValueError(f"{path} has {image.shape[0]} channel(s); the checkpoint {job.ckpt} takes {job.channels}")
    if job.upscale:
        x = torch.from_numpy(image)[None]
        image = torch.nn.functional.interpolate(x, scale_factor=job.upscale, mode="bicubic").clamp(0, 1)[0].numpy()
    mapping = job.datamodule.unit_map(image, str(path)) if matches else UnitMap(clip=(0.0, 1.0))
    restored = mapping.from_unit(job.restorer(mapping.to_unit(image)), job.floor)
    if grey_through_rgb:  # a grey image comes back grey, as it went in
        restored = restored.mean(axis=0, keepdims=True)
    write_image(out / path.name, restored, image_bits(path))  # a 16-bit input keeps its precision
    return out / path.name


def task_datamodule(run_cfg: DictConfig) -> RestorationDataModule:
    """The run's task DataModule for its intensity interface only: no data root, no partitioner, nothing read."""
    return instantiate(run_cfg.data, root=None, partitioner=None)


def restore_paths(
    ckpt: Path,
    source: Path,
    out: Path,
    *,
    accelerator: str = "auto",
    cache_dir: Path | None = None,
    slice_axis: int | None = None,
    upscale: bool = False,
    nonnegative: bool | None = None,
    force: bool = False,
    tiling: Tiling = Tiling(None),
    assume_hu: bool | None = None,
) -> list[Path]:
    """Restore ``source`` (a file or a folder) with the checkpoint ``ckpt`` (a file or a run folder) into the
    folder ``out``: every input is checked first, and the outputs appear together or not at all.
    ``assume_hu``: CT DICOM files without rescale tags hold HU (None: the run's ``data.assume_hu``)."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {list(ACCELERATORS)}, got {accelerator!r}")
    if nonnegative not in (None, True, False) or force not in (True, False):
        raise ValueError("nonnegative must be null, true or false and force true or false, "
                         f"got {nonnegative!r}, {force!r}")
    ckpt = checkpoint_file(ckpt)
    run_cfg, state = load_checkpoint(ckpt)
    if keeps_freed_memory(tiling, run_cfg.model.net.get("region_impl")):
        keep_freed_memory()
    files = input_files(source)
    if any((out / p.name).resolve() == p.resolve() for p in files):
        raise ValueError(f"output {out} would overwrite the inputs; choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; give a folder")
    datamodule = task_datamodule(run_cfg)
    axis = int(slice_axis if slice_axis is not None else run_cfg.data.get("slice_axis", 2))
    if axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {axis}")
    device = torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")
    partitioner = partitioner_from_spec(dict(run_cfg.partition_used))
    cache_root = Path(str(run_cfg.paths.cache_dir)).expanduser() if cache_dir is None else cache_dir
    cache = PartitionCache(cache_root / "partitions" / "predict", partitioner)
    restorer = Restorer(build_module(run_cfg, state), cache, device, tiling)
    floor = datamodule.value_floor if nonnegative is None else (0.0 if nonnegative else None)
    job = Job(restorer, datamodule, str(run_cfg.task_name), ckpt, int(run_cfg.model.net.in_channels), axis, floor,
              int(run_cfg.data.get("scale", 4)) if upscale else None, force)
    if source.is_file() and kind_of(source) == "dicom":
        siblings = [p for p in source.parent.iterdir()
                    if p != source and p.is_file() and p.suffix.lower() in DICOM_SUFFIXES]
        if siblings:
            log.warning("restoring %s alone: it is normalised as a one-slice volume; give its folder %s to restore "
                        "(and normalise) the whole series as training does", source, source.parent)
    hu = bool(run_cfg.data.get("assume_hu", False)) if assume_hu is None else bool(assume_hu)
    check_inputs(files, datamodule, job.task, job.channels, ckpt, force, hu)  # before anything is written
    with staged_folder(out) as stage:
        written: list[Path] = []
        for path in tqdm(files, desc="files", unit="file", disable=len(files) < 2):
            if kind_of(path) == "image":
                written.append(restore_image(path, stage, job))
            elif kind_of(path) == "nifti":
                written.append(restore_nifti(path, stage, job))
        for series in dicom_series([p for p in files if kind_of(p) == "dicom"]):
            written += restore_dicom_series(series, stage, job)
    written = [out / p.name for p in written]
    for path in written:
        log.info("wrote %s", path)
    return written


@exit_on_user_error
def predict(cfg: DictConfig) -> list[Path]:
    missing = [key for key in ("ckpt", "input", "output") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ValueError(f"predict needs {', '.join(f'{k}=' for k in missing)}: {USAGE}")
    tiling = Tiling.from_config(cfg.max_tile, cfg.tile_overlap)
    out = user_path(cfg.output)
    written = restore_paths(
        user_path(cfg.ckpt),
        user_path(cfg.input),
        out,
        accelerator=str(cfg.accelerator),
        cache_dir=None if cfg.cache_dir is None else user_path(cfg.cache_dir),
        slice_axis=cfg.slice_axis,
        upscale=bool(cfg.upscale),
        nonnegative=cfg.nonnegative,
        force=cfg.force,
        tiling=tiling,
        assume_hu=cfg.get("assume_hu"),
    )
    print(f"restored {len(written)} file(s) into {out}")
    return written


main = hydra_command("predict", predict, keep_memory=False)  # set once tiling is known

if __name__ == "__main__":
    main()
