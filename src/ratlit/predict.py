"""Restore scans: ``python -m ratlit.predict ckpt=<ckpt> input=<file or folder> output=<folder>``.

DICOM slices come back as DICOM (the header kept; new SOP/series UIDs; the series description says it
was restored), NIfTI volumes as NIfTI (same affine and header, every slice restored), PNG/TIFF/JPEG as the
same format. Whole images at once, no tiles. Regions come from the partitioner the run was trained with,
computed once per image and cached. The intensity mapping is the run's task's (CT: its HU window;
PET: the LQ volume's 99.9th percentile; pathology: [0, 1], ``upscale=true`` first enlarges a
low-resolution image by the task's scale with bicubic interpolation).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from ratlit.checkpoint import build_module, load_checkpoint, resolve_path
from ratlit.config import CONF_DIR, exit_on_user_error
from ratlit.data.io import IMAGE_SUFFIXES, is_nifti, read_dicom, read_image, write_dicom, write_image
from ratlit.data.pet import PERCENTILE as PET_PERCENTILE
from ratlit.files import atomic_output
from ratlit.partition import PartitionCache, partitioner_from_spec

log = logging.getLogger("ratlit.predict")


class Restorer:
    """A trained module + its partitioner; ``restorer(image [C, H, W]) -> [C, H, W]`` in network units."""

    def __init__(self, module: torch.nn.Module, cache: PartitionCache, device: torch.device) -> None:
        self.module, self.cache, self.device = module.to(device), cache, device

    def __call__(self, image: np.ndarray) -> np.ndarray:
        regions = self.cache.labels(image)
        lq = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            out = self.module(lq, torch.from_numpy(regions)[None].to(self.device))
        return out[0].float().cpu().numpy()


def input_files(path: Path) -> list[Path]:
    if not path.exists():
        raise ValueError(f"input {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"input folder {path} is empty")
    return files


def kind_of(path: Path) -> str:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if is_nifti(path):
        return "nifti"
    return "dicom"


def restore_dicom(path: Path, out: Path, restorer: Restorer, cfg_data: DictConfig, series_uid: str) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ratlit.data.ct import hu_to_unit, unit_to_hu

    ct = read_dicom(path)
    ds = ct.header
    if "hu_min" in cfg_data:
        lo, hi = float(cfg_data.hu_min), float(cfg_data.hu_max)
        restored_hu = unit_to_hu(restorer(hu_to_unit(ct.pixels, lo, hi)[None])[0], lo, hi)
    else:  # a PET model on a DICOM slice: the slice's own 99.9th percentile scales it
        scale = float(np.percentile(ct.pixels, PET_PERCENTILE)) or 1.0
        restored_hu = restorer((ct.pixels / scale)[None])[0] * scale
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    bits = int(getattr(ds, "BitsStored", 16))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored = np.clip(np.round((restored_hu - intercept) / slope), low, high)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.BitsAllocated = 16
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = f"{getattr(ds, 'SeriesDescription', '')} restored by ratlit RAT".strip()[:64]
    ds.DerivationDescription = "Restored (denoised) by the ratlit Region Attention Transformer"
    write_dicom(out / path.name, ds)


def restore_nifti(path: Path, out: Path, restorer: Restorer, slice_axis: int) -> None:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:
        raise ValueError(f"cannot read NIfTI file {path}: {err}") from err
    if volume.ndim != 3:
        raise ValueError(f"NIfTI file {path} has shape {volume.shape}; a 3D volume is expected")
    # The run's slice_axis is in RAS+ (canonical) axes; find the file's own axis that maps to it.
    native_axis = int(np.flatnonzero(nib.io_orientation(image.affine)[:, 0] == slice_axis)[0])
    scale = float(np.percentile(volume, PET_PERCENTILE)) or 1.0
    restored = np.empty_like(volume)
    for index in range(volume.shape[native_axis]):
        piece = np.take(volume, index, axis=native_axis) / scale
        result = restorer(piece[None])[0] * scale
        slicer = [slice(None)] * 3
        slicer[native_axis] = index
        restored[tuple(slicer)] = result
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    result_image = nib.Nifti1Image(restored, image.affine, header)
    with atomic_output(out / path.name, ".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(result_image, str(tmp))


def restore_image(path: Path, out: Path, restorer: Restorer, channels: int, upscale: int | None) -> None:
    image = read_image(path)
    if image.shape[0] != channels:
        if image.shape[0] == 1 and channels == 3:
            image = np.repeat(image, 3, axis=0)
        else:
            raise ValueError(f"{path} has {image.shape[0]} channels; the model takes {channels}")
    if upscale:
        x = torch.from_numpy(image)[None]
        image = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="bicubic").clamp(0, 1)[0].numpy()
    write_image(out / path.name, np.clip(restorer(image), 0, 1))


@exit_on_user_error
def predict(cfg: DictConfig) -> list[Path]:
    cwd = Path(get_original_cwd())
    ckpt = resolve_path(cfg.ckpt, cwd)
    source, out = resolve_path(cfg.input, cwd), resolve_path(cfg.output, cwd)
    run_cfg, state = load_checkpoint(ckpt)
    files = input_files(source)
    if any((out / p.name).resolve() == p.resolve() for p in files):
        raise ValueError(f"output {out} would overwrite the inputs; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    partitioner = partitioner_from_spec(dict(run_cfg.partition_used))
    cache_dir = Path(str(run_cfg.paths.cache_dir)).expanduser() if cfg.cache_dir is None else resolve_path(cfg.cache_dir, cwd)
    restorer = Restorer(build_module(run_cfg, state), PartitionCache(cache_dir / "partitions" / "predict", partitioner), device)
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    channels = int(run_cfg.model.net.in_channels)
    slice_axis = int(cfg.slice_axis if cfg.slice_axis is not None else run_cfg.data.get("slice_axis", 2))
    upscale = int(run_cfg.data.get("scale", 4)) if cfg.upscale else None
    written = []
    for path in files:
        kind = kind_of(path)
        if kind == "image":
            restore_image(path, out, restorer, channels, upscale)
        elif kind == "nifti":
            restore_nifti(path, out, restorer, slice_axis)
        else:
            restore_dicom(path, out, restorer, run_cfg.data, series_uid)
        written.append(out / path.name)
        log.info("restored %s -> %s", path, out / path.name)
    print(f"restored {len(written)} file(s) into {out}")
    return written


@hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
