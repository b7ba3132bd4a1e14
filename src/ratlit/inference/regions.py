"""The user's own region maps for predict (``regions=``): label maps made elsewhere (e.g. SAM or MedSAM masks
merged into one label map), given as one file for a single input or a folder matched to the inputs by name.

A label map holds one integer region id per pixel (any ids, not necessarily contiguous), in NIfTI (``.nii``,
``.nii.gz``: a volume, reoriented to RAS+ as predict reads NIfTI inputs), NumPy (``.npy``, read without
pickles) or PNG/TIFF (one channel). It must have the input's shape: ``[H, W]`` for an image, the volume's
shape for a NIfTI file, ``[rows, cols, slices]`` (slices in series order) for a DICOM series, or ``[rows,
cols]`` per slice for a file matched to one DICOM slice. Everything is read and checked before a network or a
partitioner is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ratlit.utils.errors import InputError

LABEL_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png", ".tif", ".tiff")
_INPUT_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".ima", ".png", ".tif", ".tiff", ".jpg", ".jpeg")


def name_key(path: Path) -> str:
    """A file's name without its format's suffix (``scan.nii.gz`` -> ``scan``), to match label maps by."""
    name = path.name
    for suffix in (*_INPUT_SUFFIXES, ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_label_map(path: Path) -> np.ndarray:
    """An int64 label map from ``path`` (NIfTI, NPY, PNG/TIFF); values must be whole numbers."""
    lower = path.name.lower()
    if not lower.endswith(LABEL_SUFFIXES):
        raise InputError(f"region map {path} is not NIfTI (.nii, .nii.gz), NumPy (.npy) or PNG/TIFF")
    try:
        if lower.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.as_closest_canonical(nib.load(str(path)))
            values = np.asarray(image.dataobj)
            if values.ndim == 4 and values.shape[-1] == 1:
                values = values[..., 0]
        elif lower.endswith(".npy"):
            values = np.load(path, allow_pickle=False)
        else:
            from skimage import io as skio

            values = np.asarray(skio.imread(path))
            if values.ndim == 3 and values.shape[-1] in (1, 2):  # grey (+ alpha)
                values = values[..., 0]
            elif values.ndim == 3:
                raise InputError(f"region map {path} has {values.shape[-1]} channels; a label map has one")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read region map {path}: {type(err).__name__}: {err}") from err
    if values.dtype == bool:
        values = values.astype(np.int64)
    elif not np.issubdtype(values.dtype, np.number):
        raise InputError(f"region map {path} holds {values.dtype} values; a label map holds integers")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise InputError(f"region map {path} holds values that are not whole numbers; a label map holds "
                             "one integer region id per pixel")
    return np.ascontiguousarray(values.astype(np.int64))


class RegionMaps:
    """The label maps given by ``regions=``: ``for_input(name, shape)`` finds, reads and checks the one of an
    input (a file, or a DICOM series named by its folder) and its slices' file names."""

    def __init__(self, source: Path, inputs: int) -> None:
        if not source.exists():
            raise InputError(f"regions={source} does not exist")
        self.source, self.inputs = source, inputs

    def _file_for(self, names: Sequence[Path]) -> Path | None:
        if self.source.is_file():
            return self.source
        wanted = {name_key(p) for p in names}
        found = [p for p in sorted(self.source.iterdir())
                 if p.is_file() and p.name.lower().endswith(LABEL_SUFFIXES) and name_key(p) in wanted]
        if len(found) > 1:
            raise InputError(f"regions folder {self.source} holds {len(found)} label maps for "
                             f"{names[0].name}: {', '.join(p.name for p in found)}")
        return found[0] if found else None

    def volume(self, source: Path, slices: Sequence[Path], shape: tuple[int, ...],
               native: tuple[tuple[int, ...], Callable[[np.ndarray], np.ndarray]] | None = None) -> np.ndarray:
        """The label map of one input of ``shape``: a file named like ``source`` (or, for a DICOM series, one
        per slice named like each slice file), checked against the input's shape. ``native``: for a NIfTI input,
        its file's own shape and the map from that voxel order to predict's (RAS+), applied to a label map that
        is not itself NIfTI (a NIfTI label map is reoriented by its own affine)."""
        if self.source.is_file() and self.inputs > 1:
            raise InputError(f"regions={self.source} is one file but the input holds {self.inputs} images or "
                             "volumes; give a folder of label maps named like the inputs")
        found = self._file_for([source])
        if found is not None:
            labels = read_label_map(found)
        elif slices and len(shape) == 3:
            per_slice = [self._file_for([p]) for p in slices]
            missing = [p.name for p, f in zip(slices, per_slice, strict=True) if f is None]
            if missing:
                raise InputError(f"regions folder {self.source} has no label map for {source} (nor for its "
                                 f"slices {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
            labels = np.stack([read_label_map(f) for f in per_slice], axis=-1)  # type: ignore[arg-type]
            found = self.source
        else:
            raise InputError(f"regions folder {self.source} has no label map named like {source.name} "
                             f"(e.g. {name_key(source)}.npy, .nii.gz or .png)")
        if labels.ndim == len(shape) + 1 and labels.shape[0] == 1:
            labels = labels[0]
        if native is not None and not found.name.lower().endswith((".nii", ".nii.gz")):
            native_shape, to_canonical = native
            if tuple(labels.shape) != tuple(native_shape)[: labels.ndim] or labels.size != int(np.prod(shape)):
                raise InputError(f"region map {found} has shape {tuple(labels.shape)} but {source} is "
                                 f"{tuple(native_shape)}; a label map has the input's shape")
            labels = to_canonical(labels).reshape(shape)
        if tuple(labels.shape) != tuple(shape):
            raise InputError(f"region map {found} has shape {tuple(labels.shape)} but {source} is "
                             f"{tuple(shape)}; a label map has the input's shape")
        return labels


def check_region_maps(files: Sequence[Path], maps: RegionMaps, upscale: int | None = None) -> None:
    """Read and check the label map of every input against its shape, before any network is loaded."""
    import nibabel as nib

    from ratlit.data.inputs import kind_of
    from ratlit.data.io import read_dicom, read_image

    series: dict[str, list[Path]] = {}
    for path in files:
        kind = kind_of(path)
        if kind == "image":
            height, width = read_image(path).shape[-2:]
            maps.volume(path, [], (height * (upscale or 1), width * (upscale or 1)))
        elif kind == "nifti":
            image = nib.load(str(path))
            native = tuple(int(n) for n in image.shape)
            index = np.arange(int(np.prod(native))).reshape(native)
            reoriented = nib.orientations.apply_orientation(index, nib.io_orientation(image.affine))
            flat = reoriented.reshape(-1)
            maps.volume(path, [], reoriented.shape[:3], (native, lambda labels, flat=flat: labels.ravel()[flat]))
        else:
            header = read_dicom(path, pixels=False)
            series.setdefault(str(header.header.get("SeriesInstanceUID", "")), []).append(path)
    for paths in series.values():
        slices = sorted((read_dicom(p, pixels=False) for p in paths), key=lambda s: s.position)
        first = slices[0].header
        source = slices[0].path.parent if len(slices) > 1 else slices[0].path
        maps.volume(source, [s.path for s in slices], (int(first.Rows), int(first.Columns), len(slices)))


def input_count(files: Sequence[Path]) -> int:
    """How many images, NIfTI volumes and DICOM series (by SeriesInstanceUID) ``files`` hold."""
    from ratlit.data.inputs import kind_of
    from ratlit.data.io import read_dicom

    dicom = {str(read_dicom(p, pixels=False).header.get("SeriesInstanceUID", "")) for p in files
             if kind_of(p) == "dicom"}
    return sum(kind_of(p) != "dicom" for p in files) + len(dicom)
