"""Region density (ratlit.partition.density): SLIC's region count grows with the image's area, so an image of any
size gets the regions per pixel of the training images; an image of the training size gets exactly the run's
partition; partitioners whose region size is set in pixels or by the anatomy are left as they are."""

import json
import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers.checkpoints import make_checkpoint
from ratlit.cli.predict import predict
from ratlit.data import CTDataModule, PathologyDataModule
from ratlit.data.io import read_image, write_image
from ratlit.inference.restore import restore_paths
from ratlit.models.tiling import Tiling
from ratlit.partition import (
    FelzenszwalbPartitioner,
    GridPartitioner,
    PartitionCache,
    SinglePartitioner,
    SlicPartitioner,
)
from ratlit.partition.density import DensityKeepingCache, for_image, median_shape, reference_shape
from ratlit.utils.config import CONF_DIR


def ct_like(side: int, seed: int = 0) -> np.ndarray:
    """A noisy disc with two ellipses, the same anatomy at any ``side``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side] / side - 0.5
    image = np.where(x**2 + y**2 < 0.2, 0.5, 0.0)
    image += np.where((x / 0.3) ** 2 + ((y - 0.1) / 0.15) ** 2 < 1, 0.2, 0.0)
    image += np.where(((x + 0.2) / 0.05) ** 2 + (y / 0.08) ** 2 < 1, 0.3, 0.0)
    return (image + rng.normal(0, 0.02, image.shape)).astype(np.float32)


def test_median_shape_is_the_median_image_by_area():
    assert median_shape([(1, 512, 512), (1, 512, 320), (1, 192, 192)]) == (512, 320)
    assert median_shape([(64, 64), (32, 32)]) == (32, 32) and median_shape([]) is None


def test_slic_count_grows_with_the_area_and_the_reference_size_keeps_the_partitioner():
    slic = SlicPartitioner(n_segments=100, compactness=0.2)
    slic.requested = "sam"
    assert for_image(slic, (512, 512), (512, 512)) is slic and for_image(slic, (4096, 4096), None) is slic
    big = for_image(slic, (1, 4096, 4096), (512, 512))
    assert big.n_segments == 6400 and big.compactness == 0.2 and big.requested == "sam"
    assert for_image(slic, (192, 192), (512, 512)).n_segments == 14
    assert for_image(SlicPartitioner(n_segments=2), (8, 8), (512, 512)).n_segments == 1
    for fixed in (FelzenszwalbPartitioner(), GridPartitioner(), SinglePartitioner()):
        assert for_image(fixed, (4096, 4096), (512, 512)) is fixed


def test_regions_per_pixel_stay_those_of_the_reference_image():
    """SLIC places its seeds on a grid, so counts move in steps: 4x the area gives 3-6x the regions."""
    slic = SlicPartitioner(n_segments=100)
    reference = int(slic(ct_like(128)).max()) + 1
    unscaled = int(slic(ct_like(256)).max()) + 1
    kept = int(for_image(slic, (256, 256), (128, 128))(ct_like(256)).max()) + 1
    assert 0.8 * reference <= unscaled <= 1.25 * reference  # a fixed count: 4x larger regions
    assert 3 * reference <= kept <= 6 * reference, (reference, unscaled, kept)


def test_the_reference_size_reads_the_runs_own_cache_bit_for_bit(tmp_path):
    slic = SlicPartitioner(n_segments=30)
    image, large = ct_like(64)[None], ct_like(128)[None]
    cache = DensityKeepingCache(tmp_path, slic, (64, 64))
    labels = cache.labels(image)
    np.testing.assert_array_equal(labels, slic(image))
    assert PartitionCache(tmp_path, slic).contains(image)  # the folder predict used before, reused
    assert cache.labels(large).max() + 1 > 2 * (labels.max() + 1)
    specs = sorted(json.loads(p.read_text())["n_segments"] for p in tmp_path.glob("*/partitioner.json"))
    assert specs == [30, 120]


def test_the_region_reference_setting():
    assert reference_shape("train", [512, 320]) == (512, 320) and reference_shape("train", None) is None
    assert reference_shape(None, [512, 512]) is None and reference_shape(256, [512, 512]) == (256, 256)
    assert reference_shape([96, 128], None) == (96, 128)


@pytest.mark.parametrize("value", ["big", 0, True, [512], [512, 0], [512.5, 512]])
def test_a_bad_region_reference_is_one_line_naming_it(caplog, value):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=["ckpt=run.ckpt", "input=x", "output=y"])
    with pytest.raises(ValueError, match="region_reference must be train, null, a side or"):
        reference_shape(value, None)
    cfg.region_reference = value
    with caplog.at_level(logging.ERROR, logger="ratlit"), pytest.raises(SystemExit) as exit_:
        predict(cfg)
    assert exit_.value.code == 2 and caplog.records[-1].getMessage().startswith("region_reference must be")


def test_training_records_the_median_training_image_shape(ct_root, tmp_path):
    assert CTDataModule(root=str(ct_root), cache_dir=str(tmp_path)).train_image_shape() == (48, 48)
    assert PathologyDataModule(cache_dir=str(tmp_path), partitioner=GridPartitioner()).train_image_shape() == (512, 320)


def regions_matter(ckpt):
    """The checkpoint with every zero-initialised scale (attention outputs, NAFBlocks' beta / gamma) at 0.5."""
    saved = torch.load(ckpt, weights_only=True)
    for value in saved["state_dict"].values():
        if value.is_floating_point() and not value.any():
            value.fill_(0.5)
    torch.save(saved, ckpt)
    return ckpt


def restore(tmp_path, ckpt, image, name, **kwargs):
    write_image(tmp_path / f"in_{name}" / "x.png", image)
    restore_paths(ckpt, tmp_path / f"in_{name}" / "x.png", tmp_path / name, cache_dir=tmp_path / f"cache_{name}",
                  **kwargs)
    specs = [json.loads(p.read_text()) for p in (tmp_path / f"cache_{name}").rglob("partitioner.json")]
    return read_image(tmp_path / name / "x.png"), [spec["n_segments"] for spec in specs]


def test_predict_keeps_the_training_density_and_the_training_size_is_unchanged(tmp_path, caplog):
    """A RAT whose output depends on its regions (a random last conv): at the recorded training size the result
    is bit for bit the run's partitioner's (as before the density rule); at twice the side SLIC gets 4x the
    regions, unless ``region_reference=None``; a run recording no size warns and keeps the count."""
    ckpt = regions_matter(make_checkpoint(tmp_path / "path.ckpt", "pathology", bias=None, partition="slic",
                                          train_image_shape=(64, 64)))
    rng = np.random.default_rng(0)
    small, large = (rng.uniform(0, 0.8, (3, side, side)).astype(np.float32) for side in (64, 128))
    kept, counts = restore(tmp_path, ckpt, small, "kept")
    fixed, fixed_counts = restore(tmp_path, ckpt, small, "fixed", region_reference=None)
    assert counts == fixed_counts == [100] and np.array_equal(kept, fixed)
    assert not np.array_equal(kept, restore(tmp_path, ckpt, small, "grid", region_reference=8)[0])  # 6400 regions
    scaled, counts = restore(tmp_path, ckpt, large, "scaled", tiling=Tiling(64, 16))
    unscaled, fixed_counts = restore(tmp_path, ckpt, large, "unscaled", tiling=Tiling(64, 16), region_reference=None)
    assert counts == [400] and fixed_counts == [100] and not np.array_equal(scaled, unscaled)
    old = make_checkpoint(tmp_path / "old.ckpt", "pathology", bias=None, partition="slic")
    with caplog.at_level(logging.WARNING, logger="ratlit"):
        _, counts = restore(tmp_path, old, large, "old")
    assert counts == [100] and "records no training image size: every image gets 100 SLIC regions" in caplog.text
