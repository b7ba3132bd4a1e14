import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from omegaconf import OmegaConf

from helpers.scans import write_pet_series
from ratlit.data import (
    CTDataModule,
    PathologyDataModule,
    PETDataModule,
    bicubic_degrade,
    random_paired_crop,
    split_groups,
)
from ratlit.data.ct import build_embedded_ct, write_ct_series
from ratlit.data.io import write_image, write_nifti
from ratlit.data.pathology import build_embedded_pathology
from ratlit.data.pet import build_embedded_pet
from ratlit.data.simulation import simulate_ct_scan, simulate_pet_pair
from ratlit.data.splits import read_splits
from ratlit.partition import GridPartitioner
from ratlit.utils.config import CONF_DIR


def _dm(cls, root, tmp_path, **kw):
    return cls(root=str(root), cache_dir=str(tmp_path / "cache"), partitioner=GridPartitioner(8), **kw)


# --- CT: AAPM layout --------------------------------------------------------------------------------


def _write_ct_patient(root: Path, patient: str, n: int, size: int = 32, shift_quarter: float = 0.0):
    rng = np.random.default_rng(len(patient))
    full = [rng.uniform(-1000, 1000, (size, size)).astype(np.float32) for _ in range(n)]
    positions = [float(p) for p in rng.permutation(n) * 1.25]  # files are not in position order
    write_ct_series(root / patient / "full_1mm", full, patient, "FD", 0.7, positions, "1.2.3")
    quarter = [f + 100 for f in full]  # so that pairs can be recognised
    write_ct_series(root / patient / "quarter_1mm", quarter, patient, "QD", 0.7,
                    [p + shift_quarter for p in positions], "1.2.3")
    return full, positions


def test_ct_pairs_by_position_and_maps_hu(tmp_path):
    root = tmp_path / "aapm"
    for p in ("L001", "L002", "L003"):
        _write_ct_patient(root, p, 3, shift_quarter=0.2)
    dm = _dm(CTDataModule, root, tmp_path, patch_size=16, batch_size=2)
    samples = dm.samples()
    assert len(samples) == 9 and {s.group for s in samples} == {"L001", "L002", "L003"}
    for s in samples:
        lq, hq = s.load()
        assert lq.shape == hq.shape == (1, 32, 32) and lq.dtype == np.float32
        np.testing.assert_allclose(dm.to_hu(lq) - dm.to_hu(hq), 100, atol=1.5)  # quarter = full + 100 HU
    lq, _ = samples[0].load()
    assert 0 <= lq.min() and lq.max() <= 1


def test_ct_series_that_do_not_pair(tmp_path):
    root = tmp_path / "aapm"
    _write_ct_patient(root, "L001", 3, shift_quarter=5.0)
    with pytest.raises(ValueError, match=r"quarter_1mm.*0\d\d\d.dcm.*has no full-dose slice"):
        _dm(CTDataModule, root, tmp_path).samples()
    (root / "L001" / "full_1mm" / "0001.dcm").unlink()
    with pytest.raises(ValueError, match="has 3 slices but .*full_1mm has 2"):
        _dm(CTDataModule, root, tmp_path).samples()


def test_ct_unreadable_file_and_bad_layout(tmp_path):
    root = tmp_path / "aapm"
    _write_ct_patient(root, "L001", 2)
    bad = root / "L001" / "quarter_1mm" / "0002.dcm"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"cannot read DICOM file {bad}"):
        _dm(CTDataModule, root, tmp_path).samples()
    (root / "L001" / "full_1mm" / "0002.dcm").unlink()
    bad.unlink()
    (root / "L009").mkdir()
    with pytest.raises(ValueError, match="L009 needs exactly one full-dose and one quarter-dose"):
        _dm(CTDataModule, root, tmp_path).samples()
    with pytest.raises(ValueError, match="does not exist"):
        CTDataModule(root=str(tmp_path / "missing"))


# --- PET: NIfTI volumes -----------------------------------------------------------------------------


