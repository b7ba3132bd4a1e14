"""Stored DICOM values to the modality's values: a Modality LUT Sequence (applied, not ignored), rescale tags that
change from slice to slice, and what a derived file written from such a header holds."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ratlit.data import CTDataModule
from ratlit.data.ct import write_ct_series
from ratlit.data.dicom_rescale import check_ct_rescale
from ratlit.data.io import read_dicom, read_dicom_series, write_derived_dicom
from ratlit.utils.errors import InputError

# A non-linear Modality LUT over 12-bit stored values (entries are unsigned 16-bit, as the standard has them).
LUT = (np.arange(4096, dtype=np.int64) ** 2 // 256).astype(np.uint16)


def phantom(shift: float = 0.0) -> np.ndarray:
    rows, cols = np.mgrid[:32, :32]
    return np.where((rows - 16) ** 2 + (cols - 16) ** 2 < 64, 40.0, -1000.0) + 7.0 * cols + shift


def with_modality_lut(path: Path, stored: np.ndarray, lut: np.ndarray, first: int = 0, bits: int = 16) -> None:
    """Rewrite a CT file to hold ``stored`` (12-bit, unsigned) mapped by a Modality LUT Sequence, no rescale tags."""
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME2", 12)
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, bits]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "US", [int(v) for v in lut])
    ds.ModalityLUTSequence = [item]
    ds.save_as(path)


def test_a_modality_lut_sequence_maps_the_stored_values(tmp_path):
    write_ct_series(tmp_path / "in", [phantom()], "P0", "QD", 0.7, [0.0], "1.2.3")
    path = tmp_path / "in" / "0001.dcm"
    stored = np.random.default_rng(0).integers(0, 4096, (32, 32))
    stored[0, :3] = [0, 4095, 2048]  # both ends of the table
    with_modality_lut(path, stored, LUT)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert "ModalityLUTSequence" in header and "RescaleSlope" not in header
    read = read_dicom(path)
    np.testing.assert_array_equal(read.pixels, LUT[stored].astype(np.float32))
    assert read.pixels.dtype == np.float32 and not np.array_equal(read.pixels, stored)
    check_ct_rescale(header, path, assume_hu=False)  # the table says what the values mean: not refused

    # A derived image of such a file stores its values by a rescale of its own, the table dropped.
    values = read.pixels - 500.0
    write_derived_dicom(tmp_path / "out.dcm", read.header, values, "1.2.3.4")
    written = pydicom.dcmread(tmp_path / "out.dcm")
    assert "ModalityLUTSequence" not in written and "ModalityLUTSequence" in read.header  # the input's stays
    np.testing.assert_allclose(read_dicom(tmp_path / "out.dcm").pixels, values, atol=float(written.RescaleSlope) / 2)


def test_a_lut_starting_past_zero_and_a_malformed_one(tmp_path):
    write_ct_series(tmp_path / "in", [phantom(), phantom()], "P0", "QD", 0.7, [0.0, 1.0], "1.2.3")
    stored = np.full((32, 32), 50)
    stored[0, :4] = [10, 100, 101, 4000]
    with_modality_lut(tmp_path / "in" / "0001.dcm", stored, LUT[:1000], first=100)
    pixels = read_dicom(tmp_path / "in" / "0001.dcm").pixels
    # Below the first mapped value: the first entry; past the last: the last entry (the standard's rule).
    np.testing.assert_array_equal(pixels[0, :4], [LUT[0], LUT[0], LUT[1], LUT[999]])
    with_modality_lut(tmp_path / "in" / "0002.dcm", stored, LUT, bits=12)  # entries must be 8 or 16 bits
    with pytest.raises(InputError, match=r"cannot map the stored values of DICOM file .*0002.dcm") as caught:
        read_dicom(tmp_path / "in" / "0002.dcm")
    assert "\n" not in str(caught.value)


def per_slice_rescale(folder: Path, slopes: list[float], intercepts: list[float]) -> None:
    """Store each slice of a series (written with slope 1, intercept -1024) with its own slope and intercept."""
    for path, slope, intercept in zip(sorted(folder.iterdir()), slopes, intercepts, strict=True):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float64) - 1024
        ds.PixelData = np.round((hu - intercept) / slope).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(path)


def test_rescale_tags_that_change_from_slice_to_slice(tmp_path):
    slices = [phantom(shift=10.0 * i) for i in range(3)]
    for dose in ("full_1mm", "quarter_1mm"):
        write_ct_series(tmp_path / "P0" / dose, slices, "P0", dose, 0.7, [0.0, 1.0, 2.0], "1.2.3")
    slopes, intercepts = [0.5, 1.0, 2.0], [-1024.0, -2000.0, -3000.0]
    per_slice_rescale(tmp_path / "P0" / "quarter_1mm", slopes, intercepts)
    series = read_dicom_series(tmp_path / "P0" / "quarter_1mm")
    for read, hu, slope in zip(series, slices, slopes, strict=True):
        np.testing.assert_allclose(read.pixels, hu, atol=slope / 2)
    dm = CTDataModule(root=str(tmp_path))
    for sample in dm.list_samples(tmp_path):
        lq, hq = sample.load()
        np.testing.assert_allclose(dm.to_hu(lq), dm.to_hu(hq), atol=1.01)  # the largest slope's half, and rounding
