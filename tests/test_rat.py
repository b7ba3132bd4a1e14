import warnings

import pytest
import torch

from helpers.compare import assert_same_network
from ratlit.models import RAT

# zero_init_last=False: these tests look at what the body computes, which a zero last layer would hide.
TINY = dict(width=8, num_groups=2, layers_per_group=1, num_heads=2, window_size=4, zero_init_last=False)


def _regions(batch, h, w, n=5):
    return torch.randint(0, n, (batch, h, w)) * 1000 + 3


@pytest.mark.parametrize("attention", ["rmsa", "wmsa", "msa"])
@pytest.mark.parametrize("size", [(16, 16), (37, 53), (1, 1), (20, 70)])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_any_size(attention, size, channels):
    model = RAT(in_channels=channels, attention=attention, **TINY)
    lq = torch.randn(2, channels, *size)
    out = model(lq, _regions(2, *size))
    assert out.shape == lq.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("downsample", ["pixel_unshuffle", "conv"])
@pytest.mark.parametrize("label_downsampling", ["nearest", "majority"])
@pytest.mark.parametrize("scale_by", ["heads", "head_dim"])
def test_switches(downsample, label_downsampling, scale_by):
    model = RAT(downsample=downsample, label_downsampling=label_downsampling, scale_by=scale_by, **TINY)
    lq = torch.randn(1, 1, 24, 40)
    assert model(lq, _regions(1, 24, 40)).shape == lq.shape


def test_paper_size():
    model = RAT()
    n_params = sum(p.numel() for p in model.parameters())
    assert 15.5e6 < n_params < 16.3e6  # the public code's model has 15.9 M
    layers = [m for g in model.middle for m in g.layers]
    assert len(layers) == 12 and len(model.middle) == 4
    assert layers[0].attn1.num_heads == 8 and layers[0].attn1.window_size == 4
    assert layers[0].attn1.qkv.in_features == 256
    assert layers[0].mlp1.fc1.out_features == 512
    assert layers[0].attn1.scale == pytest.approx(8**-0.5)
    assert RAT(scale_by="head_dim").middle[0].layers[0].attn1.scale == pytest.approx(32**-0.5)


def test_identity_at_init_and_residual():
    # The output projection starts random, so the residual is not zero, but the input must pass through.
    model = RAT(**TINY)
    with torch.no_grad():
        model.ending.weight.zero_()
        model.ending.bias.zero_()
    lq = torch.randn(1, 1, 19, 21)
    torch.testing.assert_close(model(lq, _regions(1, 19, 21)), lq)


def test_token_labels_nearest_and_majority():
    model = RAT(**TINY)
    regions = torch.zeros(1, 16, 16, dtype=torch.long)
    regions[0, 1:, 1:] = 7  # every 4x4 cell's top-left pixel is in region 0 for the first row/col
    nearest = model.token_labels(regions)
    assert nearest.shape == (1, 4, 4)
    assert (nearest[0, 0] == 0).all() and (nearest[0, 1:, 1:] == 7).all()
    model.label_downsampling = "majority"
    majority = model.token_labels(regions)
    assert (majority[0, 1:, 1:] == 7).all() and majority[0, 0, 0] == 7  # 9 of 16 pixels in region 7


def test_padding_is_its_own_region():
    model = RAT(**TINY)
    labels = model.token_labels(torch.zeros(1, 10, 10, dtype=torch.long), pad_h=6, pad_w=6)
    assert labels.shape == (1, 4, 4)
    assert set(labels.unique().tolist()) == {0, 1}
    assert (labels[0, 3] == 1).all() and (labels[0, :3, :3] == 0).all()
    extreme = torch.full((1, 10, 10), torch.iinfo(torch.int64).max)  # no id above it: the padding takes one below
    labels = model.token_labels(extreme, pad_h=6, pad_w=6)
    assert (labels[0, 3] == torch.iinfo(torch.int64).max - 1).all() and (labels[0, :3, :3] == extreme[0, 0, 0]).all()


