"""Honest input handling: what stored values mean, folders restored whole or not at all, one-line
errors for every bad checkpoint form, and the CPU run-time estimate."""

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from omegaconf import OmegaConf

from helpers.checkpoints import make_checkpoint
from helpers.scans import pet_volume, write_pet_series
from ratlit.cli.command import prepare_argv
from ratlit.data import CTDataModule, PETDataModule
from ratlit.data.ct import write_ct_series
from ratlit.data.io import write_image
from ratlit.inference.restore import restore_paths
from ratlit.partition import SlicPartitioner
from ratlit.partition.base import stand_in
from ratlit.training import cpu_estimate
from ratlit.training.results import summary_line
from ratlit.training.run_loading import build_module, checkpoint_file, load_checkpoint
from ratlit.utils import messages


@pytest.fixture(autouse=True)
def _fresh_notes():
    messages._said.clear()  # "once per process": each test starts as a new process would
    yield


def strip_rescale(folder: Path) -> None:
    """Drop RescaleSlope / RescaleIntercept from every file of a series (stored values are then HU + 1024)."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)


def ct_slices(k: int = 2) -> list[np.ndarray]:
    rows, cols = np.mgrid[:32, :32]
    return [np.where((rows - 16) ** 2 + (cols - 16) ** 2 < 64, 40.0, -1000.0) + 3.0 * i for i in range(k)]


def test_ct_training_data_without_rescale_tags_is_refused_unless_assume_hu(tmp_path):
    for dose in ("full_1mm", "quarter_1mm"):
        write_ct_series(tmp_path / "P0" / dose, ct_slices(), "P0", dose, 0.7, [0.0, 1.0], "1.2.3")
    strip_rescale(tmp_path / "P0" / "quarter_1mm")
    with pytest.raises(ValueError, match=r"CT DICOM file .*quarter_1mm/000\d.dcm has no RescaleSlope / RescaleIntercept"
                                         r".*data.assume_hu=true"):
        CTDataModule(root=str(tmp_path)).list_samples(tmp_path)
    samples = CTDataModule(root=str(tmp_path), assume_hu=True).list_samples(tmp_path)
    lq, hq = samples[0].load()
    dm = CTDataModule()
    np.testing.assert_allclose(dm.to_hu(lq) - dm.to_hu(hq), 1024, atol=0.01)  # the stored values, as confirmed


def test_ct_dicom_without_rescale_tags_is_refused_by_predict_and_nothing_is_written(tmp_path):
    write_ct_series(tmp_path / "in", ct_slices(), "P0", "QD", 0.7, [0.0, 1.0], "1.2.3")
    strip_rescale(tmp_path / "in")
    ckpt = make_checkpoint(tmp_path / "ct.ckpt", "ct", bias=0.0)
    with pytest.raises(ValueError, match=r"in/000\d.dcm has no RescaleSlope / RescaleIntercept.*assume_hu=true"):
        restore_paths(ckpt, tmp_path / "in", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    written = restore_paths(ckpt, tmp_path / "in", tmp_path / "out", cache_dir=tmp_path / "cache", assume_hu=True)
    stored = pydicom.dcmread(tmp_path / "in" / "0001.dcm").pixel_array
    assert len(written) == 2 and np.abs(pydicom.dcmread(written[0]).pixel_array - stored).max() <= 1


def test_pet_says_once_what_its_values_are_taken_as(tmp_path, caplog):
    for patient in ("P1", "P2"):
        for side in ("lq", "hq"):
            write_pet_series(tmp_path / side / patient, pet_volume(seed=len(side)))
    with caplog.at_level(logging.INFO, logger="ratlit.data"):
        PETDataModule(root=str(tmp_path)).list_samples(tmp_path)
    notes = [r.getMessage() for r in caplog.records if "not converted to SUV" in r.getMessage()]
    assert len(notes) == 1 and "Units (BQML: activity concentration in Bq/ml)" in notes[0]
    nifti = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(pet_volume(), np.eye(4)), str(nifti))
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet", bias=0.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ratlit.data"):
        restore_paths(ckpt, nifti, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "PET NIfTI values" in caplog.text and "not converted" in caplog.text


def test_a_folder_that_fails_late_leaves_no_output_behind(tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "a.png", np.full((1, 32, 32), 0.5))
    nib.save(nib.Nifti1Image(np.full((32, 32, 2), 40.0, np.float32), np.eye(4)), str(folder / "b.nii.gz"))
    write_ct_series(folder, ct_slices(1), "P0", "QD", 0.7, [0.0], "1.2.3")
    dicom = folder / "0001.dcm"
    dicom.write_bytes(dicom.read_bytes()[:-500])  # a header that reads, pixels that do not
    ckpt = make_checkpoint(tmp_path / "ct.ckpt", "ct", bias=0.0)
    for out in (tmp_path / "new" / "deeper" / "out", tmp_path / "old"):
        if out.name == "old":
            out.mkdir()
            (out / "kept.txt").write_text("an earlier file")
        with pytest.raises(ValueError, match="0001.dcm"):
            restore_paths(ckpt, folder, out, cache_dir=tmp_path / "cache", force=True)  # the PNG is not CT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ct.ckpt", "in", "old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["kept.txt"]


def test_a_folder_is_checked_whole_before_any_output(tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "a.png", np.full((1, 32, 32), 0.5))
    (folder / "README").write_text("scans of patient 7\n")  # no extension, no DICOM marker: skipped with a note
    (folder / "z.png").write_bytes(b"")
    ckpt = make_checkpoint(tmp_path / "ct.ckpt", "ct", bias=0.0)
    with pytest.raises(ValueError, match=r"z.png is empty"):
        restore_paths(ckpt, folder, tmp_path / "out", cache_dir=tmp_path / "cache", force=True)
    assert not (tmp_path / "out").exists()
    (folder / "z.png").unlink()
    with pytest.raises(ValueError, match=r"a.png is an image file, but task ct takes \['dicom', 'nifti'\]"):
        restore_paths(ckpt, folder, tmp_path / "out", cache_dir=tmp_path / "cache")
    written = restore_paths(ckpt, folder, tmp_path / "out", cache_dir=tmp_path / "cache", force=True)
    assert [p.name for p in written] == ["a.png"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


def test_checkpoint_file_takes_a_run_folders_best_and_says_which(tmp_path, caplog):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"x")
    with caplog.at_level(logging.INFO):
        assert checkpoint_file(tmp_path / "run") == checkpoints / "last.ckpt"
        assert "no best-*.ckpt" in caplog.text
        (checkpoints / "best-step0000006.ckpt").write_bytes(b"x")
        assert checkpoint_file(tmp_path / "run") == checkpoints / "best-step0000006.ckpt"
        assert f"using the run's best checkpoint {checkpoints / 'best-step0000006.ckpt'}" in caplog.text
    assert checkpoint_file(checkpoints / "last.ckpt") == checkpoints / "last.ckpt"
    with pytest.raises(ValueError, match="a folder without checkpoints"):
        checkpoint_file(tmp_path)


class Payload:
    def __reduce__(self):
        return (print, ("this code ran while loading a checkpoint",))


@pytest.mark.parametrize("form", ["foreign config", "not a config", "pickle", "truncated", "other weights"])
def test_every_bad_checkpoint_form_is_one_value_error(tmp_path, form):
    path = tmp_path / "bad.ckpt"
    if form == "foreign config":
        torch.save({"state_dict": {}, "ratlit_config": "lr: 0.1\nlayers: [1, 2]\n"}, path)
        message = r"not a run config \(no task_name, model._target_"
    elif form == "not a config":
        torch.save({"state_dict": {}, "ratlit_config": 3}, path)
        message = "its ratlit_config is not a"
    elif form == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": Payload()}))
        message = "cannot read checkpoint"
    elif form == "truncated":
        make_checkpoint(tmp_path / "good.ckpt", "ct")
        path.write_bytes((tmp_path / "good.ckpt").read_bytes()[:5000])
        message = "is truncated or damaged"
    else:
        make_checkpoint(path, "ct")
        cfg, state = load_checkpoint(path)
        state.pop(next(iter(state)))
        with pytest.raises(ValueError, match="weights do not fit the network its config describes"):
            build_module(cfg, state)
        return
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_non_ascii_values_are_quoted_for_hydra():
    argv = prepare_argv(["x", "input=/tmp/données/scan.png", "output=out", "data.root=~/é", "input='/tmp/é'"])
    assert argv[1] == "input='/tmp/données/scan.png'" and argv[2] == "output=out"
    assert argv[3].startswith("data.root='/") and argv[3].endswith("/é'") and argv[4] == "input='/tmp/é'"


def test_the_sam_stand_in_warns_once(caplog):
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="USING SLIC INSTEAD") as caught:
        stand_in(SlicPartitioner(), "sam", "no checkpoint.")
    assert len(caught) == 1 and "NOT AVAILABLE" not in caplog.text


def fake_step(callback, trainer, module, step, now, monkeypatch):
    monkeypatch.setattr(cpu_estimate.time, "perf_counter", lambda: now)
    trainer.global_step = step
    callback.on_train_batch_end(trainer, module, None, None, step)


@pytest.mark.parametrize("device, max_steps, warned", [("cpu", 200000, True), ("cpu", 1000, False),
                                                       ("cuda", 200000, False)])
def test_cpu_estimate_after_the_first_steps(caplog, monkeypatch, device, max_steps, warned):
    callback = cpu_estimate.CpuTimeEstimate(after=5, task="ct")
    trainer = SimpleNamespace(global_step=0, max_steps=max_steps, is_global_zero=True)
    module = SimpleNamespace(device=torch.device(device))
    callback.on_train_start(trainer, module)
    with caplog.at_level(logging.WARNING, logger=cpu_estimate.__name__):
        fake_step(callback, trainer, module, 1, 100.0, monkeypatch)
        callback.on_validation_start(trainer, module)  # a validation restarts the timing
        fake_step(callback, trainer, module, 2, 500.0, monkeypatch)
        for step in range(3, 9):
            fake_step(callback, trainer, module, step, 500.0 + 2.5 * (step - 2), monkeypatch)
    assert ("at 0.4 steps/s the 200000 steps take ~139 h on this CPU; for a CPU try experiment=cpu_ct or "
            "experiment=smoke" in caplog.text) == warned
    assert len(caplog.records) == int(warned)


def test_summary_says_how_many_test_images_were_scored():
    cfg = OmegaConf.create({"task_name": "ct"})
    results = {"attention": "rmsa", "loss": "FocalRegionLoss", "partition": {"name": "slic"}, "run_dir": "/r",
               "best_val": {"psnr": 30.0, "ssim": 0.9, "step": 16}, "best_checkpoint": "/r/checkpoints/best.ckpt",
               "last_checkpoint": "/r/checkpoints/last.ckpt", "test": {"psnr": 30.1, "psnr_std": 1.0, "ssim": 0.9,
                                                                        "ssim_std": 0.01},
               "test_images": {"scored": 4, "split": 14}}
    line = summary_line(cfg, results)
    assert "on 4 of 14 test images (trainer.limit_test_batches; python -m ratlit.evaluate " \
           "ckpt=/r/checkpoints/best.ckpt scores the whole split)" in line
    results["test_images"] = {"scored": 14, "split": 14}
    assert "on 14 of 14 test images |" in summary_line(cfg, results)
