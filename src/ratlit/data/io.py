"""Reading and writing the formats users bring: DICOM (slices and series), NIfTI volumes, PNG/TIFF/JPEG.

Every reader raises ``ValueError`` naming the file it could not read; every writer writes to a temporary
file and renames it, so no half-written file is left behind.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ratlit.data.dicom_rescale import modality_values
from ratlit.utils.errors import InputError
from ratlit.utils.files import atomic_output

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".ima", "")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


# --- DICOM -----------------------------------------------------------------------------------------


@dataclass
class DicomSlice:
    """One DICOM image: its modality's values (e.g. HU), its position along the slice normal, its header."""

    path: Path
    position: float
    pixels: np.ndarray  # float32 [H, W], Modality LUT or RescaleSlope/Intercept applied
    header: Any


def read_dicom(path: str | os.PathLike, pixels: bool = True) -> DicomSlice:
    """Read one single-frame DICOM file; ``position`` is ImagePositionPatient along the slice normal."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except Exception as err:
        raise InputError(f"cannot read DICOM file {path}: {err}") from err
    position = _slice_position(ds, path)
    array = np.empty((0, 0), np.float32)
    if pixels:
        try:
            raw = ds.pixel_array
        except Exception as err:
            raise InputError(f"cannot decode the pixels of DICOM file {path}: {err}") from err
        if raw.ndim != 2:
            raise InputError(f"DICOM file {path} holds {raw.shape} pixels; one 2D frame per file is expected")
        try:
            array = modality_values(raw, ds)
        except (ValueError, TypeError, AttributeError, IndexError) as err:  # a malformed Modality LUT
            raise InputError(f"cannot map the stored values of DICOM file {path} to its modality's: {err}") from err
    return DicomSlice(path, position, array, ds)


def _slice_position(ds: Any, path: Path) -> float:
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))
    if "SliceLocation" in ds:
        return float(ds.SliceLocation)
    if "InstanceNumber" in ds:
        return float(ds.InstanceNumber)
    raise InputError(f"DICOM file {path} has no ImagePositionPatient, SliceLocation or InstanceNumber to order it by")


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files of a series folder (``*.dcm``, ``*.IMA`` or extension-less), sorted by name."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    files = [p for p in files if p.suffix.lower() in DICOM_SUFFIXES]
    if not files:
        raise InputError(f"no DICOM files (*.dcm, *.IMA) in {folder}")
    return files


def read_dicom_series(folder: str | os.PathLike, pixels: bool = True) -> list[DicomSlice]:
    """All slices of a series folder, sorted by position along the slice normal."""
    slices = [read_dicom(p, pixels) for p in dicom_files(Path(folder))]
    return sorted(slices, key=lambda s: s.position)


def write_dicom(path: Path, dataset: Any) -> None:
    """Save a pydicom dataset atomically."""
    with atomic_output(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def rescale_to_hold(values: np.ndarray, slope: float, intercept: float, signed: bool) -> tuple[float, float]:
    """RescaleSlope / RescaleIntercept that hold ``values`` in 16-bit stored integers without clipping: the
    given ones when they do (the input's quantisation kept), else the smallest slope that does (the same
    intercept; for unsigned pixels an intercept lowered to the minimum). Both exact as DICOM DS strings."""
    from pydicom.valuerep import format_number_as_ds

    low, high = (-32768, 32767) if signed else (0, 65535)
    vmin, vmax = float(np.min(values)), float(np.max(values))
    if not signed and vmin < intercept:
        intercept = float(np.floor(vmin))
    if intercept + slope * low <= vmin and vmax <= intercept + slope * high:
        return slope, intercept
    needed = max((vmax - intercept) / high, (vmin - intercept) / low if low < 0 else 0.0, 1e-12)
    return float(format_number_as_ds(needed * (1 + 1e-6))), float(format_number_as_ds(intercept))


def write_derived_dicom(
    path: Path, header: Any, values: np.ndarray, series_uid: str, description: str = "restored",
    series_number: int | None = None,
) -> dict[str, float]:
    """Write ``values`` (float [H, W] in the header's rescaled units, e.g. HU or Bq/ml) as a derived image.

    A copy of ``header`` gets 16-bit pixels (signed as the input's) with a RescaleSlope / Intercept chosen for
    this slice (``rescale_to_hold``), so no value is clipped; uncompressed pixel data with the Explicit VR
    Little Endian transfer syntax (file meta consistent) whatever the input's encoding; ImageType
    DERIVED\\SECONDARY; new SOP instance UID; ``series_uid`` and ``series_number`` (default: the input's + 1000, a
    series of its own); a SourceImageSequence item referencing the input image (its SOP class and instance UIDs).
    Returns the slope, intercept and the number of
    values outside the stored type's range (0 unless the values are not finite).
    """
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"restored values for {path} hold NaN or infinite values")
    ds = copy.deepcopy(header)  # the caller's header stays as read
    if not hasattr(ds, "file_meta"):
        ds.file_meta = None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    slope, intercept = rescale_to_hold(values, slope, intercept, signed)
    low, high = (-32768, 32767) if signed else (0, 65535)
    stored = np.round((values - intercept) / slope)
    outside = int(np.count_nonzero((stored < low) | (stored > high)))
    if ds.file_meta is None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # set_pixel_data keeps an uncompressed one as is
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        photometric = "MONOCHROME2"
    ds.set_pixel_data(np.clip(stored, low, high).astype(np.int16 if signed else np.uint16), photometric, 16)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if "ModalityLUTSequence" in ds:  # the values are stored by the rescale above now
        del ds.ModalityLUTSequence
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue"):
        if keyword in ds:  # stored values changed meaning with the new slope / encoding
            del ds[keyword]
    image_type = list(ds.get("ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    if "SOPInstanceUID" in header:  # the derived image names the image it was made from (as read: set_pixel_data
        from pydicom.dataset import Dataset  # gave the copy a new instance UID already)

        source = Dataset()
        source.ReferencedSOPClassUID = header.get("SOPClassUID", "")
        source.ReferencedSOPInstanceUID = header.SOPInstanceUID
        ds.SourceImageSequence = [source]
    ds.SeriesNumber = derived_series_number(header) if series_number is None else int(series_number)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} {description}".strip()[:64]
    ds.DerivationDescription = "Restored (denoised) by the ratlit Region Attention Transformer"
    write_dicom(path, ds)
    return {"slope": slope, "intercept": intercept, "outside": outside}


def derived_series_number(header: Any) -> int:
    """A series number for images derived from ``header``'s series: its own + 1000 (1000 where it has none)."""
    try:
        return int(header.get("SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        return 1000


# --- volumes (NIfTI or DICOM series) ----------------------------------------------------------------


def _corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions ``[8, 3]`` (mm) of a grid's corner voxels, in array-index order."""
    index = np.array(list(itertools.product(*[(0, n - 1) for n in shape[:3]])), dtype=float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def dicom_slice_corners(header: Any) -> np.ndarray | None:
    """World positions ``[4, 3]`` (mm, RAS like NIfTI) of a DICOM slice's corner pixels, in array order;
    None when the header lacks ImagePositionPatient / ImageOrientationPatient / PixelSpacing."""
    if not all(k in header for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
        return None
    position = np.asarray(header.ImagePositionPatient, dtype=float)
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    rows, cols = int(header.Rows), int(header.Columns)
    # pixel (r, c) lies at IPP + c * col_mm * (row direction) + r * row_mm * (column direction), in LPS
    corners = np.array([position + c * col_mm * orientation[:3] + r * row_mm * orientation[3:]
                        for r in (0, rows - 1) for c in (0, cols - 1)])
    return corners * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS


def volume_geometry(path: str | os.PathLike) -> list[tuple[Path, np.ndarray]] | None:
    """Where the voxels of ``read_volume(path)``'s array lie, from the headers only: ``[(file, corners)]``,
    one entry with the 8 corner voxels (mm, RAS, array order) for a NIfTI file, one per slice with its 4
    corner pixels for a DICOM series; None when a series lacks the geometry tags."""
    path = Path(path)
    if path.is_dir():
        slices = read_dicom_series(path, pixels=False)
        corners = [dicom_slice_corners(s.header) for s in slices]
        return None if any(c is None for c in corners) else [(s.path, c) for s, c in zip(slices, corners, strict=True)]
    import nibabel as nib
    from nibabel.orientations import inv_ornt_aff, io_orientation

    try:
        image = nib.load(str(path))
    except Exception as err:
        raise InputError(f"cannot read NIfTI file {path}: {err}") from err
    shape = image.shape[:3]
    ornt = io_orientation(image.affine)  # as read_volume's as_closest_canonical does, without the voxels
    canonical = image.affine @ inv_ornt_aff(ornt, shape)
    return [(path, _corners(canonical, tuple(shape[i] for i in np.argsort(ornt[:, 0]))))]


def _volume_corners(geometry: list[tuple[Path, np.ndarray]]) -> np.ndarray:
    """The 8 corners of a volume in array order (a series: first and last slices' corners interleaved)."""
    if len(geometry) == 1 and len(geometry[0][1]) == 8:
        return geometry[0][1]
    first, last = geometry[0][1], geometry[-1][1]
    return np.stack([c for j in range(4) for c in (first[j], last[j])])


def check_volume_pair(a: Path, b: Path, tolerance_mm: float) -> None:
    """Raise ValueError naming both files (for DICOM series, the first slices that differ) when the voxels
    of two volumes of the same shape do not lie at the same places within ``tolerance_mm``."""
    ga, gb = volume_geometry(a), volume_geometry(b)
    if ga is None or gb is None:
        return
    if len(ga) == len(gb) and len(ga) > 1:  # two series: slice by slice
        for (fa, ca), (fb, cb) in zip(ga, gb, strict=True):
            check_same_geometry(fa, ca, fb, cb, tolerance_mm)
    else:
        check_same_geometry(a, _volume_corners(ga), b, _volume_corners(gb), tolerance_mm)


def check_same_geometry(a: Path, a_corners: np.ndarray | None, b: Path, b_corners: np.ndarray | None,
                        tolerance_mm: float) -> None:
    """Raise ValueError naming both files when their voxels do not lie at the same places (within
    ``tolerance_mm``); nothing to compare when either lacks geometry."""
    if a_corners is None or b_corners is None:
        return
    if a_corners.shape != b_corners.shape:
        raise InputError(f"{a} and {b} do not pair: their grids differ ({len(a_corners)} vs {len(b_corners)} corners)")
    distance = float(np.linalg.norm(a_corners - b_corners, axis=-1).max())
    if distance > tolerance_mm:
        raise InputError(
            f"{a} and {b} do not pair: the same voxel lies up to {distance:.2f} mm apart (affine / "
            f"ImagePositionPatient / ImageOrientationPatient / PixelSpacing differ; tolerance {tolerance_mm} mm, "
            f"data.geometry_tolerance_mm for PET, data.position_tolerance_mm for CT)"
        )


def check_one_slice_shape(slices: list[DicomSlice], source: object) -> None:
    """Refuse a DICOM series whose slices differ in size (Rows x Columns, read from the headers)."""
    shapes = sorted({(int(s.header.get("Rows", 0)), int(s.header.get("Columns", 0))) for s in slices})
    if len(shapes) > 1:
        raise InputError(f"DICOM series {source} mixes slice shapes {shapes}: a series' slices share one size")


def stack_series(slices: list[DicomSlice], source: object) -> np.ndarray:
    """The slices of one series (sorted along the normal) as a volume ``[rows, cols, slices]``."""
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"DICOM series {source} mixes slice shapes {sorted(shapes)}")
    return np.stack([s.pixels for s in slices], axis=-1)


def read_volume(path: str | os.PathLike) -> np.ndarray:
    """A 3D volume as float32 ``[X, Y, Z]``: a NIfTI file (reoriented to RAS+) or a DICOM series folder
    (``[rows, cols, slices]``, slices ordered along the normal)."""
    path = Path(path)
    if path.is_dir():
        return stack_series(read_dicom_series(path), path)
    if not is_nifti(path):
        raise InputError(f"{path} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:
        raise InputError(f"cannot read NIfTI file {path}: {err}") from err
    if volume.ndim == 4 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise InputError(f"NIfTI file {path} has shape {volume.shape}; a 3D volume is expected")
    return volume


def write_nifti(path: Path, volume: np.ndarray, voxel_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
    """Save a float32 volume as NIfTI (RAS+ axes, the given voxel size) atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(volume.astype(np.float32), np.diag([*voxel_mm, 1.0]))
    with atomic_output(path, ".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(image, str(tmp))


# --- 2D images ---------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG / TIFF / JPEG image as float32 ``[C, H, W]`` in [0, 1] (C = 1 or 3; alpha dropped): 8- and 16-bit
    unsigned pixels over their full range, floats as they are (or over their maximum where it exceeds 1)."""
    image = _read_pixels(Path(path))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"image file {path} has shape {image.shape}; expected a grey or RGB(A) image")
    if image.shape[-1] in (2, 4):  # grey + alpha, RGB + alpha
        image = image[..., :-1]
    if np.issubdtype(image.dtype, np.integer):
        if image.dtype not in (np.uint8, np.uint16):
            # e.g. int32 holding 16-bit values: over int32's range the image would read (and train) as black
            raise InputError(f"image file {path} holds {image.dtype} pixels; save it as 8- or 16-bit unsigned "
                             "integers (or floats in [0, 1])")
        scale = float(np.iinfo(image.dtype).max)
    elif image.dtype == bool:
        scale = 1.0
    else:
        scale = 1.0 if image.max(initial=0) <= 1.0 else float(image.max())
    return np.ascontiguousarray(np.moveaxis(image.astype(np.float32) / scale, -1, 0))


def _read_pixels(path: Path) -> np.ndarray:
    from skimage import io as skio

    try:
        return np.asarray(skio.imread(path))
    except Exception as err:
        raise InputError(f"cannot read image file {path}: {err}") from err


def image_bits(path: str | os.PathLike) -> int:
    """The bit depth :func:`write_image` should keep for an image like this file's: 16 for 16-bit or float
    pixels, else 8."""
    return 8 if _read_pixels(Path(path)).dtype in (np.uint8, np.bool_) else 16


def write_image(path: Path, image: np.ndarray, bits: int | None = None) -> None:
    """Save ``[C, H, W]`` in [0, 1] atomically with ``bits`` (8 or 16; None: 16 for TIFF, 8 for PNG/JPEG;
    JPEG holds 8 only)."""
    from skimage import io as skio

    array = np.clip(np.moveaxis(np.asarray(image), 0, -1), 0, 1)
    if array.shape[-1] == 1:
        array = array[..., 0]
    suffix = path.suffix.lower()
    if bits is None:
        bits = 16 if suffix in (".tif", ".tiff") else 8
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    sixteen = bits == 16 and suffix not in (".jpg", ".jpeg")
    array = np.round(array * (65535 if sixteen else 255)).astype(np.uint16 if sixteen else np.uint8)
    with atomic_output(path, path.suffix) as tmp:
        skio.imsave(tmp, array, check_contrast=False)


def read_any_image(path: Path, slice_axis: int = 2, slice_index: int | None = None) -> np.ndarray:
    """A 2D image ``[C, H, W]`` from a PNG/TIFF/JPEG, a DICOM file or a NIfTI volume (one slice of it)."""
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)
    if is_nifti(path):
        volume = read_volume(path)
        index = volume.shape[slice_axis] // 2 if slice_index is None else int(slice_index)
        if not 0 <= index < volume.shape[slice_axis]:
            raise InputError(f"slice_index {index} is outside {path} "
                             f"({volume.shape[slice_axis]} slices on axis {slice_axis})")
        return np.take(volume, index, axis=slice_axis)[None]
    return read_dicom(path).pixels[None]


def find_images(folder: Path) -> list[Path]:
    """Image files (PNG, TIFF, JPEG) directly in ``folder``, sorted."""
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist")
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files
