"""PET synthesis: paired low-/full-count volumes cut into 2D slices, and an embedded simulated brain set.

Real layout (``root``): ``lq/`` and ``hq/`` folders holding one volume per patient with the same name —
a NIfTI file (``P001.nii.gz``) or a DICOM series folder (``P001/``). Volumes are cut along
``slice_axis`` (NIfTI volumes are first reoriented to RAS+, so 2 is axial). A slice is *air-only*, and
dropped, when fewer than ``min_foreground_fraction`` of its HQ pixels exceed ``air_threshold`` times the
HQ volume's 99.9th percentile. Intensities: both volumes of a patient are divided by the 99.9th percentile
of the LQ volume (known at inference time), so LQ is about [0, 1]; PSNR/SSIM use data range 1.

Embedded set: nilearn's MNI152 grey- and white-matter maps (2 mm) give an FDG-like activity (grey matter
``gm_ratio`` times white matter, about 4, plus hot lesions), a head attenuation map (water), per-subject
variations (a smooth random deformation and head size, rotation, mirroring, ratio, lesions, dose: the one
template brain made into subjects of their own); each axial slice is acquired in 2D (96 views),
full counts Poisson and low counts thinned by ``dose_reduction`` (12, the paper's), both reconstructed
by OSEM (4 iterations x 8 subsets) with a 4 mm FWHM Gaussian post-filter.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.io import check_volume_pair, dicom_files, is_nifti, read_dicom, read_volume, write_nifti
from ratlit.data.sample import Sample
from ratlit.data.splits import write_splits
from ratlit.data.unit_map import UnitMap
from ratlit.data.value_assumptions import note_values
from ratlit.utils.errors import InputError

PERCENTILE = 99.9


def _cached_volume(path: Path) -> np.ndarray:
    """``read_volume`` with a small per-process cache that notices when the file changes."""
    stat = path.stat()
    return _read_volume_version(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _read_volume_version(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    return read_volume(path)


def _load_pet_slice(lq_path: Path, hq_path: Path, axis: int, index: int, units: UnitMap
                    ) -> tuple[np.ndarray, np.ndarray]:
    lq = units.to_unit(np.take(_cached_volume(lq_path), index, axis=axis))
    hq = units.to_unit(np.take(_cached_volume(hq_path), index, axis=axis))
    return lq[None].astype(np.float32), hq[None].astype(np.float32)


def _volume_key(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_pet_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """``(patient, lq, hq)`` volumes from ``root/lq`` and ``root/hq``, paired by name."""
    folders = {}
    for side in ("lq", "hq"):
        folder = root / side
        if not folder.is_dir():
            raise InputError(f"PET root {root} needs an '{side}' folder of volumes "
                             "(NIfTI files or DICOM series folders)")
        entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and (p.is_dir() or is_nifti(p))]
        if not entries:
            raise InputError(f"no NIfTI volumes or DICOM series folders in {folder}")
        volumes: dict[str, Path] = {}
        for path in entries:
            key = _volume_key(path)
            if key in volumes:  # e.g. P001.nii beside P001.nii.gz, or P001/ beside P001.nii.gz: which is meant?
                raise InputError(f"two PET volumes named {key!r} in {folder}: {volumes[key].name} and {path.name}")
            volumes[key] = path
        folders[side] = volumes
    lq, hq = folders["lq"], folders["hq"]
    unpaired = sorted(set(lq) ^ set(hq))
    if unpaired:
        where = [str(lq.get(k) or hq.get(k)) for k in unpaired[:5]]
        raise InputError(f"PET volumes without a partner of the same name in lq/ and hq/: {where}")
    return [(key, lq[key], hq[key]) for key in sorted(lq)]


class PETDataModule(RestorationDataModule):
    """Low-count -> full-count PET slices, one channel, normalised by the LQ volume's 99.9th percentile."""

    task = "pet"
    embedded_version = 2  # 2: 14 subjects with their own anatomy, 8 of them test (1: 6 subjects, 1 test)

    def __init__(
        self,
        root: str | None = None,
        slice_axis: int = 2,
        air_threshold: float = 0.01,
        min_foreground_fraction: float = 0.01,
        dose_reduction: float = 12.0,
        geometry_tolerance_mm: float = 0.5,
        **kwargs,
    ) -> None:
        kwargs.setdefault("patch_size", 192)
        super().__init__(root=root, **kwargs)
        if slice_axis not in (0, 1, 2):
            raise InputError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        self.slice_axis, self.air_threshold = slice_axis, air_threshold
        self.min_foreground_fraction, self.dose_reduction = min_foreground_fraction, dose_reduction
        self.geometry_tolerance_mm = geometry_tolerance_mm

    def list_samples(self, root: Path) -> list[Sample]:
        samples = []
        for patient, lq_path, hq_path in find_pet_pairs(root):
            lq, hq = _cached_volume(lq_path), _cached_volume(hq_path)
            if lq.shape != hq.shape:
                raise InputError(f"PET volumes do not pair: {lq_path} is {lq.shape}, {hq_path} is {hq.shape}")
            check_volume_pair(lq_path, hq_path, self.geometry_tolerance_mm)
            note_pet_values(lq_path)
            if not np.isfinite(lq).all() or not np.isfinite(hq).all():
                raise InputError(f"PET volume {lq_path} or {hq_path} holds NaN/inf values")
            units = self.unit_map(lq, str(lq_path))  # the map predict uses too; refuses a volume without activity
            hq_level = float(np.percentile(hq, PERCENTILE))
            moved = np.moveaxis(hq, self.slice_axis, 0).reshape(hq.shape[self.slice_axis], -1)
            foreground = (moved > self.air_threshold * hq_level).mean(axis=1)
            for index in np.flatnonzero(foreground >= self.min_foreground_fraction):
                load = partial(_load_pet_slice, lq_path, hq_path, self.slice_axis, int(index), units)
                samples.append(Sample(f"{patient}/{index:04d}", patient, load))
        return samples

    def build_embedded(self, folder: Path, seed: int) -> None:
        build_embedded_pet(folder, seed, dose_reduction=self.dose_reduction)

    input_formats = ("dicom", "nifti")
    modalities = ("PT", "PET")  # PT is DICOM's code; PET is seen in the wild
    value_floor = 0.0  # activity concentration is never negative

    def unit_map(self, volume: np.ndarray, source: str) -> UnitMap:
        """The whole LQ volume divided by its 99.9th percentile (``list_samples`` maps training pairs with it)."""
        scale = float(np.percentile(volume, PERCENTILE))
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(f"PET volume {source} has no positive activity (99.9th percentile {scale})")
        return UnitMap(scale=scale)


