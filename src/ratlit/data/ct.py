"""CT denoising: the AAPM-Mayo 2016 layout, and an embedded set simulated from real CT slices and phantoms.

Real layout (``root``): one folder per patient, each holding a full-dose and a quarter-dose series folder
(DICOM ``*.dcm`` / ``*.IMA``), recognised by name patterns (``full*``/``*FD*``/``*NDCT*`` and
``quarter*``/``*QD*``/``*LDCT*``, searched at any depth, e.g. ``L067/full_1mm``). Slices are paired by their
position along the slice normal. HU are mapped to the network's range by ``(HU - hu_min) / (hu_max - hu_min)``
clipped to [0, 1] (default window [-1024, 3072] HU); PSNR/SSIM are computed on that range.

Embedded set: real slices shipped by pydicom / pydicom-data plus procedural phantom patients, each scanned
twice in simulation: Beer-Lambert line integrals of the attenuation map (skimage ``radon``, 720 views over
180 degrees), Poisson photon counts with ``photons`` incident photons per ray (normal dose) and
``photons / 4`` (quarter dose), log transform, filtered back-projection (``iradon``, ramp filter).
"""

from __future__ import annotations

import fnmatch
from functools import partial
from pathlib import Path

import numpy as np

from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.dicom_rescale import check_ct_rescale
from ratlit.data.io import (
    check_one_slice_shape,
    check_same_geometry,
    dicom_slice_corners,
    read_dicom,
    read_dicom_series,
    write_dicom,
)
from ratlit.data.sample import Sample
from ratlit.data.splits import write_splits
from ratlit.data.unit_map import UnitMap
from ratlit.utils.errors import InputError

# "*full dose*": TCIA LDCT-and-Projection-data names its series "1.000000-Full Dose Images-96514"
FULL_DOSE_PATTERNS = ("full*", "*full dose*", "*full-dose*", "*full_dose*", "*fd*", "*ndct*", "*normal*")
QUARTER_DOSE_PATTERNS = ("quarter*", "*qd*", "*ldct*", "*low*")


def _load_ct_pair(lq_path: Path, hq_path: Path, window: UnitMap) -> tuple[np.ndarray, np.ndarray]:
    lq, hq = read_dicom(lq_path).pixels, read_dicom(hq_path).pixels
    if lq.shape != hq.shape:
        raise InputError(f"quarter-dose {lq_path} is {lq.shape} but full-dose {hq_path} is {hq.shape}")
    return window.to_unit(lq)[None], window.to_unit(hq)[None]


def _find_series(patient: Path, patterns: tuple[str, ...]) -> list[Path]:
    found = []
    for folder in sorted(p for p in patient.rglob("*") if p.is_dir()):
        rel = folder.relative_to(patient).as_posix().lower()
        if any(fnmatch.fnmatch(part, pattern) for part in rel.split("/") for pattern in patterns):
            if any(f.is_file() for f in folder.iterdir()):
                found.append(folder)
    return found


def _patient_id(path: Path) -> str:
    """The DICOM PatientID of one file ("" where it has none or cannot be read: pairing has read it already)."""
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", ""))
    except Exception:
        return ""


def pair_ct_series(quarter: Path, full: Path, tolerance_mm: float = 0.5,
                   assume_hu: bool = False) -> list[tuple[Path, Path, float]]:
    """Pair quarter- and full-dose slices by position; every slice must find a partner and say how its stored
    values map to HU (``check_ct_rescale``; ``assume_hu`` takes files without rescale tags as HU)."""
    q_slices = read_dicom_series(quarter, pixels=False)
    f_slices = read_dicom_series(full, pixels=False)
    for slices, folder in ((q_slices, quarter), (f_slices, full)):
        check_one_slice_shape(slices, folder)  # as predict refuses such a series
    for dicom in q_slices + f_slices:
        check_ct_rescale(dicom.header, dicom.path, assume_hu)
    if len(q_slices) != len(f_slices):
        raise InputError(
            f"{quarter} has {len(q_slices)} slices but {full} has {len(f_slices)}: the series do not pair"
        )
    f_positions = np.array([s.position for s in f_slices])
    pairs = []
    for q in q_slices:
        nearest = int(np.argmin(np.abs(f_positions - q.position)))
        if abs(f_positions[nearest] - q.position) > tolerance_mm:
            raise InputError(f"{q.path} (position {q.position:.2f} mm) has no full-dose slice within {tolerance_mm} mm "
                             f"in {full}")
        partner = f_slices[nearest]
        check_same_geometry(q.path, dicom_slice_corners(q.header), partner.path, dicom_slice_corners(partner.header),
                            tolerance_mm)  # in-plane too: origin, orientation, pixel spacing
        pairs.append((q.path, partner.path, q.position))
    if len({p[1] for p in pairs}) != len(pairs):
        raise InputError(f"slices of {quarter} and {full} do not pair one to one (duplicate positions?)")
    return pairs


