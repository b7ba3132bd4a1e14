import multiprocessing as mp
import os
import sys
import time
import types

import numpy as np
import pytest
import torch
from skimage import data

from ratlit.partition import (
    CacheStats,
    FelzenszwalbPartitioner,
    GridPartitioner,
    PartitionCache,
    SamCheckpointNotFoundError,
    SamPartitioner,
    SinglePartitioner,
    SlicPartitioner,
    build_sam_partitioner,
    labels_from_masks,
    load_sam,
    to_uint8_rgb,
)
from ratlit.partition import _torchvision_compat as compat
from ratlit.partition import sam as sam_module
from ratlit.partition._torchvision_compat import (
    batched_nms,
    greedy_batched_nms,
    import_segment_anything,
    torchvision_usable,
)


def _mask(shape, rows, cols, **extra):
    seg = np.zeros(shape, dtype=bool)
    seg[rows, cols] = True
    return {"segmentation": seg, "area": int(seg.sum()), **extra}


# --- Eq. 1 post-processing ---------------------------------------------------------------------


def test_nested_masks_go_to_the_smallest():
    big = _mask((6, 6), slice(0, 5), slice(0, 5))
    small = _mask((6, 6), slice(1, 3), slice(1, 3))
    labels = labels_from_masks([small, big], (6, 6))
    assert labels.dtype == np.int64
    assert len(np.unique(labels)) == 3
    assert (labels[1:3, 1:3] == labels[1, 1]).all()
    assert labels[0, 0] == labels[4, 4] != labels[1, 1]
    assert labels[5, 5] == labels[0, 5] not in (labels[0, 0], labels[1, 1])  # background
    np.testing.assert_array_equal(labels, labels_from_masks([big, small], (6, 6)))  # order-free


def test_partial_overlap_goes_to_the_smaller_mask():
    a = _mask((4, 8), slice(None), slice(0, 5))  # 20 px
    b = _mask((4, 8), slice(None), slice(3, 6))  # 12 px, overlaps a in columns 3-4
    labels = labels_from_masks([a, b], (4, 8))
    assert (labels[:, 3:6] == labels[0, 3]).all() and (labels[:, :3] == labels[0, 0]).all()
    assert len({labels[0, 0], labels[0, 3], labels[0, 7]}) == 3


def test_nothing_covered_is_one_background_region():
    labels = labels_from_masks([], (5, 7))
    assert labels.shape == (5, 7) and (labels == 0).all()


def test_one_mask_covering_everything():
    labels = labels_from_masks([_mask((3, 3), slice(None), slice(None))], (3, 3))
    assert (labels == 0).all()


def test_background_is_one_region_even_when_split():
    labels = labels_from_masks([_mask((3, 9), slice(None), slice(3, 6))], (3, 9))
    assert labels[0, 0] == labels[0, 8] != labels[0, 4]


def test_min_region_area_and_rle():
    small = _mask((4, 4), slice(0, 1), slice(0, 1))
    rle = {"segmentation": {"size": [4, 4], "counts": [0, 8, 8]}}  # column-major: first two columns
    labels = labels_from_masks([small, rle], (4, 4), min_region_area=2)
    assert (labels[:, :2] == labels[0, 0]).all() and (labels[:, 2:] != labels[0, 0]).all()


@pytest.mark.parametrize(
    "masks, match",
    [
        ([{"segmentation": np.zeros((3, 3), bool)}], r"masks\[0\]\['segmentation'\] has shape"),
        ([{"mask": np.zeros((4, 4), bool)}], r"masks\[0\] must be a dict with a 'segmentation'"),
        (["not a mask"], r"masks\[0\]"),
    ],
)
def test_bad_masks(masks, match):
    with pytest.raises(ValueError, match=match):
        labels_from_masks(masks, (4, 4))


# --- classical partitioners ----------------------------------------------------------------------