def test_region_ids_are_arbitrary():
    model = RAT(**TINY).eval()
    lq = torch.randn(2, 1, 16, 16)
    regions = torch.randint(0, 3, (2, 16, 16))
    renamed = torch.tensor([10**15, -4, 77])[regions]
    torch.testing.assert_close(model(lq, regions), model(lq, renamed))


def test_rmsa_uses_regions_and_others_do_not():
    lq = torch.randn(1, 1, 32, 32)
    a, b = _regions(1, 32, 32, 2), _regions(1, 32, 32, 6)
    for attention, differs in [("rmsa", True), ("wmsa", False), ("msa", False)]:
        model = RAT(attention=attention, layer_scale_init=0.5, **TINY)
        if differs:
            assert (model(lq, a) - model(lq, b)).abs().max() > 1e-6
        else:
            assert torch.allclose(model(lq, a), model(lq, b))


def test_packed_and_dense_impls_agree_in_the_network():
    torch.manual_seed(0)
    packed = RAT(layer_scale_init=0.5, region_impl="packed", **TINY)
    dense = RAT(layer_scale_init=0.5, region_impl="dense", **TINY)
    dense.load_state_dict(packed.state_dict())
    lq, regions = torch.randn(2, 1, 24, 24), _regions(2, 24, 24)
    torch.testing.assert_close(packed(lq, regions), dense(lq, regions), atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    model = RAT(layer_scale_init=0.1, **TINY)
    lq = torch.randn(2, 1, 16, 16)
    model(lq, _regions(2, 16, 16)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_seeded_determinism():
    def run():
        torch.manual_seed(123)
        model = RAT(layer_scale_init=0.1, **TINY)
        lq = torch.randn(1, 1, 20, 20)
        return model(lq, _regions(1, 20, 20))

    torch.testing.assert_close(run(), run(), atol=0, rtol=0)


def test_tiny_rat_overfits_fixed_noisy_images():
    from ratlit.losses import FocalRegionLoss

    g = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    clean = torch.stack([(rows**2 + cols**2 < r).float() * 0.5 + 0.2 * cols for r in (0.3, 0.5, 0.8, 0.2)])[:, None]
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    regions = (rows**2 + cols**2 < 0.4).long().expand(4, 32, 32)
    model = RAT(**TINY)
    loss_fn = FocalRegionLoss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(noisy, regions), clean, regions)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[:: 10]


@pytest.mark.parametrize(
    "lq, regions, match",
    [
        (torch.randn(1, 1, 8, 8), torch.zeros(1, 8, 9, dtype=torch.long), r"regions must have shape \[1, 8, 8\]"),
        (torch.randn(1, 1, 8, 8), torch.zeros(1, 8, 8), "regions must have an integer dtype"),
        (torch.randn(2, 1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), "batch size"),
        (torch.full((1, 1, 8, 8), float("nan")), torch.zeros(1, 8, 8, dtype=torch.long), "lq contains NaN"),
        (torch.full((1, 1, 8, 8), float("inf")), torch.zeros(1, 8, 8, dtype=torch.long), "lq contains NaN or infinite"),
        (torch.randn(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), "lq must have 1 channel"),
        (torch.randn(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), r"lq must have shape \[B, C, H, W\]"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.long), torch.zeros(1, 8, 8, dtype=torch.long), "lq must be a floating"),
    ],
)
def test_bad_input(lq, regions, match):
    with pytest.raises(ValueError, match=match):
        RAT(**TINY)(lq, regions)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attention": "swin"}, "attention must be one of"),
        ({"downsample": "maxpool"}, "downsample must be one of"),
        ({"label_downsampling": "bilinear"}, "label_downsampling"),
        ({"region_impl": "cuda"}, "region_impl"),
        ({"enc_blocks": (2,), "dec_blocks": (2, 2)}, "one entry per level"),
        ({"width": 10, "num_heads": 3}, "divisible by num_heads"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=match):
        RAT(**args)


