"""Restoring scans with a checkpoint, the pipeline of ``python -m ratlit.predict``.

Each input is read and normalised as the run's task reads its training data, one volume at a time: a DICOM
series (the files of one SeriesInstanceUID in the input folder, ordered along the slice normal) or a NIfTI
file (reoriented to RAS+ and cut along ``slice_axis``, as training does) is mapped to the network's units
by the task's DataModule (``unit_map``: CT its HU window, PET the whole LQ volume's 99.9th percentile) and
restored slice by slice (values a window cut off come back as they went in); PNG/TIFF/JPEG images are
restored whole. Regions come from the partitioner the run was trained with, computed once per whole image and
cached, as dense as on the run's training images (``region_reference``, ratlit.partition.density;
docs/scale.md), or from the user's own label maps (``regions=``, :mod:`ratlit.inference.regions`); the log
says which, and how many regions each image got.

Outputs keep the input's format, name and geometry: DICOM slices as derived DICOM (header kept, ImageType
DERIVED\\SECONDARY, new SOP / series UIDs, RescaleSlope/Intercept chosen per slice so no restored value is
clipped, uncompressed Explicit VR Little Endian whatever the input's encoding); NIfTI in the input's own
orientation, affine and header (float32); images in their format, bit depth and channels. ``nonnegative``
keeps restored values >= 0 (default: the task's, on for PET activity). The input's modality (DICOM Modality) and
format are checked against the checkpoint's task; ``force=true`` runs anyway.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.inputs import check_inputs, input_files, kind_of
from ratlit.data.io import DICOM_SUFFIXES
from ratlit.inference.formats import Job, dicom_series, restore_dicom_series, restore_image, restore_nifti
from ratlit.inference.regions import RegionMaps, check_region_maps, input_count
from ratlit.inference.restorer import Restorer
from ratlit.models.tiling import Tiling, keeps_freed_memory
from ratlit.partition import SlicPartitioner, partitioner_from_spec
from ratlit.partition.density import DensityKeepingCache, reference_shape
from ratlit.training.run_loading import build_module, checkpoint_file, load_checkpoint
from ratlit.utils.allocator import keep_freed_memory
from ratlit.utils.config import instantiate
from ratlit.utils.errors import InputError
from ratlit.utils.files import DiskFullError, check_writable, staged_folder

log = logging.getLogger("ratlit.predict")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


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
    trusted: Iterable[str] | None = None,
    regions: Path | None = None,
    region_reference: str | int | Sequence[int] | None = "train",
) -> list[Path]:
    """Restore ``source`` (a file or a folder) with the checkpoint ``ckpt`` (a file or a run folder) into the
    folder ``out``: every input (and every label map of ``regions``) is checked first, before a partitioner or
    a network is loaded, and the outputs appear together or not at all.
    ``assume_hu``: CT DICOM files without rescale tags hold HU (None: the run's ``data.assume_hu``). ``trusted``: the
    user's trusted targets for the checkpoint's config (:func:`ratlit.training.run_loading.load_checkpoint`).
    ``regions``: the user's own label maps (:mod:`ratlit.inference.regions`) instead of the run's partitioner.
    ``region_reference``: the image size whose regions per pixel every image keeps (``"train"``: the run's
    ``train_image_shape``; None: the run's partitioner unchanged on every image), see ratlit.partition.density."""
    if accelerator not in ACCELERATORS:
        raise InputError(f"accelerator must be one of {list(ACCELERATORS)}, got {accelerator!r}")
    if nonnegative not in (None, True, False) or force not in (True, False):
        raise InputError("nonnegative must be null, true or false and force true or false, "
                         f"got {nonnegative!r}, {force!r}")
    reference_shape(region_reference, None)  # a bad value fails before the checkpoint is read
    ckpt = checkpoint_file(ckpt)
    run_cfg, state = load_checkpoint(ckpt, trusted)  # its config says what the inputs must be; nothing is built yet
    files = input_files(source)
    if any((out / p.name).resolve() == p.resolve() for p in files):
        raise InputError(f"output {out} would overwrite the inputs; choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; give a folder")
    check_writable(out, "output folder")
    datamodule = task_datamodule(run_cfg)
    axis = int(slice_axis if slice_axis is not None else run_cfg.data.get("slice_axis", 2))
    if axis not in (0, 1, 2):
        raise InputError(f"slice_axis must be 0, 1 or 2, got {axis}")
    task, channels = str(run_cfg.task_name), int(run_cfg.model.net.in_channels)
    scale = int(run_cfg.data.get("scale", 4)) if upscale else None
    hu = bool(run_cfg.data.get("assume_hu", False)) if assume_hu is None else bool(assume_hu)
    check_inputs(files, datamodule, task, channels, ckpt, force, hu)  # before anything is loaded or written
    region_maps = None
    if regions is not None:
        region_maps = RegionMaps(regions, input_count(files))
        check_region_maps(files, region_maps, scale)
    check_free_space(files, out)
    if keeps_freed_memory(tiling, run_cfg.model.net.get("region_impl")):
        keep_freed_memory()
    device = torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")
    cache, regions_from = None, f"regions={regions}"
    if region_maps is None:
        partitioner = partitioner_from_spec(dict(run_cfg.partition_used))
        cache_root = Path(str(run_cfg.paths.cache_dir)).expanduser() if cache_dir is None else cache_dir
        reference = reference_shape(region_reference, run_cfg.get("train_image_shape"))
        if region_reference == "train" and reference is None and isinstance(partitioner, SlicPartitioner):
            log.warning("%s records no training image size: every image gets %d SLIC regions whatever its size; "
                        "pass region_reference=[height,width] of the training images to keep their region density",
                        ckpt, partitioner.n_segments)
        cache = DensityKeepingCache(cache_root / "partitions" / "predict", partitioner, reference)
        regions_from = f"the partitioner {partitioner.name} (the run's)"
    restorer = Restorer(build_module(run_cfg, state), cache, device, tiling)
    floor = datamodule.value_floor if nonnegative is None else (0.0 if nonnegative else None)
    job = Job(restorer, datamodule, task, ckpt, channels, axis, floor, scale, force, region_maps, regions_from)
    if source.is_file() and kind_of(source) == "dicom":
        siblings = [p for p in source.parent.iterdir()
                    if p != source and p.is_file() and p.suffix.lower() in DICOM_SUFFIXES]
        if siblings:
            log.warning("restoring %s alone: it is normalised as a one-slice volume; give its folder %s to restore "
                        "(and normalise) the whole series as training does", source, source.parent)
    written: list[Path] = []
    try:
        with staged_folder(out) as stage:
            for path in tqdm(files, desc="files", unit="file", disable=len(files) < 2):
                if kind_of(path) == "image":
                    written.append(restore_image(path, stage, job))
                elif kind_of(path) == "nifti":
                    written.append(restore_nifti(path, stage, job))
            for series in dicom_series([p for p in files if kind_of(p) == "dicom"]):
                written += restore_dicom_series(series, stage, job)
    except DiskFullError as err:
        kept = f"the files already in {out} are unchanged" if out.exists() else f"{out} was not created"
        raise InputError(f"the disk filled while restoring into {out} ({err}): none of the {len(written)} "
                         f"file(s) restored so far was kept, as predict writes all its outputs or none; {kept}. "
                         "Free some space or choose another output= and run it again") from None
    written = [out / p.name for p in written]
    for path in written:
        log.info("wrote %s", path)
    return written


def output_bytes(files: list[Path]) -> int:
    """The bytes the outputs of ``files`` need at least, where known before restoring them: uncompressed NIfTI
    (float32 voxels) and DICOM (16-bit pixels); compressed outputs (PNG, .nii.gz) are left out."""
    import nibabel as nib

    from ratlit.data.io import read_dicom

    total = 0
    for path in files:
        kind = kind_of(path)
        if kind == "nifti" and path.name.lower().endswith(".nii"):
            total += 4 * int(np.prod(nib.load(str(path)).shape)) + 352
        elif kind == "dicom":
            header = read_dicom(path, pixels=False).header
            total += 2 * int(header.get("Rows", 0)) * int(header.get("Columns", 0))
    return total


def check_free_space(files: list[Path], out: Path) -> None:
    """Refuse to start when the output's filesystem has less free space than the outputs surely need."""
    needed = output_bytes(files)
    folder = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InputError(f"not enough space for the restored files in {out}: they need at least "
                         f"{needed / 1e6:.1f} MB and {free / 1e6:.1f} MB are free")
