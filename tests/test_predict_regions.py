"""predict with the user's own region maps (regions=), and what a restored DICOM says about its source."""

import logging

import nibabel as nib
import numpy as np
import pydicom
import pytest
from skimage import io as skio

from helpers.checkpoints import make_checkpoint
from helpers.commands import run
from helpers.scans import pet_volume, write_pet_series
from ratlit.data.io import write_image
from ratlit.inference import restore
from ratlit.inference.restore import restore_paths
from ratlit.utils.errors import InputError


def tiles(folder, count=2, size=48):
    rng = np.random.default_rng(0)
    for index in range(count):
        write_image(folder / f"tile{index}.png", rng.random((3, size, size)).astype(np.float32))
    return folder


def test_a_folder_of_label_maps_matched_by_name_is_used_and_logged(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology")
    inputs = tiles(tmp_path / "in")
    maps = tmp_path / "masks"
    maps.mkdir()
    np.save(maps / "tile0.npy", np.arange(48 * 48).reshape(48, 48) // (48 * 12))  # 4 regions
    skio.imsave(maps / "tile1.png", (np.arange(48)[:, None] // 16 * 10 + np.zeros((1, 48))).astype(np.uint8),
                check_contrast=False)  # 3 regions
    with caplog.at_level(logging.INFO, logger="ratlit.predict"):
        written = restore_paths(ckpt, inputs, tmp_path / "out", regions=maps, cache_dir=tmp_path / "cache")
    assert [p.name for p in written] == ["tile0.png", "tile1.png"]
    assert f"tile0.png: regions from regions={maps}: 4" in caplog.text
    assert f"tile1.png: regions from regions={maps}: 3" in caplog.text
    assert not (tmp_path / "cache").exists()  # no partitioner ran


def test_without_regions_the_log_names_the_runs_partitioner(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology")
    with caplog.at_level(logging.INFO, logger="ratlit.predict"):
        restore_paths(ckpt, tiles(tmp_path / "in", 1), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "tile0.png: regions from the partitioner grid (the run's): " in caplog.text


@pytest.mark.parametrize("problem, message", [
    ("shape", r"has shape \(40, 48\) but"),
    ("missing", "has no label map named like tile1.png"),
    ("float", "not whole numbers"),
])
def test_a_bad_label_map_is_refused_before_any_network_or_partitioner(tmp_path, monkeypatch, problem, message):
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology")
    inputs = tiles(tmp_path / "in")
    maps = tmp_path / "masks"
    maps.mkdir()
    np.save(maps / "tile0.npy", np.zeros((48, 48), np.int32))
    if problem == "shape":
        np.save(maps / "tile1.npy", np.zeros((40, 48), np.int32))
    elif problem == "float":
        np.save(maps / "tile1.npy", np.full((48, 48), 0.5))
    monkeypatch.setattr(restore, "build_module", lambda *a: pytest.fail("the network was built"))
    monkeypatch.setattr(restore, "partitioner_from_spec", lambda *a: pytest.fail("a partitioner was built"))
    with pytest.raises(InputError, match=message):
        restore_paths(ckpt, inputs, tmp_path / "out", regions=maps, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_a_nifti_volume_takes_a_nifti_or_an_array_label_map(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet")
    volume = pet_volume((32, 32, 3))
    affine = np.array([[0, 0, 2.0, 0], [0, -2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])  # axes swapped, y flipped
    native = np.transpose(volume, (2, 1, 0))[:, ::-1].copy()
    nib.save(nib.Nifti1Image(native, affine), tmp_path / "scan.nii.gz")
    # In the file's own voxel order: native slab k (canonical slice k along z) holds k + 2 regions.
    labels = np.stack([np.arange(32 * 32).reshape(32, 32) % (k + 2) for k in range(3)])
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "scan.npy", labels)
    with caplog.at_level(logging.INFO, logger="ratlit.predict"):
        restore_paths(ckpt, tmp_path / "scan.nii.gz", tmp_path / "out", regions=maps, cache_dir=tmp_path / "c")
    assert "regions from regions=" in caplog.text and "2-4 per slice (mean 3.0)" in caplog.text
    (maps / "scan.npy").unlink()
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), maps / "scan.nii.gz")
    restore_paths(ckpt, tmp_path / "scan.nii.gz", tmp_path / "out2", regions=maps, cache_dir=tmp_path / "c")
    np.save(maps / "other.npy", labels[:, :, :5])  # not named like the input: ignored
    with pytest.raises(InputError, match="has shape"):
        restore_paths(ckpt, tmp_path / "scan.nii.gz", tmp_path / "out3", regions=maps / "other.npy")


def test_restored_dicom_is_its_own_series_and_references_its_source(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet")
    write_pet_series(tmp_path / "in", pet_volume((32, 32, 3)))
    maps = tmp_path / "maps"
    maps.mkdir()
    for path in sorted((tmp_path / "in").iterdir()):  # one label map per slice file, by name
        np.save(maps / f"{path.stem}.npy", np.arange(32 * 32).reshape(32, 32) // 256)
    with caplog.at_level(logging.INFO, logger="ratlit.predict"):
        written = restore_paths(ckpt, tmp_path / "in", tmp_path / "out", regions=maps, cache_dir=tmp_path / "c")
    assert "4-4 per slice" in caplog.text
    for path in written:
        source = pydicom.dcmread(tmp_path / "in" / path.name)
        restored = pydicom.dcmread(path)
        assert restored.SeriesInstanceUID != source.SeriesInstanceUID
        assert int(restored.SeriesNumber) != int(source.get("SeriesNumber", 0) or 0)
        reference = restored.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID != restored.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID


@pytest.mark.slow
def test_cli_regions_and_an_override_predict_does_not_use(tmp_path):
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology")
    tiles(tmp_path / "in", 1)
    np.save(tmp_path / "mask.npy", np.arange(48 * 48).reshape(48, 48) // 1152)
    done = run("ratlit.predict", f"ckpt={ckpt}", "input=in", "output=out", "regions=mask.npy", cwd=tmp_path)
    assert "regions from regions=" in done.stdout + done.stderr and (tmp_path / "out" / "tile0.png").is_file()
    refused = run("ratlit.predict", f"ckpt={ckpt}", "input=in", "output=out2", "+partition=slic", cwd=tmp_path,
                  check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "predict does not use +partition=slic" in output and "Traceback" not in output
    assert not (tmp_path / "out2").exists()