def _float64_pair(**kwargs):
    torch.manual_seed(0)
    packed = RAT(layer_scale_init=0.5, region_impl="packed", **TINY, **kwargs).double()
    dense = RAT(layer_scale_init=0.5, region_impl="dense", mask_value=float("-inf"), **TINY, **kwargs).double()
    dense.load_state_dict(packed.state_dict())
    return packed, dense


@pytest.mark.parametrize("size", [(24, 40), (19, 21)])
def test_packed_network_equals_dense_reference_in_float64(size):
    # One layout per forward and tokens moved once per sub-layer change nothing, forward or backward.
    packed, dense = _float64_pair()
    lq, regions = torch.randn(2, 1, *size, dtype=torch.float64), _regions(2, *size)
    assert_same_network(packed, dense, lq, regions)


def test_activation_checkpointing_gives_identical_gradients():
    def grads(checkpointing):
        torch.manual_seed(0)
        model = RAT(layer_scale_init=0.5, activation_checkpointing=checkpointing, **TINY)
        lq = torch.randn(2, 1, 16, 20)
        out = model(lq, _regions(2, 16, 20))
        out.square().mean().backward()
        return out.detach(), [p.grad for p in model.parameters()]

    out_a, grads_a = grads(False)
    out_b, grads_b = grads(True)
    assert torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.equal(a, b)


def test_nan_input_error_can_be_deferred():
    from ratlit.utils.checks import finite_checks

    model = RAT(**TINY)
    lq = torch.randn(1, 1, 16, 16)
    lq[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="lq contains NaN"):
        model(lq, _regions(1, 16, 16))
    with finite_checks(False):  # the training step: no host sync, checked once per step instead
        assert torch.isnan(model(lq, _regions(1, 16, 16))).any()
    with pytest.raises(ValueError, match="lq contains NaN"):  # switched back on after the block
        model(lq, _regions(1, 16, 16))


@pytest.mark.slow  # dynamo tracing of the blocks: about half a minute on 2 busy cores
def test_compiled_blocks_match_eager_and_do_not_recompile_per_partition():
    from ratlit.training.compiling import compile_repeated_blocks, eager

    torch._dynamo.reset()
    model = RAT(**{**TINY, "layer_scale_init": 0.5, "zero_init_last": False})
    reference = RAT(**{**TINY, "layer_scale_init": 0.5, "zero_init_last": False})
    reference.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    assert sorted(set(compile_repeated_blocks(model, backend="aot_eager"))) == ["NAFBlock", "RATLayer"]
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints unchanged
    lq = torch.randn(2, 1, 16, 16)
    for step, n in enumerate((3, 2, 7, 40)):  # other partitions, same size: the layout is built eagerly
        regions = _regions(2, 16, 16, n)
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            out = model(lq, regions)
        expected = reference(lq, regions)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
        expected_grads = torch.autograd.grad(expected.square().mean(), list(reference.parameters()))
        for g, g_ref in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
    lq, regions = torch.randn(1, 1, 20, 28), _regions(1, 20, 28, 5)
    with torch._dynamo.config.patch(error_on_recompile=True), eager():  # evaluation: any size, never compiled
        torch.testing.assert_close(model(lq, regions), reference(lq, regions), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.gpu
def test_compiled_blocks_on_cuda_train_in_bf16_and_evaluate_eagerly_with_compiled_flex():
    from ratlit.training.compiling import compile_repeated_blocks, eager

    torch._dynamo.reset()
    config = {**TINY, "width": 16, "layer_scale_init": 0.5}
    model = RAT(**config).cuda()
    reference = RAT(**{**config, "region_impl": "packed"}).cuda()
    reference.load_state_dict(model.state_dict())
    compile_repeated_blocks(model)
    lq = torch.rand(2, 1, 32, 32, device="cuda")
    for n in (3, 9):
        regions = _regions(2, 32, 32, n).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, expected = model(lq, regions), reference(lq, regions)
        torch.testing.assert_close(out.float(), expected.float(), atol=3e-2, rtol=3e-2)
        out.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    lq, regions = torch.rand(1, 1, 48, 40, device="cuda"), _regions(1, 48, 40, 5).cuda()
    with eager(), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):  # another size: blocks run eagerly
        out, expected = model(lq, regions), reference(lq, regions)
    torch.testing.assert_close(out.float(), expected.float(), atol=3e-2, rtol=3e-2)
    torch._dynamo.reset()