class CTDataModule(RestorationDataModule):
    """AAPM-Mayo-style CT pairs (quarter dose -> full dose), one channel, HU window mapped to [0, 1]."""

    task = "ct"
    embedded_version = 2  # 2: 15 patients, a test split of 8 patients (1: 8 patients, 3 test slices)

    def __init__(
        self,
        root: str | None = None,
        hu_min: float = -1024.0,
        hu_max: float = 3072.0,
        position_tolerance_mm: float = 0.5,
        photons: float = 1.5e5,
        assume_hu: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if not hu_max > hu_min:
            raise InputError(f"need hu_max > hu_min, got {hu_min} and {hu_max}")
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.position_tolerance_mm = position_tolerance_mm
        self.photons = photons
        self.assume_hu = bool(assume_hu)  # DICOM files without RescaleSlope / Intercept: stored values are HU

    def list_samples(self, root: Path) -> list[Sample]:
        patients = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not patients:
            raise InputError(f"no patient folders in CT root {root}")
        samples = []
        for patient in patients:
            full = _find_series(patient, FULL_DOSE_PATTERNS)
            quarter = _find_series(patient, QUARTER_DOSE_PATTERNS)
            if len(full) != 1 or len(quarter) != 1:
                raise InputError(
                    f"patient folder {patient} needs exactly one full-dose and one quarter-dose series folder "
                    f"(names like full_1mm / quarter_1mm); found full={[str(f) for f in full]}, "
                    f"quarter={[str(q) for q in quarter]}"
                )
            pairs = pair_ct_series(quarter[0], full[0], self.position_tolerance_mm, self.assume_hu)
            person = _patient_id(pairs[0][0]) if pairs else ""
            for lq_path, hq_path, _position in pairs:
                load = partial(_load_ct_pair, lq_path, hq_path, self.window)
                samples.append(Sample(f"{patient.name}/{lq_path.stem}", patient.name, load, person))
        return samples

    def build_embedded(self, folder: Path, seed: int) -> None:
        build_embedded_ct(folder, seed, photons=self.photons)

    @property
    def window(self) -> UnitMap:
        """HU -> [0, 1]: ``(HU - hu_min) / (hu_max - hu_min)`` clipped, the same for every slice and volume."""
        return UnitMap(scale=self.hu_max - self.hu_min, offset=self.hu_min, clip=(0.0, 1.0))

    def to_hu(self, x: np.ndarray) -> np.ndarray:
        return self.window.from_unit(x)

    input_formats = ("dicom", "nifti")
    modalities = ("CT",)

    def unit_map(self, volume: np.ndarray, source: str) -> UnitMap:
        """The HU window the loaders use (:attr:`window`)."""
        return self.window


def write_ct_series(folder: Path, slices_hu: list[np.ndarray], patient_id: str, description: str,
                    pixel_mm: float, positions: list[float], study_uid: str) -> None:
    """Write HU slices as a CT DICOM series (int16, RescaleIntercept -1024)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series_uid = generate_uid()
    for index, (hu, position) in enumerate(zip(slices_hu, positions, strict=True), start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesDescription, ds.InstanceNumber = description, index
        ds.ImagePositionPatient = [0.0, 0.0, float(position)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = float(position)
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = 1.0
        ds.Rows, ds.Columns = hu.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.clip(np.round(hu + 1024), -32768, 32767).astype(np.int16).tobytes()
        write_dicom(folder / f"{index:04d}.dcm", ds)


# --- the embedded data set --------------------------------------------------------------------------

# (patient id, package, file): real CT slices shipped by pydicom and pydicom-data, one per distinct patient (their
# other CT files are the same slices in other encodings, or an enhanced multi-frame file).
REAL_CT_SLICES = (
    ("cq500-ct-310", "data_store", "693_UNCI.dcm"),
    ("pancreas-0001", "data_store", "explicit_VR-UN.dcm"),
    ("b2cbe507f250", "data_store", "bad_sequence.dcm"),
    ("jxd191021006", "pydicom", "J2K_pixelrep_mismatch.dcm"),
    ("1ct1", "pydicom", "CT_small.dcm"),
)
EMBEDDED_SIZE = 512
# Slices of each phantom patient (phantom-01, -02, ...): the test split holds 8 independent patients and 26 slices
# (6 phantoms x 4 + 2 real), enough groups for a patient-level interval; the build stays near 2 minutes on 2 cores.
EMBEDDED_PHANTOM_SLICES = (2, 2, 2, 2, 4, 4, 4, 4, 4, 4)
EMBEDDED_SPLITS = {
    "train": ["cq500-ct-310", "jxd191021006", "phantom-01", "phantom-02", "phantom-03"],
    "val": ["1ct1", "phantom-04"],
    "test": ["pancreas-0001", "b2cbe507f250", *(f"phantom-{p:02d}" for p in range(5, 11))],
}


def _real_slice_path(package: str, name: str) -> Path:
    if package == "pydicom":
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
        if found is None:
            raise InputError(f"pydicom does not ship {name} in this version")
        return Path(found)
    import data_store  # the pydicom-data package

    return Path(data_store.__file__).parent / "data" / name


def real_ct_slices() -> list[tuple[str, np.ndarray, float]]:
    """The shipped real CT slices as ``(patient, HU [512, 512], pixel mm)``; smaller ones are resampled."""
    from skimage.transform import resize

    slices = []
    for patient, package, name in REAL_CT_SLICES:
        ct = read_dicom(_real_slice_path(package, name))
        hu = np.clip(ct.pixels, -1024.0, 3071.0)  # outside-FOV padding (-2000, -3024 ...) is air
        pixel_mm = float(ct.header.PixelSpacing[0]) if "PixelSpacing" in ct.header else 0.7
        if hu.shape != (EMBEDDED_SIZE, EMBEDDED_SIZE):
            pixel_mm *= hu.shape[0] / EMBEDDED_SIZE
            hu = resize(hu, (EMBEDDED_SIZE, EMBEDDED_SIZE), order=3, mode="edge", anti_aliasing=False)
        slices.append((patient, hu.astype(np.float32), pixel_mm))
    return slices


def build_embedded_ct(folder: Path, seed: int, photons: float = 1.5e5,
                      phantom_slices: tuple[int, ...] = EMBEDDED_PHANTOM_SLICES, workers: int | None = None) -> None:
    """Simulate normal and quarter dose for the shipped real slices and for phantom patients (``phantom_slices[i]``
    neighbouring slices of patient ``phantom-<i+1>``); write the AAPM layout and the split."""
    from pydicom.uid import generate_uid

    from ratlit.data.simulation import phantom_patient, simulate_ct_doses

    rng = np.random.default_rng(seed)
    cases: list[tuple[str, np.ndarray, float]] = list(real_ct_slices())
    for p, count in enumerate(phantom_slices, start=1):
        patient_rng = np.random.default_rng(rng.integers(2**32))
        cases += [(f"phantom-{p:02d}", hu, 0.7) for hu in phantom_patient(patient_rng, count, EMBEDDED_SIZE)]
    scans = simulate_ct_doses([(hu, mm) for _, hu, mm in cases], photons, seed, workers)
    patients = sorted({c[0] for c in cases})
    for patient in patients:
        members = [i for i, c in enumerate(cases) if c[0] == patient]
        study = generate_uid()
        positions = [float(k) for k in range(len(members))]
        pixel_mm = cases[members[0]][2]
        for dose, which in (("quarter_dose", 0), ("full_dose", 1)):
            write_ct_series(folder / patient / dose, [scans[i][which] for i in members], patient,
                            f"simulated {dose.replace('_', ' ')} FBP", pixel_mm, positions, study)
    write_splits(folder, {name: [g for g in groups if g in patients] for name, groups in EMBEDDED_SPLITS.items()})