def test_classical_partitioners_on_real_images():
    camera = data.camera()[::4, ::4]
    ihc = data.immunohistochemistry()[::4, ::4].transpose(2, 0, 1)
    for image in (camera, ihc, torch.from_numpy(camera.astype(np.float32))[None]):
        for partitioner, low, high in [
            (SlicPartitioner(n_segments=50), 10, 90),
            (FelzenszwalbPartitioner(), 2, 2000),
            (GridPartitioner(16), 64, 64),
            (SinglePartitioner(), 1, 1),
        ]:
            labels = partitioner(image)
            assert labels.shape == (128, 128) and labels.dtype == np.int64
            n = len(np.unique(labels))
            assert low <= n <= high, (partitioner, n)
            assert labels.max() == n - 1  # contiguous ids


def test_grid_cells_and_odd_sizes():
    labels = GridPartitioner(4)(np.zeros((6, 10)))
    assert len(np.unique(labels)) == 2 * 3
    assert (labels[:4, :4] == labels[0, 0]).all() and labels[4, 0] != labels[0, 0]


def test_partitioners_ignore_intensity_units_with_a_window():
    image = data.camera()[::4, ::4].astype(np.float64)
    hu = image / 255 * 2000 - 1000  # the same picture in "HU"
    a = SlicPartitioner(window=(0, 255))(image)
    b = SlicPartitioner(window=(-1000, 1000))(hu)
    np.testing.assert_array_equal(a, b)


def test_uint8_rgb_for_sam():
    rgb = to_uint8_rgb(np.linspace(-1000, 1000, 12).reshape(3, 4, 1), window=(-500, 500))
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((2, 5, 5)), r"with C in \(1, 3\)"),
        (np.zeros((5,)), "got shape"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_images(image, match):
    with pytest.raises(ValueError, match=match):
        SlicPartitioner()(image)


def test_spec_and_fingerprint():
    assert SlicPartitioner().fingerprint == SlicPartitioner().fingerprint
    assert SlicPartitioner(n_segments=99).fingerprint != SlicPartitioner().fingerprint
    assert SlicPartitioner().spec["name"] == "slic"


# --- SAM ------------------------------------------------------------------------------------------


def _tiny_sam():
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    return _build_sam(encoder_embed_dim=16, encoder_depth=1, encoder_num_heads=1, encoder_global_attn_indexes=[0])


@pytest.fixture
def tiny_sam(tmp_path, monkeypatch):
    """A tiny SAM from segment_anything's own classes with random weights, registered as model type 'tiny'."""
    import_segment_anything()
    monkeypatch.setitem(sam_module.SAM_BUILDERS, "tiny", _tiny_sam)
    path = tmp_path / "sam_tiny.pth"
    torch.save(_tiny_sam().state_dict(), path)
    return path


TINY_KNOBS = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, device="cpu")


def test_real_sam_path_end_to_end(tiny_sam, tmp_path):
    partitioner = SamPartitioner("tiny", str(tiny_sam), **TINY_KNOBS)
    image = data.camera()[::8, ::8].astype(np.float32)  # 64 x 64 grey, float
    labels = partitioner(image)
    assert labels.shape == (64, 64) and labels.dtype == np.int64
    masks = partitioner.generator.generate(to_uint8_rgb(image[..., None]))
    assert len(masks) > 0
    np.testing.assert_array_equal(labels, labels_from_masks(masks, (64, 64)))
    assert partitioner.spec["checkpoint"] == str(tiny_sam) and partitioner.spec["model_type"] == "tiny"

    cache = PartitionCache(tmp_path / "cache", partitioner)
    stats = CacheStats()
    np.testing.assert_array_equal(cache.labels(image, stats), labels)
    np.testing.assert_array_equal(cache.labels(image, stats), labels)
    assert (stats.computed, stats.reused) == (1, 1)


def test_checkpoint_from_environment(tiny_sam, monkeypatch):
    monkeypatch.setenv("RATLIT_SAM_CHECKPOINT", str(tiny_sam))
    assert SamPartitioner("tiny", **TINY_KNOBS).checkpoint == tiny_sam