def _write_pet(root: Path, patient: str, depth: int = 10, air: int = 2):
    rng = np.random.default_rng(1)
    hq = np.zeros((24, 20, depth), np.float32)
    hq[4:20, 4:16, air : depth - air] = rng.uniform(1, 5, (16, 12, depth - 2 * air))
    lq = hq + rng.normal(0, 0.3, hq.shape).astype(np.float32) * (hq > 0)
    write_nifti(root / "lq" / f"{patient}.nii.gz", lq)
    write_nifti(root / "hq" / f"{patient}.nii.gz", hq)
    return lq, hq


def test_pet_slices_air_dropping_and_normalisation(tmp_path):
    root = tmp_path / "pet"
    lq, hq = _write_pet(root, "P1")
    _write_pet(root, "P2")
    dm = _dm(PETDataModule, root, tmp_path, patch_size=16)
    samples = dm.samples()
    assert len(samples) == 2 * 6  # 2 air slices dropped at each end of each volume
    assert [s.name for s in samples[:6]] == [f"P1/{i:04d}" for i in range(2, 8)]
    s_lq, s_hq = samples[0].load()
    scale = np.percentile(lq, 99.9)
    np.testing.assert_allclose(s_lq[0], lq[..., 2] / scale, rtol=1e-5)
    np.testing.assert_allclose(s_hq[0], hq[..., 2] / scale, rtol=1e-5)