def test_flex_network_forward_matches_packed_on_a_sorted_layout():
    flex = RAT(**{**TINY, "region_impl": "flex", "layer_scale_init": 0.5}).eval()
    packed = RAT(**{**TINY, "region_impl": "packed", "layer_scale_init": 0.5}).eval()
    packed.load_state_dict(flex.state_dict())
    lq, regions = torch.randn(2, 1, 21, 30), _regions(2, 21, 30, 6)
    assert not flex.region_layout(regions, 11, 2).packed and packed.region_layout(regions, 11, 2).packed
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is unfused
        torch.testing.assert_close(flex(lq, regions), packed(lq, regions), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_simple_gate_gradient_in_both_memory_formats(memory_format):
    from ratlit.models.blocks import SimpleGate

    x = torch.randn(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    assert torch.autograd.gradcheck(SimpleGate(), (x,))
    out = SimpleGate()(x)
    grad = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    a, b = x.detach().chunk(2, dim=1)
    assert torch.equal(grad_x, torch.cat([grad * b, grad * a], dim=1))
    assert grad_x.is_contiguous(memory_format=memory_format)
    with pytest.raises(ValueError, match="even channel count"):
        SimpleGate()(torch.randn(1, 5, 2, 2))


def _layer_scaled_reference(module, inputs):
    """The module's forward with every layer scale applied the plain way, ``scale * layer(x)``."""
    from ratlit.models.attention import MultiHeadSelfAttention
    from ratlit.models.blocks import NAFBlock
    from ratlit.models.rat import RATLayer

    if isinstance(module, NAFBlock):
        x = inputs[0]
        y = module.gate(module.conv2(module.conv1(module.norm1(x))))
        x = x + module.conv3(y * module.sca(y)) * module.beta
        return x + module.conv5(module.gate(module.conv4(module.norm2(x)))) * module.gamma
    assert isinstance(module, RATLayer)
    x, labels = inputs
    attn1, attn2 = module.attn1, module.attn2
    plain = MultiHeadSelfAttention.forward
    x = x + module.scale1 * plain(attn1, module.norm1(x), labels)
    x = x + module.mlp1(module.norm2(x))
    x = x + module.scale2 * plain(attn2, module.norm3(x))
    return x + module.mlp2(module.norm4(x))


@pytest.mark.parametrize("attention", ["rmsa", "wmsa", "msa"])
def test_layer_scales_folded_into_weights_match_the_plain_product(attention):
    from ratlit.models.blocks import NAFBlock
    from ratlit.models.rat import RATLayer

    torch.manual_seed(0)
    cases = [(RATLayer(16, num_heads=2, attention=attention, layer_scale_init=0.7),
              (torch.randn(2, 8, 8, 16, dtype=torch.float64), torch.randint(0, 5, (2, 8, 8))))]
    if attention == "rmsa":
        cases.append((NAFBlock(6, layer_scale_init=0.7), (torch.randn(2, 6, 5, 7, dtype=torch.float64),)))
    for module, inputs in cases:
        module = module.double()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))  # every scale channel different, none zero
        x = inputs[0].requires_grad_()
        grad = torch.randn_like(x)
        got = module(*inputs)
        want = _layer_scaled_reference(module, inputs)
        torch.testing.assert_close(got, want)
        params = [x, *module.parameters()]
        for a, b in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad), strict=True):
            torch.testing.assert_close(a, b)
