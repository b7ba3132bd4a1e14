"""Compressed DICOM (JPEG lossless, JPEG 2000, RLE, JPEG-LS) through the training data path.

The files are pydicom's and pydicom-data's own test files, each beside an uncompressed file of the same
pixels: a compressed slice is put in an AAPM-layout folder as the quarter-dose series and its reference as
the full-dose one, and the CT DataModule must read both to identical values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ratlit.data import CTDataModule
from ratlit.data.io import read_dicom


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if found is None:
        pytest.fail(f"pydicom does not ship {name}")
    return Path(found)


def _pydicom_data_file(name: str) -> Path:
    import data_store  # pydicom-data

    return Path(data_store.__file__).parent / "data" / name


# (encoding, compressed file, uncompressed file, whether that file holds exactly the same pixels). pydicom
# ships no exact twin of a JPEG lossless file: JPEG2000_UNC.dcm is the same NM image from another export
# (two thirds of its pixels differ by one count, all within 101), so that one is compared by correlation.
ENCODED = [
    ("jpeg-lossless", _pydicom_data_file("JPEG-LL.dcm"), _pydicom_data_file("JPEG2000_UNC.dcm"), False),
    ("jpeg2000-lossless", _pydicom_file("MR_small_jp2klossless.dcm"), _pydicom_file("MR_small.dcm"), True),
    ("rle", _pydicom_file("MR_small_RLE.dcm"), _pydicom_file("MR_small.dcm"), True),
    ("jpeg-ls-lossless", _pydicom_file("MR_small_jpeg_ls_lossless.dcm"), _pydicom_file("MR_small.dcm"), True),
]


def test_decoders_are_installed():
    # pydicom finds these plugins itself; a missing one turns into "all plugins are missing dependencies".
    import libjpeg  # noqa: F401  (pylibjpeg-libjpeg: JPEG lossless, JPEG-LS)
    import openjpeg  # noqa: F401  (pylibjpeg-openjpeg: JPEG 2000)
    import rle  # noqa: F401  (pylibjpeg-rle: RLE)


@pytest.mark.parametrize("encoding, compressed, reference, exact", ENCODED, ids=[e[0] for e in ENCODED])
def test_ct_datamodule_reads_compressed_slices(tmp_path, encoding, compressed, reference, exact):
    import pydicom

    assert pydicom.dcmread(compressed, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    assert not pydicom.dcmread(reference, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    patient = tmp_path / "root" / "L001"
    for folder in ("quarter_1mm", "full_1mm"):
        (patient / folder).mkdir(parents=True)
    shutil.copy(compressed, patient / "quarter_1mm" / "0001.dcm")
    # The reference is uncompressed, so it can be rewritten: give it its twin's position to pair by.
    twin = pydicom.dcmread(compressed, stop_before_pixels=True)
    full = pydicom.dcmread(reference)
    keywords = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation", "InstanceNumber")
    for keyword in keywords:
        if keyword in twin:
            setattr(full, keyword, twin.data_element(keyword).value)
    full.save_as(patient / "full_1mm" / "0001.dcm")
    expected = read_dicom(reference).pixels
    # A window wider than any of these files' values, so the [0, 1] mapping clips nothing.
    low, high = float(expected.min()) - 1.0, float(expected.max()) + 1.0
    # Not all of these files carry RescaleSlope / Intercept: their stored values are taken as they are (assume_hu).
    datamodule = CTDataModule(root=str(tmp_path / "root"), cache_dir=str(tmp_path / "cache"), hu_min=low, hu_max=high,
                              assume_hu=True)
    (sample,) = datamodule.samples()
    lq, hq = sample.load()
    assert lq.shape == hq.shape == (1, *expected.shape)
    assert np.ptp(expected) > 0  # a real image, not an empty frame
    if exact:
        np.testing.assert_array_equal(lq, hq)
        np.testing.assert_allclose(lq[0] * (high - low) + low, expected, atol=1e-3 * (high - low))
    else:  # a wrong decoder gives noise or stripes, not the same picture
        assert np.corrcoef(lq.ravel(), hq.ravel())[0, 1] > 0.9
        assert np.abs(lq - hq).max() * (high - low) <= 101.5