def note_pet_values(path: Path) -> None:
    """Say (once per process) what the values of a PET volume, a DICOM series folder or a NIfTI file, are taken as."""
    if path.is_dir():
        note_values("pet", "dicom", path, read_dicom(dicom_files(path)[0], pixels=False).header)
    else:
        note_values("pet", "nifti", path)


# --- the embedded data set --------------------------------------------------------------------------

# 8 test subjects (each its own anatomy, activity and lesions) so that an interval can rest on subjects, not on
# slices of one; every 6th axial slice keeps the build near 2 minutes on 2 cores.
EMBEDDED_SUBJECTS = 14
EMBEDDED_SLICE_STEP = 6
EMBEDDED_SPLITS = {"train": [f"sub-{s:02d}" for s in range(1, 5)], "val": ["sub-05", "sub-06"],
                   "test": [f"sub-{s:02d}" for s in range(7, 15)]}
DEFORMATION_MM = 4.0  # typical size of a subject's smooth departure from the template (a few gyri's width)
MU_TISSUE_PER_MM = 0.0096  # water at 511 keV
VOXEL_MM = 2.0
GRID = 192  # the paper trains PET on 192 x 192 patches
POSTFILTER_FWHM_MM = 4.0  # clinical OSEM reconstructions are post-filtered with a 4-6 mm Gaussian


def mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 grey matter, white matter and head mask (2 mm), each ``[X, Y, Z]`` in RAS+."""
    import nibabel as nib
    from nilearn import datasets
    from scipy.ndimage import binary_fill_holes

    images = [datasets.load_mni152_gm_template(resolution=2), datasets.load_mni152_wm_template(resolution=2),
              datasets.load_mni152_template(resolution=2)]
    gm, wm, t1 = (np.asarray(nib.as_closest_canonical(i).get_fdata(), dtype=np.float64) for i in images)
    head = np.stack([binary_fill_holes(t1[..., z] > 0.05) for z in range(t1.shape[2])], axis=-1)
    return gm, wm, head


def _deformed(volumes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """``volumes`` (one grid) warped by one smooth random deformation: a head size of 0.92-1.08 times the
    template's and a displacement field of Gaussian-smoothed noise (about ``DEFORMATION_MM``), so a subject's
    anatomy is its own rather than the template's."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    shape = volumes[0].shape
    centre = (np.array(shape) - 1) / 2
    scale = rng.uniform(0.92, 1.08)
    grid = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    coords = []
    for axis in range(3):
        field = gaussian_filter(rng.normal(size=shape), 6.0)
        field *= DEFORMATION_MM / VOXEL_MM / max(field.std(), 1e-12)
        coords.append(centre[axis] + (grid[axis] - centre[axis]) / scale + field)
    return [map_coordinates(v, coords, order=1, mode="constant") for v in volumes]


