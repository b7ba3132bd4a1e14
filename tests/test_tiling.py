"""Tiled inference (ratlit.inference): tiles bounded by max_tile, on the network's grid, whole-image regions cut
with them; local networks give the whole-image result, RAT with one tile is the whole-image call itself."""

import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from ratlit.cli.evaluate import evaluate
from ratlit.cli.predict import predict
from ratlit.inference import Tiling, tile_multiple, tile_starts, tiled_forward
from ratlit.models.cnn import ChenCNN
from ratlit.models.edsr import EDSR
from ratlit.models.rat import RAT
from ratlit.utils.config import CONF_DIR


@pytest.mark.parametrize(("size", "tile", "overlap", "multiple"),
                         [(100, 32, 8, 1), (300, 64, 16, 16), (257, 128, 32, 16), (4096, 512, 64, 16),
                          (520, 512, 64, 16)])
def test_tiles_cover_the_image_on_the_grid_with_the_overlap(size, tile, overlap, multiple):
    starts = tile_starts(size, tile, overlap, multiple)
    side = tile // multiple * multiple
    stops = [min(s + side, size) for s in starts]
    assert starts[0] == 0 and stops[-1] == size
    assert all(s % multiple == 0 for s in starts) and starts == sorted(set(starts))
    assert all(stop - start <= tile for start, stop in zip(starts, stops, strict=True))
    assert all(stops[k] - starts[k + 1] >= overlap for k in range(len(starts) - 1))


class Recorder(torch.nn.Module):
    """Returns its regions as the image (so the blend must give back the whole-image labels); records shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, lq, regions):
        self.shapes.append(tuple(lq.shape[-2:]))
        assert regions.shape[-2:] == lq.shape[-2:]
        return regions[:, None].float().expand_as(lq)


def test_max_tile_bounds_the_network_input_and_regions_are_the_whole_images_cut():
    lq = torch.zeros(2, 3, 200, 150)
    regions = torch.randint(0, 50, (2, 200, 150))
    net = Recorder()
    out = tiled_forward(net, lq, regions, Tiling(64, 16), multiple=16, progress=False)
    assert len(net.shapes) > 4 and max(max(s) for s in net.shapes) <= 64
    torch.testing.assert_close(out, regions[:, None].float().expand_as(lq), rtol=0, atol=1e-5)


@pytest.mark.parametrize("net", [ChenCNN(1, features=(16, 8)), EDSR(1, features=8, blocks=2, zero_init_last=False)])
def test_local_networks_give_the_whole_image_result(net):
    """Receptive-field radius 7 (cnn: 9, 3, 5 kernels; edsr: seven 3x3 convs) <= overlap // 4 = 8."""
    torch.manual_seed(0)
    net = net.eval()
    lq = torch.rand(1, 1, 150, 210)
    with torch.no_grad():
        whole = net(lq, None)
        tiled = tiled_forward(net, lq, None, Tiling(64, 32), progress=False)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def tiny_rat() -> RAT:
    torch.manual_seed(0)
    net = RAT(1, width=8, num_groups=1, layers_per_group=1, num_heads=2, layer_scale_init=0.5, zero_init_last=False)
    return net.eval()


def test_rat_with_one_tile_is_the_whole_image_call_bit_for_bit():
    net = tiny_rat()
    lq, regions = torch.rand(1, 1, 96, 80), torch.randint(0, 6, (1, 96, 80))
    with torch.no_grad():
        whole = net(lq, regions)
        tiled = tiled_forward(net, lq, regions, Tiling(96, 16), tile_multiple(net), progress=False)
    assert tile_multiple(net) == 16 and torch.equal(tiled, whole)


