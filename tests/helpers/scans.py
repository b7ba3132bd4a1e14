"""Scans made the way scanners write them, for the data and predict tests."""

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from ratlit.data.ct import write_ct_series
from ratlit.data.io import write_dicom


def write_pet_series(folder: Path, volume: np.ndarray, modality: str = "PT",
                     origin: tuple[float, float, float] = (0.0, 0.0, 0.0), pixel_mm: float = 2.0) -> None:
    """Bq/ml slices ``volume[..., k]`` as a PET series: int16 pixels, a RescaleSlope per slice (max -> 32767),
    slices 2 mm apart from ``origin``, files written in reverse order of position (readers must sort)."""
    series, study = generate_uid(), generate_uid()
    for k in range(volume.shape[-1]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.Units = modality, "pet-01", "BQML"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], 2.0
        ds.Rows, ds.Columns = volume.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        slope = float(pydicom.valuerep.format_number_as_ds(float(volume[..., k].max()) / 32767))
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = np.round(volume[..., k] / slope).astype(np.int16).tobytes()
        write_dicom(folder / f"IM{volume.shape[-1] - k:03d}.dcm", ds)


def pet_volume(shape=(32, 32, 4), seed=0) -> np.ndarray:
    """Bq/ml: a warm body with hot spots of very different peaks per slice."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    volume = np.empty(shape, np.float32)
    for k in range(shape[-1]):
        body = np.where((rows - 16) ** 2 + (cols - 16) ** 2 < 13**2, 2000.0, 50.0)
        hot = (rows - 10 - k) ** 2 + (cols - 12) ** 2 < 4
        volume[..., k] = body + hot * 3000.0 * (k + 1) + rng.uniform(0, 300, shape[:2])
    return volume


def tiny_ct(root: Path, seed: int, size: int, slices: int, radius: int, quarter_noise) -> Path:
    """An AAPM-layout CT set of 4 patients x ``slices`` discs of ``size`` x ``size`` (quarter dose: noisier)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - size // 2) ** 2 + (cols - size // 2) ** 2
    for p in range(4):
        base = [np.where(disc < (radius + 3 * k + p) ** 2, 60.0, -1000.0) for k in range(slices)]
        for side, noise, kind in (("full_1mm", 10, "FD"), ("quarter_1mm", quarter_noise(p), "QD")):
            write_ct_series(root / f"P{p}" / side, [b + rng.normal(0, noise, b.shape) for b in base], f"P{p}", kind,
                            0.7, [float(k) for k in range(slices)], "1.2.3.4")
    return root