def test_wrapped_checkpoint_loads(tiny_sam, tmp_path):
    wrapped = tmp_path / "medsam_like.pth"
    torch.save({"model": torch.load(tiny_sam, weights_only=True), "epoch": 3}, wrapped)
    assert load_sam("tiny", wrapped) is not None


def test_missing_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("RATLIT_SAM_CHECKPOINT", raising=False)
    with pytest.raises(SamCheckpointNotFoundError, match="partition=slic"):
        SamPartitioner()
    with pytest.raises(SamCheckpointNotFoundError, match=str(tmp_path / "nope.pth")):
        SamPartitioner(checkpoint=str(tmp_path / "nope.pth"))


def test_missing_checkpoint_falls_back_loudly(monkeypatch):
    monkeypatch.delenv("RATLIT_SAM_CHECKPOINT", raising=False)
    with pytest.warns(UserWarning, match="USING SLIC INSTEAD"):
        partitioner = build_sam_partitioner(fallback=SlicPartitioner(), model_type="vit_b")
    assert isinstance(partitioner, SlicPartitioner)
    assert partitioner.spec["name"] == "slic" and partitioner.spec["requested"] == "sam"


def test_wrong_and_corrupt_checkpoints(tiny_sam, tmp_path, monkeypatch):
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match=f"{other}.*does not fit model_type 'tiny'"):
        load_sam("tiny", other)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read SAM checkpoint {corrupt}"):
        load_sam("tiny", corrupt)
    # A corrupt checkpoint never falls back silently.
    with pytest.raises(ValueError, match="cannot read"):
        build_sam_partitioner(fallback=SlicPartitioner(), model_type="tiny", checkpoint=str(corrupt))
    with pytest.raises(ValueError, match="unknown SAM model_type 'vit_s'"):
        load_sam("vit_s", tiny_sam)