def test_rat_tiles_start_on_its_grid_and_progress_is_shown(capsys):
    """RAT is not local (NAFBlock channel means, region attention over whole regions): tiles are only checked to
    be bounded and on its 16-pixel grid (rows 0, 32, 64; columns 0, 48), to blend to finite values, with a bar."""
    net = tiny_rat()
    shapes = []
    original = net.forward

    def forward(lq, regions):
        shapes.append(tuple(lq.shape[-2:]))
        return original(lq, regions)

    net.forward = forward
    lq, regions = torch.rand(1, 1, 120, 100), torch.randint(0, 6, (1, 120, 100))
    with torch.no_grad():
        out = tiled_forward(net, lq, regions, Tiling(64, 16), tile_multiple(net))
    assert torch.isfinite(out).all()
    assert shapes == [(64, 64), (64, 52), (64, 64), (64, 52), (56, 64), (56, 52)]
    assert "tiles of 64x64" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_tile", "big", "max_tile must be null (whole images) or an integer >= 32 pixels, got 'big'"),
    ("max_tile", 8, "max_tile must be null (whole images) or an integer >= 32 pixels, got 8"),
    ("tile_overlap", -1, "tile_overlap must be an integer >= 0 pixels, got -1"),
    ("tile_overlap", 300, "tile_overlap must be less than half of max_tile (512), got 300"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_bad_tiling_key_is_one_line_naming_it(caplog, command, key, value, message):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(command, overrides=["ckpt=run.ckpt", "input=x", "output=y"] if command == "predict"
                      else ["ckpt=run.ckpt"])
    cfg[key] = value
    with caplog.at_level(logging.ERROR, logger="ratlit"), pytest.raises(SystemExit) as exit_:
        (predict if command == "predict" else evaluate)(cfg)
    assert exit_.value.code == 2 and caplog.records[-1].getMessage() == message


def test_weights_cover_every_pixel():
    """Every pixel gets a positive summed weight, for any overlap."""
    from ratlit.models.tiling import edge_weights

    for overlap in (0, 1, 2, 5, 16):
        size, starts = 97, tile_starts(97, 40, overlap, 1)
        total = np.zeros(size)
        for s in starts:
            e = min(s + 40, size)
            total[s:e] += edge_weights(s, e, size, overlap).numpy()
        assert (total > 0).all(), overlap


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_evaluate_scores_tiled_test_images():
    """evaluate sets ``module.tiling``: test_step runs the network on tiles of at most max_tile (whole before)."""
    from ratlit.losses import L1Loss
    from ratlit.training.module import RestorationModule

    net = Recorder()
    module = RestorationModule(net, L1Loss())
    module.tiling = Tiling(64, 16)
    lq = torch.rand(1, 1, 100, 90)
    batch = {"lq": lq, "hq": lq.clone(), "regions": torch.randint(0, 4, (1, 100, 90)), "name": ["a"]}
    result = module.test_step(batch, 0)
    assert result["pred"].shape == lq.shape and net.shapes and max(max(s) for s in net.shapes) <= 64


def test_predict_restores_a_large_image_in_tiles_with_progress(tmp_path, capfd):
    """A network ``lq + 0.1`` (zeroed last conv) gives the same image whole or tiled; the bars show the tiles."""
    from helpers.checkpoints import make_checkpoint
    from ratlit.data.io import read_image, write_image
    from ratlit.inference.restore import restore_paths

    image = np.random.default_rng(0).uniform(0, 0.8, (3, 80, 72)).astype(np.float32)
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "in" / name, image)
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology", bias=0.1)
    restore_paths(ckpt, tmp_path / "in", tmp_path / "out", cache_dir=tmp_path / "cache", tiling=Tiling(32, 8))
    err = capfd.readouterr().err
    assert "tiles of 32x32" in err and "files" in err
    source = read_image(tmp_path / "in" / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "out" / "a.png"), np.clip(source + 0.1, 0, 1), atol=0.6 / 255)


def test_malloc_keeps_freed_memory_only_for_bounded_tiles_without_dense_attention():
    from ratlit.inference import keeps_freed_memory

    assert keeps_freed_memory(Tiling(512, 64), "auto") and keeps_freed_memory(Tiling(512, 64), None)
    assert not keeps_freed_memory(Tiling(None), "auto") and not keeps_freed_memory(Tiling(512, 64), "dense")