def test_pet_pairing_errors(tmp_path):
    root = tmp_path / "pet"
    _write_pet(root, "P1")
    write_nifti(root / "lq" / "P2.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="without a partner.*P2.nii.gz"):
        _dm(PETDataModule, root, tmp_path).samples()
    write_nifti(root / "hq" / "P2.nii.gz", np.ones((4, 4, 5), np.float32))
    with pytest.raises(ValueError, match="do not pair.*P2.nii.gz"):
        _dm(PETDataModule, root, tmp_path).samples()
    (root / "hq" / "P2.nii.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(ValueError, match="cannot read NIfTI file .*P2.nii.gz"):
        _dm(PETDataModule, root, tmp_path).samples()
    write_nifti(root / "hq" / "P1.nii", np.ones((4, 4, 4), np.float32))  # beside P1.nii.gz: which one?
    with pytest.raises(ValueError, match=r"two PET volumes named 'P1' in .*hq: P1.nii and P1.nii.gz"):
        _dm(PETDataModule, root, tmp_path).samples()


def test_one_patient_id_in_two_splits_is_warned_about(tmp_path, caplog):
    root = tmp_path / "studies"
    for folder in ("L067_2019", "L067_2020", "L096_2019"):  # one folder per study, as archives export them
        _write_ct_patient(root, folder, 1)
    for folder in ("L067_2019", "L067_2020"):
        for path in (root / folder).rglob("*.dcm"):
            header = pydicom.dcmread(path)
            header.PatientID = "L067"
            header.save_as(path)
    apart = {"train": ["L067_2019"], "val": ["L096_2019"], "test": ["L067_2020"]}
    dm = _dm(CTDataModule, root, tmp_path, patch_size=16, splits=apart)
    with caplog.at_level(logging.WARNING, logger="ratlit"):
        dm.resolve_splits(dm.samples())
    assert "patient id 'L067' is in several splits (L067_2019: train, L067_2020: test)" in caplog.text
    caplog.clear()
    together = {"train": ["L067_2019", "L067_2020"], "test": ["L096_2019"]}
    dm = _dm(CTDataModule, root, tmp_path, patch_size=16, splits=together)
    with caplog.at_level(logging.WARNING, logger="ratlit"):
        dm.resolve_splits(dm.samples())
    assert "several splits" not in caplog.text


def test_ct_series_folders_named_as_tcia_names_them(tmp_path):
    root = tmp_path / "tcia"
    _write_ct_patient(root, "L067", 2)
    study = root / "L067" / "08-29-2018-NA-NA-12345"
    study.mkdir()
    (root / "L067" / "full_1mm").rename(study / "1.000000-Full Dose Images-96514")
    (root / "L067" / "quarter_1mm").rename(study / "1.000000-Low Dose Images-41587")
    samples = _dm(CTDataModule, root, tmp_path, patch_size=16).samples()
    assert len(samples) == 2 and {s.group for s in samples} == {"L067"}


def test_pet_dicom_series_volumes(tmp_path):
    root = tmp_path / "pet"
    for side, offset in (("lq", 5.0), ("hq", 0.0)):
        slices = [np.full((16, 16), 100.0 + offset + k, np.float32) for k in range(4)]
        write_ct_series(root / side / "P1", slices, "P1", side, 2.0, [3.0, 1.0, 2.0, 0.0], "1.2")
    samples = _dm(PETDataModule, root, tmp_path, slice_axis=2).samples()
    assert len(samples) == 4
    lq, hq = samples[0].load()  # ordered by position: position 0.0 is the 4th written slice
    np.testing.assert_allclose(hq * np.percentile([105, 106, 107, 108], 99.9), 103.0, rtol=1e-4)


# --- pathology ----------------------------------------------------------------------------------------


def test_pathology_folder_and_bicubic_lq(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        write_image(tmp_path / "hq" / f"img{k}.png", rng.random((3, 34, 41)).astype(np.float32))
    write_image(tmp_path / "hq" / "grey.tif", rng.random((1, 32, 32)).astype(np.float32))
    samples = _dm(PathologyDataModule, tmp_path / "hq", tmp_path).samples()
    assert [s.group for s in samples] == ["grey", "img0", "img1", "img2"]
    lq, hq = samples[1].load()
    assert hq.shape == lq.shape == (3, 32, 40)  # cropped to a multiple of 4
    np.testing.assert_allclose(lq, bicubic_degrade(hq), atol=1e-6)
    assert samples[0].load()[1].shape == (3, 32, 32)


def test_bicubic_degradation_is_4x():
    rows, cols = np.mgrid[:64, :64]
    checker = ((rows + cols) % 2).astype(np.float32)[None].repeat(3, 0)  # period 2: above the new Nyquist
    np.testing.assert_allclose(bicubic_degrade(checker), 0.5, atol=0.02)
    smooth = (0.5 + 0.3 * np.sin(2 * np.pi * cols / 64)).astype(np.float32)[None]
    assert np.abs(bicubic_degrade(smooth) - smooth)[:, 8:-8, 8:-8].max() < 0.01
    small = torch.nn.functional.interpolate(torch.from_numpy(smooth)[None], scale_factor=0.25, mode="bicubic",
                                            antialias=True)
    assert small.shape[-1] == 16


def test_pathology_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        _dm(PathologyDataModule, tmp_path / "empty", tmp_path).samples()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    sample = _dm(PathologyDataModule, tmp_path / "bad", tmp_path).samples()[0]
    with pytest.raises(ValueError, match="cannot read image file .*x.png"):
        sample.load()


def test_embedded_pathology_end_to_end(tmp_path):
    dm = PathologyDataModule(cache_dir=str(tmp_path), partitioner=GridPartitioner(), batch_size=2)
    stats = dm.prepare_data()
    assert stats.computed == 3
    assert dm.prepare_data().reused == 3  # a second pass does no partitioning
    dm.setup()
    assert dm.split_groups == {"train": ["ihc-train"], "val": ["ihc-val"], "test": ["ihc-test"]}
    batch = next(iter(dm.train_dataloader()))
    assert batch["lq"].shape == (1, 3, 256, 256) and batch["regions"].shape == (1, 256, 256)
    assert batch["regions"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert val["lq"].shape == (1, 3, 192, 192) and val["name"] == ["ihc-val"]
    lazy = PathologyDataModule(cache_dir=str(tmp_path), partitioner=GridPartitioner(), in_memory=False)
    lazy.setup()
    lazy_val = next(iter(lazy.val_dataloader()))
    for key in ("lq", "hq", "regions"):
        torch.testing.assert_close(lazy_val[key], val[key])


# --- splits and augmentation ------------------------------------------------------------------------


def test_automatic_split_never_leaks_a_patient():
    groups = [f"P{i:02d}" for i in range(20)]
    splits = split_groups(groups * 3, None, 0.1, 0.2, seed=1)
    assert sorted(sum(splits.values(), [])) == groups
    assert all(splits[name] for name in ("train", "val", "test"))
    assert split_groups(groups, None, 0.1, 0.2, seed=1) == splits
    assert split_groups(groups, None, 0.1, 0.2, seed=2) != splits


def test_given_splits_are_checked(tmp_path):
    with pytest.raises(ValueError, match="'P1' is in both the train and the test split"):
        split_groups(["P1", "P2"], {"train": ["P1"], "test": ["P1"]})
    with pytest.raises(ValueError, match="not in the data"):
        split_groups(["P1"], {"train": ["P7"]})
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["P1"], "test": ["P2"]}))
    assert read_splits(path) == {"train": ["P1"], "val": [], "test": ["P2"]}
    path.write_text("{broken")
    with pytest.raises(ValueError, match="split.json is not valid"):
        read_splits(path)
    with pytest.raises(ValueError, match="unknown names"):
        read_splits({"training": []})


def test_paired_crop_and_augmentation_are_identical():
    lq = torch.arange(40 * 50, dtype=torch.float32).view(1, 40, 50)
    hq, regions = lq * 2, lq[0].long()
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        a, b, r = random_paired_crop(lq, hq, regions, 16, augment=True, generator=g)
        assert a.shape == (1, 16, 16) and r.shape == (16, 16)
        torch.testing.assert_close(b, 2 * a)
        torch.testing.assert_close(r.float(), a[0])
        seen.add((a[0, 0, 1] - a[0, 0, 0]).item())
    assert len(seen) >= 3  # flips and rotations happen


# --- simulations ---------------------------------------------------------------------------------


def test_quarter_dose_has_about_four_times_the_noise_variance():
    size = 128
    rows, cols = np.mgrid[:size, :size] - size // 2
    water = np.where(rows**2 + cols**2 < 50**2, 0.0, -1000.0).astype(np.float32)
    flat = (slice(54, 74), slice(54, 74))
    ratios = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        full = simulate_ct_scan(water, 1.0, 1e5, rng, n_views=180)
        quarter = simulate_ct_scan(water, 1.0, 1e5 / 4, rng, n_views=180)
        ratios.append(quarter[flat].var() / full[flat].var())
        assert abs(full[flat].mean()) < 15  # water stays near 0 HU
    assert 3.0 < np.mean(ratios) < 5.3, ratios
    again = simulate_ct_scan(water, 1.0, 1e5, np.random.default_rng(0), n_views=180)
    np.testing.assert_array_equal(again, simulate_ct_scan(water, 1.0, 1e5, np.random.default_rng(0), n_views=180))


def test_thinned_pet_counts_are_noisier():
    size = 64
    rows, cols = np.mgrid[:size, :size] - size // 2
    disc = (rows**2 + cols**2 < 20**2).astype(np.float64)
    activity = disc * (1 + 3 * (rows**2 + cols**2 < 8**2))
    mu = 0.0096 * disc
    low, full = simulate_pet_pair(activity, mu, 2.0, 2e5, 12.0, np.random.default_rng(0), n_views=48)
    inside = disc > 0
    err_low = np.abs(low - activity)[inside].mean()
    err_full = np.abs(full - activity)[inside].mean()
    assert err_low > 1.5 * err_full
    assert abs(low[inside].mean() / activity[inside].mean() - 1) < 0.15  # counts rescaled by the factor 12
    low2, full2 = simulate_pet_pair(activity, mu, 2.0, 2e5, 12.0, np.random.default_rng(0), n_views=48)
    np.testing.assert_array_equal(low, low2)


def test_embedded_builders_write_real_formats(tmp_path, monkeypatch):
    import ratlit.data.ct as ct_module

    real = ct_module.real_ct_slices()  # every shipped slice reads, in HU at 512 x 512
    assert [patient for patient, _, _ in real] == [patient for patient, _, _ in ct_module.REAL_CT_SLICES]
    assert all(hu.shape == (512, 512) and hu.min() >= -1024 and hu.max() > 500 and mm > 0 for _, hu, mm in real)
    monkeypatch.setattr(ct_module, "real_ct_slices", lambda: real[:1])  # one of them (and a phantom) simulated
    build_embedded_pet(tmp_path / "pet", seed=3, subjects=2, slice_step=12)
    build_embedded_ct(tmp_path / "ct", seed=3, phantom_slices=(1,))
    build_embedded_pathology(tmp_path / "path")
    for cls, folder in ((PETDataModule, "pet"), (CTDataModule, "ct"), (PathologyDataModule, "path")):
        dm = _dm(cls, tmp_path / folder, tmp_path)
        samples = dm.samples()
        lq, hq = samples[0].load()
        task = OmegaConf.load(CONF_DIR / "task" / f"{cls.task}.yaml")  # the one statement of a task's channels
        assert lq.shape == hq.shape and lq.shape[0] == task.in_channels
        assert np.isfinite(lq).all() and not np.array_equal(lq, hq)
    ct = [s.load() for s in _dm(CTDataModule, tmp_path / "ct", tmp_path).samples()]
    assert all(x[0].shape == (1, 512, 512) for x in ct)
    again = tmp_path / "again"
    build_embedded_pathology(again)
    assert (again / "ihc-test.png").read_bytes() == (tmp_path / "path" / "ihc-test.png").read_bytes()


def test_embedded_build_is_atomic_and_race_free(tmp_path):
    import threading

    dm = PathologyDataModule(cache_dir=str(tmp_path), partitioner=GridPartitioner())
    stale = dm.data_root
    stale.mkdir(parents=True)
    (stale / "half-written.png").write_bytes(b"")  # an interrupted build: no COMPLETE marker
    results = []
    threads = [threading.Thread(target=lambda: results.append(dm.ensure_embedded())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [stale] * 3 and (stale / "COMPLETE").exists()
    assert not (stale / "half-written.png").exists()
    assert [p.name for p in stale.parent.iterdir() if p.is_dir()] == [stale.name]  # no temporary folders left
    assert len(dm.samples()) == 3


def test_each_stage_loads_only_its_splits_once(tmp_path):
    dm = PathologyDataModule(cache_dir=str(tmp_path), partitioner=GridPartitioner())
    dm.prepare_data()
    dm.setup("test")
    assert set(dm.datasets) == {"test"}
    test_set = dm.datasets["test"]
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val", "test"} and dm.datasets["test"] is test_set
    assert [s.name for s in dm.split_samples("val")] == ["ihc-val"]
    with pytest.raises(ValueError, match="split must be one of"):
        dm.split_samples("training")


# --- geometry of the pairs ----------------------------------------------------------------------------


def _nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(path))


def test_pet_pairs_must_share_their_geometry(tmp_path):
    root = tmp_path / "pet"
    rng = np.random.default_rng(0)
    hq = rng.uniform(1000, 5000, (12, 10, 4)).astype(np.float32)  # Bq/ml
    las = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    _nifti(root / "lq" / "P1.nii.gz", hq + 50, las)
    shifted = las.copy()
    shifted[0, 3] += 40.0  # HQ 40 mm off, same shape
    _nifti(root / "hq" / "P1.nii.gz", hq, shifted)
    with pytest.raises(ValueError, match=r"lq/P1.nii.gz and .*hq/P1.nii.gz do not pair: .*40.00 mm"):
        _dm(PETDataModule, root, tmp_path).samples()
    assert _dm(PETDataModule, root, tmp_path, geometry_tolerance_mm=50).samples()  # the tolerance is a key
    # The same grid stored RAS (x axis flipped, data flipped with it) pairs with the LAS file.
    ras = las.copy()
    ras[0, 0], ras[0, 3] = 2.0, 90 - 2.0 * (hq.shape[0] - 1)
    _nifti(root / "hq" / "P1.nii.gz", hq[::-1], ras)
    samples = _dm(PETDataModule, root, tmp_path).samples()
    lq, restored_hq = samples[0].load()
    np.testing.assert_allclose(lq - restored_hq, 50 / np.percentile(hq + 50, 99.9), rtol=1e-4)


def test_pet_dicom_pairs_with_per_slice_rescale_and_their_geometry(tmp_path):
    root = tmp_path / "pet"
    rng = np.random.default_rng(0)
    hq = rng.uniform(100, 20000, (16, 16, 3)) * np.array([1.0, 3.0, 0.5])  # each slice its own range
    write_pet_series(root / "lq" / "P1", hq * 1.1, origin=(-16.0, -16.0, 0.0))
    write_pet_series(root / "hq" / "P1", hq, origin=(-16.0, -16.0, 0.0))
    samples = _dm(PETDataModule, root, tmp_path).samples()
    lq, s_hq = samples[1].load()
    np.testing.assert_allclose(lq / s_hq, 1.1, rtol=1e-3)  # per-slice slopes applied before pairing
    write_pet_series(root / "hq" / "P1", hq, origin=(24.0, -16.0, 0.0))  # ImagePositionPatient 40 mm off
    with pytest.raises(ValueError, match=r"lq/P1/IM\d+.dcm and .*hq/P1/IM\d+.dcm do not pair: .*40.00 mm"):
        _dm(PETDataModule, root, tmp_path).samples()


def test_ct_pairs_must_share_their_in_plane_geometry(tmp_path):
    import pydicom

    root = tmp_path / "aapm"
    _write_ct_patient(root, "L001", 2)
    assert len(_dm(CTDataModule, root, tmp_path).samples()) == 2
    path = sorted((root / "L001" / "quarter_1mm").iterdir())[1]
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [0.8, 0.8]  # same position along the normal, another field of view
    ds.save_as(path)
    with pytest.raises(ValueError, match=rf"{path.name} and .*full_1mm/\d+.dcm do not pair: .*position_tolerance_mm"):
        _dm(CTDataModule, root, tmp_path).samples()


def test_unlisted_groups_are_named_and_bad_names_list_the_valid_ones(caplog):
    splits = split_groups(["P1", "P2", "P3"], {"train": ["P1"], "test": ["P2"]})
    assert splits == {"train": ["P1"], "val": [], "test": ["P2"]}
    assert "1 group(s) of the data are in no split and are left out: P3" in caplog.text
    with pytest.raises(ValueError, match=r"not in the data: \['p1'\]; the data's groups are: P1, P2, P3"):
        split_groups(["P1", "P2", "P3"], {"train": ["p1"]})
    with pytest.raises(ValueError, match="'train' must be a list of group names, got 'P1'"):
        read_splits({"train": "P1"})


def test_embedded_test_splits_hold_enough_independent_patients():
    """The embedded CT and PET test splits: at least 8 patients (subjects) and 24 slices, as the README says."""
    import ratlit.data.ct as ct_module
    import ratlit.data.pet as pet_module

    ct_test = ct_module.EMBEDDED_SPLITS["test"]
    slices = dict(zip((f"phantom-{p:02d}" for p in range(1, 99)), ct_module.EMBEDDED_PHANTOM_SLICES, strict=False))
    real = {patient for patient, _, _ in ct_module.REAL_CT_SLICES}
    assert len(set(ct_test)) >= 8 and set(ct_test) <= real | set(slices)
    assert sum(slices.get(p, 1) for p in ct_test) >= 24  # a real patient is one slice
    assert not set(ct_test) & set(ct_module.EMBEDDED_SPLITS["train"] + ct_module.EMBEDDED_SPLITS["val"])
    pet_test = pet_module.EMBEDDED_SPLITS["test"]
    made = {f"sub-{s:02d}" for s in range(1, pet_module.EMBEDDED_SUBJECTS + 1)}
    assert len(set(pet_test)) >= 8 and set(pet_test) <= made
    gm, _, _ = pet_module.mni_maps()
    per_subject = len(range(0, gm.shape[2], pet_module.EMBEDDED_SLICE_STEP))
    assert len(pet_test) * per_subject * 0.8 >= 24  # air-only slices (a few at the ends) are dropped
    # The docs quote these sizes: the table of embedded sets says what a run will show.
    table = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    ct_slices = sum(slices.get(p, 1) for p in ct_test)
    def row(task):  # the task's row of the embedded sets' table (the last table naming it)
        return table.rsplit(f"\n| {task} |", 1)[1].split("\n", 1)[0]

    assert f" | {ct_slices} ({len(set(ct_test))} patients) |" in row("ct")
    assert f" ({len(set(pet_test))} subjects) |" in row("pet")


def test_a_phantom_patients_slices_share_one_anatomy_and_patients_differ():
    from ratlit.data.simulation import phantom_patient

    rng = np.random.default_rng(5)
    first, second = phantom_patient(rng, 3, size=96), phantom_patient(rng, 3, size=96)
    def body(s):
        return s > -500

    within = np.mean([np.mean(body(a) != body(b)) for a, b in zip(first, first[1:], strict=False)])
    between = np.mean(body(first[1]) != body(second[1]))
    assert within < between  # neighbouring slices of one patient are closer than two patients