def _subject_maps(gm, wm, head, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One subject: its own anatomy (the template deformed), activity and attenuation volumes on a 192 x 192 axial
    grid."""
    from scipy.ndimage import rotate

    gm, wm, head = _deformed([gm, wm, head.astype(np.float64)], rng)
    head = head > 0.5
    ratio = rng.uniform(3.5, 4.5)
    activity = ratio * gm + wm + 0.1 * head
    zs, ys, xs = np.nonzero(gm.transpose(2, 1, 0) > 0.3)
    for _ in range(rng.integers(1, 4)):  # hot lesions in grey or white matter
        k = rng.integers(len(zs))
        centre, radius = np.array([xs[k], ys[k], zs[k]]), rng.uniform(1.5, 3.5)
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in gm.shape), indexing="ij"), -1)
        activity[np.linalg.norm(grid - centre, axis=-1) <= radius] *= rng.uniform(1.5, 3.0)
    mu = MU_TISSUE_PER_MM * head
    angle, mirror = rng.uniform(-10, 10), rng.random() < 0.5
    out = []
    for volume in (activity, mu):
        if mirror:
            volume = volume[::-1]
        volume = rotate(volume, angle, axes=(0, 1), reshape=False, order=1, mode="constant")
        pad = [((GRID - n) // 2, GRID - n - (GRID - n) // 2) for n in volume.shape[:2]] + [(0, 0)]
        out.append(np.clip(np.pad(volume, pad), 0, None))
    return out[0] * rng.uniform(0.8, 1.2), out[1]


def _simulate_pet_job(job) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    from ratlit.data.simulation import simulate_pet_pair

    activity, mu, counts, dose_reduction, seed = job
    low, full = simulate_pet_pair(activity, mu, VOXEL_MM, counts, dose_reduction, np.random.default_rng(seed))
    sigma = POSTFILTER_FWHM_MM / 2.355 / VOXEL_MM
    return gaussian_filter(low, sigma), gaussian_filter(full, sigma)


def build_embedded_pet(folder: Path, seed: int, dose_reduction: float = 12.0, subjects: int = EMBEDDED_SUBJECTS,
                       slice_step: int = EMBEDDED_SLICE_STEP, counts_per_slice: float = 3e6,
                       workers: int | None = None) -> None:
    """Simulate full- and low-count 2D acquisitions of every ``slice_step``-th axial slice of each subject."""
    import os

    from tqdm.auto import tqdm

    from ratlit.utils.stopping import worker_pool

    gm, wm, head = mni_maps()
    rng = np.random.default_rng(seed)
    volumes = [_subject_maps(gm, wm, head, np.random.default_rng(rng.integers(2**32))) for _ in range(subjects)]
    slices = list(range(0, gm.shape[2], slice_step))
    jobs, seeds = [], iter(np.random.SeedSequence(seed).spawn(subjects * len(slices)))
    for activity, mu in volumes:
        peak = max(activity[..., z].sum() for z in slices)
        for z in slices:  # counts follow the slice's activity, as in a real scan
            jobs.append((activity[..., z], mu[..., z], counts_per_slice * activity[..., z].sum() / peak,
                         dose_reduction, next(seeds)))
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with worker_pool(workers) as pool:  # its workers end with the block, also on an error or a stop
        results = list(tqdm(pool.imap(_simulate_pet_job, jobs, chunksize=4), total=len(jobs),
                            desc="simulating PET scans", unit="slice"))
    for s in range(subjects):
        part = results[s * len(slices) : (s + 1) * len(slices)]
        for side, which in (("lq", 0), ("hq", 1)):
            volume = np.stack([r[which] for r in part], axis=-1)
            write_nifti(folder / side / f"sub-{s + 1:02d}.nii.gz", volume, (VOXEL_MM, VOXEL_MM, VOXEL_MM * slice_step))
    made = {f"sub-{s + 1:02d}" for s in range(subjects)}
    write_splits(folder, {name: [g for g in groups if g in made] for name, groups in EMBEDDED_SPLITS.items()})
