"""predict: scans in their own format, normalised per volume as training does, restored values never clipped.

Each test builds a checkpoint in-process from the composed config (a tiny RAT, Lightning's
``state_dict`` + ``ratlit_config``) whose last conv is set by hand: zero weights and a bias ``b`` make the
network ``lq + b`` exactly, so the restored values are known in closed form.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hydra import compose, initialize_config_dir
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers.checkpoints import make_checkpoint
from helpers.scans import pet_volume, write_pet_series
from ratlit.cli.predict import predict
from ratlit.data import PETDataModule
from ratlit.data.ct import write_ct_series
from ratlit.inference.restore import restore_paths
from ratlit.partition import GridPartitioner, PartitionCache
from ratlit.utils.config import CONF_DIR


def read_back(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_pet_dicom_series_is_normalised_per_volume_and_never_clipped(tmp_path, caplog):
    volume = pet_volume()
    write_pet_series(tmp_path / "in", volume)
    bias = 0.25
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet", bias)
    with caplog.at_level(logging.INFO, logger="ratlit.predict"):
        written = restore_paths(ckpt, tmp_path / "in", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert f"{volume.shape[-1]} slice(s) got a new RescaleSlope" in caplog.text
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "in").iterdir())
    slices = sorted((pydicom.dcmread(p) for p in tmp_path.joinpath("in").iterdir()),
                    key=lambda d: d.ImagePositionPatient[2])
    inputs = np.stack([d.pixel_array * float(d.RescaleSlope) for d in slices], axis=-1)
    scale = float(np.percentile(inputs, 99.9))  # the whole volume's, as PET training scales
    per_slice = [float(np.percentile(inputs[..., k], 99.9)) for k in range(inputs.shape[-1])]
    assert max(abs(s / scale - 1) for s in per_slice) > 0.2  # per-slice scaling would give other values
    series_uids = set()
    for k, before in enumerate(slices):
        out_path = tmp_path / "out" / Path(before.filename).name
        after = pydicom.dcmread(out_path)
        restored = read_back(out_path)
        expected = inputs[..., k] + bias * scale
        assert expected.max() > 32767 * float(before.RescaleSlope)  # the input's slope could not hold it
        np.testing.assert_allclose(restored, expected, atol=float(after.RescaleSlope), rtol=1e-5)
        assert list(after.ImageType)[:2] == ["DERIVED", "SECONDARY"] and after.Modality == "PT"
        assert after.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID != before.SOPInstanceUID
        assert after.ImagePositionPatient == before.ImagePositionPatient and after.PixelRepresentation == 1
        series_uids.add(after.SeriesInstanceUID)
    assert len(series_uids) == 1 and slices[0].SeriesInstanceUID not in series_uids


def test_pet_activity_stays_nonnegative_unless_switched_off(tmp_path):
    volume = pet_volume()
    write_pet_series(tmp_path / "in", volume)
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet", bias=-0.5)
    restore_paths(ckpt, tmp_path / "in", tmp_path / "floor", cache_dir=tmp_path / "cache")
    restore_paths(ckpt, tmp_path / "in", tmp_path / "raw", cache_dir=tmp_path / "cache", nonnegative=False)
    floored = np.stack([read_back(p) for p in sorted((tmp_path / "floor").iterdir())])
    raw = np.stack([read_back(p) for p in sorted((tmp_path / "raw").iterdir())])
    assert floored.min() == 0 and raw.min() < -0.4 * float(np.percentile(volume, 99.9))
    np.testing.assert_array_equal(floored == 0, raw <= 0)


def test_ct_series_keeps_hu_beyond_the_window(tmp_path):
    rows, cols = np.mgrid[:40, :40]
    hu = [np.where((rows - 20) ** 2 + (cols - 20) ** 2 < 100, 2900.0, 40.0) - 5.0 * k for k in range(3)]
    write_ct_series(tmp_path / "in", hu, "ct-01", "QD", 0.7, [0.0, 1.0, 2.0], generate_uid())
    bias = 0.1  # x 4096 HU: the bone goes to ~3310 HU, beyond the window's 3072
    ckpt = make_checkpoint(tmp_path / "ct.ckpt", "ct", bias)
    restore_paths(ckpt, tmp_path / "in", tmp_path / "out", cache_dir=tmp_path / "cache")
    for k, name in enumerate(("0001.dcm", "0002.dcm", "0003.dcm")):
        after = pydicom.dcmread(tmp_path / "out" / name)
        assert after.pixel_array.dtype == np.int16 and float(after.RescaleIntercept) == -1024  # CT's own kept
        np.testing.assert_allclose(read_back(tmp_path / "out" / name), hu[k] + bias * 4096, atol=0.51)


def test_input_values_beyond_the_window_come_back_unclipped(tmp_path):
    rows, cols = np.mgrid[:40, :40]
    hu = np.where((rows - 20) ** 2 + (cols - 20) ** 2 < 19**2, 40.0, -3024.0)  # air outside the scan circle
    hu[18:21, 18:21] = 8000.0  # metal, above the window's 3072
    hu[5, 20] = -1100.0  # air noise just below -1024
    nib.save(nib.Nifti1Image(np.stack([hu, hu + 10.0], -1).astype(np.float32), np.eye(4)), tmp_path / "ct.nii")
    ckpt = make_checkpoint(tmp_path / "ct.ckpt", "ct", bias=0.0)  # the identity on the HU window
    restore_paths(ckpt, tmp_path / "ct.nii", tmp_path / "out", cache_dir=tmp_path / "cache")
    restored = np.asarray(nib.load(tmp_path / "out" / "ct.nii").dataobj)
    np.testing.assert_allclose(restored, np.stack([hu, hu + 10.0], -1), atol=0.01)


def test_nifti_in_any_orientation_restores_as_training_reads_it(tmp_path):
    rng = np.random.default_rng(0)
    native = rng.uniform(500, 3000, (24, 20, 5)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 40], [0, 2.0, 0, -30], [0, 0, 3.0, 10], [0, 0, 0, 1]])  # LAS
    for side in ("lq", "hq"):
        (tmp_path / "data" / side).mkdir(parents=True)
        nib.save(nib.Nifti1Image(native, affine), tmp_path / "data" / side / "p1.nii.gz")
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet", bias=None)
    restore_paths(ckpt, tmp_path / "data" / "lq" / "p1.nii.gz", tmp_path / "out", cache_dir=tmp_path / "cache")
    out = nib.load(tmp_path / "out" / "p1.nii.gz")
    np.testing.assert_array_equal(out.affine, affine)
    assert out.shape == native.shape and out.get_data_dtype() == np.float32
    # evaluate's route: the DataModule's samples (RAS+, slice_axis 2, per-volume scale), the same network.
    from ratlit.training.run_loading import build_module, load_checkpoint

    run_cfg, state = load_checkpoint(ckpt)
    module = build_module(run_cfg, state)
    dm = PETDataModule(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), partitioner=GridPartitioner(16))
    cache = PartitionCache(tmp_path / "cache" / "eval", GridPartitioner(16))
    scale = float(np.percentile(native, 99.9))
    canonical = np.asarray(nib.as_closest_canonical(out).get_fdata(dtype=np.float32))
    samples = dm.samples()
    assert len(samples) == native.shape[2]
    for sample in samples:
        lq, _ = sample.load()
        with torch.no_grad():
            restored = module(torch.from_numpy(lq)[None], torch.from_numpy(cache.labels(lq))[None])[0, 0].numpy()
        index = int(sample.name.split("/")[1])
        np.testing.assert_allclose(canonical[..., index], np.maximum(restored * scale, 0), rtol=1e-5, atol=1e-3)
    assert np.abs(np.asarray(out.get_fdata()) - native).mean() > 1.0  # the network did change the values


def test_modality_and_format_must_match_the_task(tmp_path, caplog):
    hu = np.where(np.mgrid[:32, :32][0] < 16, 40.0, 1000.0)
    write_ct_series(tmp_path / "ct", [hu], "ct-01", "QD", 0.7, [0.0], generate_uid())
    pet = make_checkpoint(tmp_path / "pet.ckpt", "pet", bias=0.1)
    expected = r"has DICOM Modality 'CT', but task pet takes Modality \['PT', 'PET'\]"
    with pytest.raises(ValueError, match=expected) as err:
        restore_paths(pet, tmp_path / "ct", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "ct") in str(err.value) and "force=true" in str(err.value)
    from ratlit.data.io import write_image

    write_image(tmp_path / "photo.png", np.full((1, 32, 32), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"photo.png is an image file, but task pet takes \['dicom', 'nifti'\]"):
        restore_paths(pet, tmp_path / "photo.png", tmp_path / "out", cache_dir=tmp_path / "cache")
    ct = make_checkpoint(tmp_path / "ct.ckpt", "ct")
    with pytest.raises(ValueError, match=r"1 channel\(s\); the checkpoint .*ct.ckpt takes|an image file, but task ct"):
        restore_paths(ct, tmp_path / "photo.png", tmp_path / "out", cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="ratlit.predict"):
        written = restore_paths(pet, tmp_path / "ct", tmp_path / "forced", cache_dir=tmp_path / "cache", force=True)
    assert len(written) == 1 and "restoring it anyway (force=true)" in caplog.text
    # forced past the modality, the intensities still go through the task's map: PET's 99.9th percentile
    np.testing.assert_allclose(read_back(written[0]), hu + 0.1 * np.percentile(hu, 99.9), atol=0.51)


def test_nan_input_is_named(tmp_path):
    volume = np.ones((16, 16, 3), np.float32)
    volume[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "bad.nii")
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet")
    with pytest.raises(ValueError, match=r"bad.nii holds 1 NaN or infinite value"):
        restore_paths(ckpt, tmp_path / "bad.nii", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out" / "bad.nii").exists()


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_compressed_dicom_is_restored_and_written_uncompressed(tmp_path, name):
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file(name))
    before = pydicom.dcmread(source)
    assert before.file_meta.TransferSyntaxUID.is_compressed
    values = before.pixel_array * float(before.get("RescaleSlope", 1)) + float(before.get("RescaleIntercept", 0))
    ckpt = make_checkpoint(tmp_path / "ct.ckpt", "ct", bias=0.0)  # the identity on the HU window
    restore_paths(ckpt, source, tmp_path / "out", cache_dir=tmp_path / "cache", force=True)  # MR / NM, not CT
    after = pydicom.dcmread(tmp_path / "out" / name)
    assert after.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not after["PixelData"].is_undefined_length and len(after.PixelData) == after.Rows * after.Columns * 2
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPClassUID == after.SOPClassUID
    np.testing.assert_allclose(read_back(tmp_path / "out" / name), values, atol=0.51)  # nothing clipped to the window


def test_predict_without_output_says_so_in_one_line(caplog):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=["ckpt=run.ckpt"])
    with caplog.at_level(logging.ERROR, logger="ratlit"), pytest.raises(SystemExit) as exit_:
        predict(cfg)
    assert exit_.value.code == 2
    assert "predict needs input=, output=: python -m ratlit.predict ckpt=" in caplog.text


@pytest.mark.slow
def test_cli_missing_output_has_no_traceback(tmp_path):
    env = {**os.environ, "RATLIT_OUTPUTS": str(tmp_path / "outputs")}
    result = subprocess.run([sys.executable, "-m", "ratlit.predict", "ckpt=a.ckpt", "input=x"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "predict needs output=" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and "MissingMandatoryValue" not in result.stderr


def test_pathology_image_goes_through_the_task(tmp_path):
    from ratlit.data.io import read_image, write_image

    image = np.random.default_rng(0).uniform(0, 0.8, (3, 32, 32)).astype(np.float32)
    write_image(tmp_path / "tile.png", image)
    source = read_image(tmp_path / "tile.png")
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology", bias=0.1)
    restore_paths(ckpt, tmp_path / "tile.png", tmp_path / "out", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(read_image(tmp_path / "out" / "tile.png"), np.clip(source + 0.1, 0, 1), atol=0.6 / 255)


@pytest.mark.parametrize(("name", "dtype"), [("grey16.png", np.uint16), ("rgb8.tif", np.uint8)])
def test_images_keep_their_bit_depth(tmp_path, name, dtype):
    from skimage import io as skio

    channels = (3,) if name.startswith("rgb") else ()
    pixels = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, (32, 32, *channels), endpoint=True)
    (tmp_path / "in").mkdir()
    skio.imsave(tmp_path / "in" / name, pixels.astype(dtype), check_contrast=False)
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology", bias=0.0)  # the identity
    restore_paths(ckpt, tmp_path / "in" / name, tmp_path / "out", cache_dir=tmp_path / "cache", force=True)
    after = np.asarray(skio.imread(tmp_path / "out" / name))
    assert after.dtype == dtype and after.shape == pixels.shape  # a grey tile goes through the RGB network
    np.testing.assert_array_equal(after, pixels)


def test_image_of_an_integer_type_that_is_not_8_or_16_bit_is_refused(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "i32.tif", np.full((16, 16), 40000, np.int32))
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology", bias=0.0)
    with pytest.raises(ValueError, match=r"i32.tif holds int32 pixels; save it as 8- or 16-bit unsigned"):
        restore_paths(ckpt, tmp_path / "i32.tif", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out" / "i32.tif").exists()


def test_unit_maps_of_the_three_tasks():
    from ratlit.data import CTDataModule, PathologyDataModule

    hu = np.array([-2000.0, -1024.0, 40.0, 3500.0], np.float32)
    ct = CTDataModule(hu_min=-1000.0, hu_max=1000.0).unit_map(hu, "x")
    np.testing.assert_array_equal(ct.to_unit(hu), np.clip((hu + 1000.0) / 2000.0, 0, 1))  # the HU window, bit for bit
    np.testing.assert_allclose(ct.from_unit(np.array([0.0, 0.52, 1.2])), [-1000.0, 40.0, 1400.0], rtol=1e-6)
    activity = np.linspace(0, 1000, 1001, dtype=np.float32)
    pet = PETDataModule().unit_map(activity, "x")
    assert pet.scale == pytest.approx(np.percentile(activity, 99.9))
    np.testing.assert_array_equal(pet.to_unit(activity), activity / pet.scale)
    assert pet.from_unit(np.array([-0.5]), floor=PETDataModule.value_floor)[0] == 0
    with pytest.raises(ValueError, match="PET volume empty.nii has no positive activity"):
        PETDataModule().unit_map(np.zeros((4, 4, 4)), "empty.nii")
    pathology = PathologyDataModule().unit_map(np.zeros((3, 4, 4)), "x")
    np.testing.assert_array_equal(pathology.to_unit(np.array([-0.1, 0.5, 1.5])), [0.0, 0.5, 1.0])


def test_rescale_holds_every_value_in_16_bits():
    from ratlit.data.io import rescale_to_hold

    assert rescale_to_hold(np.array([-1000.0, 3000.0]), 1.0, -1024.0, signed=True) == (1.0, -1024.0)  # kept
    for values, signed in (([0.0, 1e6], True), ([-5e5, 10.0], True), ([-300.5, 7e4], False), ([2.0, 9e9], False)):
        slope, intercept = rescale_to_hold(np.array(values), 0.5, 0.0, signed)
        low, high = (-32768, 32767) if signed else (0, 65535)
        stored = np.round((np.array(values) - intercept) / slope)
        assert low <= stored.min() and stored.max() <= high
        assert stored.max() >= 0.99 * high or stored.min() <= 0.99 * low  # the smallest slope: the range is used
        assert float(pydicom.valuerep.DSfloat(slope, auto_format=True)) == slope  # exact as a DICOM DS string
