"""The authors' weights: ``from_official`` gives a RAT equal to their network (tests/helpers/official_reference.py,
written from the facts of their Model_RAT.py), the paper-size state dict maps key for key, foreign weights get one clear
error, and ``ratlit.convert`` writes a checkpoint that evaluate and predict take."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers.official_reference import OfficialRAT, randomize_
from ratlit.models import RAT, from_official
from ratlit.models.official import official_options
from ratlit.training.official_checkpoint import convert
from ratlit.training.run_loading import build_module, load_checkpoint

SMALL = dict(width=8, middle_blk_num=4, layers_per_group=2)  # 32 channels at 1/4 scale, 8 heads of 4


def labels(batch: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    """Ids >= 0, not contiguous, per pixel (so which pixel of a 4x4 cell the downsampling keeps matters)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (batch, h // 8, w // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    speckle = torch.randint(0, 3, (batch, h, w), generator=g) * (torch.rand(batch, h, w, generator=g) < 0.3)
    return torch.tensor([0, 3, 7, 20, 41, 2])[coarse + speckle]


def reference(seed: int = 0, dtype=torch.float64, **kwargs) -> OfficialRAT:
    return randomize_(OfficialRAT(**{**SMALL, **kwargs}), seed).to(dtype).eval()


@pytest.mark.parametrize("region_impl", ["dense", "auto"])
@pytest.mark.parametrize("arch", [{}, dict(enc_blk_nums=(1, 2), dec_blk_nums=(2, 1), img_channel=3),
                                  dict(enc_blk_nums=(1, 1, 1), dec_blk_nums=(1, 0, 1), middle_blk_num=2,
                                       layers_per_group=1)])
def test_converted_rat_equals_the_authors_network(region_impl, arch):
    theirs = reference(**arch)
    ours = from_official(theirs.state_dict(), region_impl=region_impl).double()
    factor = 2 ** len(arch.get("enc_blk_nums", (2, 2))) * 4  # their code takes multiples of 16 (32 for 3 levels)
    g = torch.Generator().manual_seed(2)
    lq = torch.rand(2, theirs.intro.in_channels, 2 * factor, 3 * factor, generator=g, dtype=torch.float64)
    regions = labels(2, *lq.shape[2:])
    with torch.no_grad():
        expected = theirs(lq, regions.double())
        got = ours(lq, regions)
        # The comparison can fail: another label map or the standard attention scale move the output.
        assert (theirs(lq, torch.zeros_like(regions).double()) - expected).abs().max() > 1e-3
    assert (expected - lq).abs().mean() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_equal_in_float32():
    theirs = reference(dtype=torch.float32)
    lq, regions = torch.rand(1, 1, 32, 48, generator=torch.Generator().manual_seed(3)), labels(1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(from_official(theirs.state_dict())(lq, regions), theirs(lq, regions.float()),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("option", "other"), [("norm_eps", 1e-5), ("middle_residual", False),
                                               ("scale_by", "head_dim"), ("label_downsampling", "majority")])
def test_each_official_option_is_needed(option, other):
    theirs = reference()
    state = theirs.state_dict()
    lq = torch.rand(1, 1, 32, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    regions = labels(1, 32, 48)
    model = RAT(**{**official_options(state), option: other}).double().eval()
    model.load_state_dict(from_official(state).state_dict())
    with torch.no_grad():
        assert (model(lq, regions) - theirs(lq, regions.double())).abs().max() > 1e-7


def test_paper_size_maps_every_key_and_counts_their_parameters():
    state = OfficialRAT().state_dict()  # the public code's defaults
    assert len(state) == 474 and sum(v.numel() for v in state.values()) == 15_945_025
    model = from_official(state)  # strict: no key left over on either side
    assert sum(p.numel() for p in model.parameters()) == 15_945_025
    assert len(model.state_dict()) == 474
    options = official_options(state)
    assert options["width"] == 64 and options["enc_blocks"] == [2, 2] and options["dec_blocks"] == [2, 2]
    assert options["num_groups"] == 4 and options["layers_per_group"] == 3 and options["mlp_ratio"] == 2.0
    assert options["downsample"] == "conv" and options["mask_value"] == -1000.0 and options["scale_by"] == "heads"


def test_dataparallel_prefix_and_file(tmp_path):
    theirs = reference(dtype=torch.float32)
    torch.save({f"module.{k}": v for k, v in theirs.state_dict().items()}, tmp_path / "model_best.pth")
    model = from_official(tmp_path / "model_best.pth")
    lq, regions = torch.rand(1, 1, 32, 32), labels(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(lq, regions), theirs(lq, regions.float()), rtol=1e-4, atol=1e-4)


def test_foreign_weights_get_one_clear_error(tmp_path):
    path = tmp_path / "ours.pth"
    torch.save(RAT(width=8, num_groups=1, layers_per_group=1, num_heads=2).state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path} is not the authors' RAT state dict .*keys with no place in the "
                                         r"network: downs\.0\.0\.weight, downs\.1\.0\.weight, middle\.0\."):
        from_official(path)
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=rf"{path} is not the authors' .*no 4-d intro.weight.*: fc\.weight, fc\.bias"):
        from_official(path)
    torch.save({"model": reference().state_dict()}, path)
    with pytest.raises(ValueError, match=rf"{path} is not a plain state dict .*: model"):
        from_official(path)
    state = reference().state_dict()
    del state["middle_blks.1.layers.0.wa.qkv.bias"]
    with pytest.raises(ValueError, match=r"given state dict lacks .*: middle\.1\.layers\.0\.attn2\.qkv\.bias$"):
        from_official(state)
    state = reference().state_dict()
    state["ups.0.0.weight"] = state["ups.0.0.weight"][:, :, :1, :1].repeat(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"shapes differ .*: ups\.0\.0\.weight \(64, 32, 3, 3\)"):
        from_official(state)


def test_convert_writes_a_checkpoint_evaluate_and_predict_rebuild(tmp_path):
    theirs = reference(dtype=torch.float32, img_channel=3)
    torch.save(theirs.state_dict(), tmp_path / "model_best.pth")
    out = convert(tmp_path / "model_best.pth", tmp_path / "run" / "official.ckpt", "pathology",
                  ["partition=grid", f"paths.cache_dir={tmp_path / 'cache'}"])
    run_cfg, state = load_checkpoint(out)
    assert run_cfg.model.net.downsample == "conv" and run_cfg.model.net.middle_residual
    assert run_cfg.partition_used.name == "grid" and run_cfg.converted_from.file == str(tmp_path / "model_best.pth")
    net = build_module(run_cfg, state).net
    lq, regions = torch.rand(1, 3, 32, 48), labels(1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(net(lq, regions), theirs(lq, regions.float()), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="the weights take 3 channel.*task ct has 1"):
        convert(tmp_path / "model_best.pth", tmp_path / "ct.ckpt", "ct")
    assert not (tmp_path / "ct.ckpt").exists()


@pytest.mark.slow
def test_convert_command_then_predict(tmp_path):
    from ratlit.data.io import read_image, write_image

    torch.save(reference(dtype=torch.float32, img_channel=3).state_dict(), tmp_path / "theirs.pth")
    write_image(tmp_path / "tile.png", np.random.default_rng(0).uniform(0, 0.8, (3, 32, 32)).astype(np.float32))
    env = {**os.environ, "RATLIT_CACHE": str(tmp_path / "cache"), "RATLIT_OUTPUTS": str(tmp_path / "outputs")}

    def run(module, *args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    done = run("ratlit.convert", "official=theirs.pth", "out=official.ckpt", "task=pathology",
               "partition=grid", "data.scale=4")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run("ratlit.predict", "ckpt=official.ckpt", "input=tile.png", "output=restored")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_image(tmp_path / "restored" / "tile.png").shape == (3, 32, 32)
    wrong = run("ratlit.convert", "official=official.ckpt", "out=x.ckpt", "task=pathology")
    assert wrong.returncode == 2 and "official.ckpt is a ratlit checkpoint already" in wrong.stdout + wrong.stderr
    assert "Traceback" not in wrong.stderr