def random_boxes(n: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` boxes (x0, y0, x1, y1), their scores and one of three categories each."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 20], dim=1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_stand_in_nms_matches_a_plain_greedy_nms():
    boxes, scores, cats = random_boxes()
    keep = greedy_batched_nms(boxes, scores, cats, 0.4).tolist()

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    expected = []
    for i in sorted(range(60), key=lambda i: -scores[i].item()):
        if all(cats[i] != cats[j] or iou(boxes[i].tolist(), boxes[j].tolist()) <= 0.4 for j in expected):
            expected.append(i)
    assert keep == expected


@pytest.mark.skipif(not torchvision_usable(), reason="torchvision does not import beside this torch build")
def test_torchvisions_nms_and_the_stand_in_keep_the_same_boxes():
    from torchvision.ops import batched_nms as torchvision_batched_nms

    boxes, scores, cats = random_boxes()
    assert batched_nms(boxes, scores, cats, 0.4).tolist() == torchvision_batched_nms(boxes, scores, cats, 0.4).tolist()
    assert greedy_batched_nms(boxes, scores, cats, 0.4).tolist() == batched_nms(boxes, scores, cats, 0.4).tolist()


def test_batched_nms_is_torchvisions_where_it_imports_else_the_stand_in(monkeypatch):
    boxes, scores, cats = random_boxes()
    calls = []
    ops = types.ModuleType("torchvision.ops")  # records the call, answers as the stand-in does
    ops.batched_nms = lambda *args: calls.append(args) or greedy_batched_nms(*args)
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)
    monkeypatch.setattr(compat, "torchvision_usable", lambda: True)
    pixel_boxes = boxes.round().long()  # as mask boxes are
    expected = greedy_batched_nms(pixel_boxes, scores, cats, 0.4).tolist()
    assert batched_nms(pixel_boxes, scores, cats, 0.4).tolist() == expected
    assert len(calls) == 1 and calls[0][0].dtype == torch.float32  # torchvision's NMS takes float boxes only
    monkeypatch.setattr(compat, "torchvision_usable", lambda: False)
    assert batched_nms(pixel_boxes, scores, cats, 0.4).tolist() == expected and len(calls) == 1


# --- cache ----------------------------------------------------------------------------------------


class CountingSlic(SlicPartitioner):
    calls = 0

    def _partition(self, image):
        CountingSlic.calls += 1
        return super()._partition(image)


def test_cache_hit_miss_and_config_change(tmp_path):
    image = data.camera()[::8, ::8]
    CountingSlic.calls = 0
    cache = PartitionCache(tmp_path, CountingSlic(n_segments=20))
    first = cache.labels(image)
    np.testing.assert_array_equal(cache.labels(image), first)
    assert CountingSlic.calls == 1
    assert PartitionCache(tmp_path, CountingSlic(n_segments=20)).contains(image)
    changed = PartitionCache(tmp_path, CountingSlic(n_segments=40))
    assert not changed.contains(image)
    changed.labels(image)
    assert CountingSlic.calls == 2
    assert not cache.contains(image[:, :-1])  # another image is another key
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong shape", "empty"])
def test_corrupt_entry_is_repaired(tmp_path, damage):
    image = data.camera()[::8, ::8]
    cache = PartitionCache(tmp_path, SlicPartitioner(n_segments=20))
    good = cache.labels(image)
    path = next(cache.folder.glob("*.npz"))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez_compressed(path, labels=np.zeros((3, 3), np.int32), digest=np.array(path.stem))
    stats = CacheStats()
    np.testing.assert_array_equal(cache.labels(image, stats), good)
    assert stats.repaired == 1
    assert cache.contains(image)


def _write_same_key(root, barrier):
    cache = PartitionCache(root, SlicPartitioner(n_segments=20))
    barrier.wait()
    for _ in range(5):
        cache._write("shared", np.arange(64 * 64).reshape(64, 64) % 7)
        cache.labels(data.camera()[::8, ::8])


def test_two_processes_writing_one_key(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_same_key, args=(tmp_path, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = PartitionCache(tmp_path, SlicPartitioner(n_segments=20))
    with np.load(cache.path("shared")) as entry:
        assert entry["labels"].shape == (64, 64)
    assert cache.contains(data.camera()[::8, ::8])
    assert not list(tmp_path.rglob("*.tmp"))


def _fill_cache(root, log_path, barrier, queue):
    """One run filling the cache: every partitioning it does is appended to ``log_path`` (shared by runs)."""
    partitioner = GridPartitioner(8)
    compute = partitioner._partition

    def counted(image):
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.05)  # long enough that the two runs overlap on every entry
        return compute(image)

    partitioner._partition = counted
    cache, stats = PartitionCache(root, partitioner), CacheStats()
    barrier.wait()
    for seed in range(12):
        cache.labels(np.random.default_rng(seed).uniform(0, 1, (32, 32)), stats)
    queue.put((stats.computed, stats.reused, stats.repaired))


def test_two_runs_on_a_fresh_cache_compute_each_entry_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue, log_path = ctx.Barrier(2), ctx.Queue(), tmp_path / "computed.log"
    procs = [ctx.Process(target=_fill_cache, args=(tmp_path / "cache", log_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(log_path.read_text().split()) == 12  # 12 entries, each partitioned by one of the two runs
    assert sum(r[0] for r in results) == 12 and sum(r[1] for r in results) == 12 and all(r[2] == 0 for r in results)
    cache = PartitionCache(tmp_path / "cache", GridPartitioner(8))
    assert all(cache.contains(np.random.default_rng(seed).uniform(0, 1, (32, 32))) for seed in range(12))
    assert not list((tmp_path / "cache").rglob("*.tmp")) and not list((tmp_path / "cache").rglob("*.lock"))


def test_unwritable_cache_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created"):
        PartitionCache(blocker / "sub", SlicPartitioner())
