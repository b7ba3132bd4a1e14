import pytest
import torch

from ratlit.losses import LOSSES, CharbonnierLoss, FocalRegionLoss, L1Loss
from ratlit.utils.checks import finite_checks


def eq5_loop(pred, target, regions, gamma, delta):
    """A plain reading of Eq. 5: loop over images and regions, weights normalised per image."""
    total = 0.0
    for b in range(pred.shape[0]):
        ids = regions[b].unique()
        errs = {int(i): (pred[b] - target[b]).abs()[:, regions[b] == i].mean() ** delta for i in ids}
        largest = max(errs.values())
        for i in ids:
            mask = regions[b] == i
            total = total + (1 + gamma * errs[int(i)] / largest) * (pred[b] - target[b]).abs()[:, mask].sum()
    return total / pred.numel()


@pytest.mark.parametrize("gamma, delta", [(1e-3, 1.0), (0.5, 1.0), (2.0, 2.0), (1.0, 0.5)])
@pytest.mark.parametrize("channels", [1, 3])
def test_focal_region_loss_matches_loop(gamma, delta, channels):
    pred = torch.rand(3, channels, 11, 13, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, channels, 11, 13, dtype=torch.float64)
    regions = torch.randint(0, 5, (3, 11, 13)) * 10**9 - 3
    regions[1] = 42  # one image with a single region
    loss = FocalRegionLoss(gamma, delta)(pred, target, regions)
    ref = eq5_loop(pred, target, regions, gamma, delta)
    torch.testing.assert_close(loss, ref)
    g, = torch.autograd.grad(loss, pred)
    g_ref, = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(g, g_ref)


def test_gamma_zero_is_exactly_l1():
    pred, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    regions = torch.randint(0, 3, (2, 8, 8))
    assert FocalRegionLoss(gamma=0)(pred, target, regions) == L1Loss()(pred, target)
    assert FocalRegionLoss(gamma=0)(pred, target, regions) == torch.nn.functional.l1_loss(pred, target)


def test_focal_weights_favour_the_hard_region():
    target = torch.zeros(1, 1, 4, 4)
    pred = target.clone()
    pred[..., :2, :] = 1.0  # region 0 is wrong, region 1 is right
    regions = torch.zeros(1, 4, 4, dtype=torch.long)
    regions[..., 2:, :] = 1
    w = FocalRegionLoss(gamma=1.0).region_weights((pred - target).abs(), regions)
    assert (w[..., :2, :] == 1).all() and (w[..., 2:, :] == 0).all()
    assert FocalRegionLoss(gamma=1.0)(pred, target, regions) == pytest.approx(2 * 0.5)


def test_perfect_prediction_is_zero_and_finite_gradient():
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    loss = FocalRegionLoss(1.0, 0.5)(x, x.detach().clone(), torch.randint(0, 3, (2, 6, 6)))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(x.grad).all()


def test_charbonnier():
    pred, target = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0)
    assert CharbonnierLoss(eps=4.0)(pred, target).item() == pytest.approx(5.0)
    assert set(LOSSES) == {"l1", "mse", "fr", "charbonnier", "edcnn"}


@pytest.mark.parametrize(
    "pred, target, regions, match",
    [
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5), torch.zeros(1, 4, 4, dtype=torch.long), "shapes differ"),
        (torch.rand(2, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "batch sizes differ"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.zeros(1, 4, 4), "regions must have an integer"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long),
         "regions must have shape"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), None, "needs regions"),
        (torch.full((1, 1, 4, 4), float("nan")), torch.rand(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long),
         "pred contains NaN"),
        (torch.rand(1, 1, 4, 4), torch.full((1, 1, 4, 4), float("inf")), torch.zeros(1, 4, 4, dtype=torch.long),
         "target contains NaN"),
    ],
)
def test_bad_input(pred, target, regions, match):
    with pytest.raises(ValueError, match=match):
        FocalRegionLoss()(pred, target, regions)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="gamma"):
        FocalRegionLoss(gamma=-1)
    with pytest.raises(ValueError, match="eps"):
        CharbonnierLoss(eps=0)


def test_half_precision_inputs_use_float32_statistics():
    pred, target = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    regions = torch.randint(0, 4, (2, 16, 16))
    full = FocalRegionLoss(gamma=1.0)(pred, target, regions)
    half = FocalRegionLoss(gamma=1.0)(pred.bfloat16(), target.bfloat16(), regions)
    assert half.dtype == torch.float32
    assert abs(half.item() - full.item()) < 1e-2


def _reference_weights(error: torch.Tensor, regions: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 5's weights written out region by region, image by image."""
    weights = torch.zeros(error.shape[0], 1, *error.shape[2:], dtype=torch.float64)
    for b in range(error.shape[0]):
        pixel_error = error[b].double().mean(dim=0)
        region_error = {int(r): pixel_error[regions[b] == r].mean() ** delta for r in regions[b].unique()}
        largest = max(max(region_error.values()), 1e-300)
        for r, e in region_error.items():
            weights[b, 0][regions[b] == r] = e / largest
    return weights


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_focal_weights_match_a_region_by_region_reference(delta):
    error = torch.rand(3, 2, 9, 11)
    regions = torch.randint(-4, 5, (3, 9, 11)) * 10**12  # arbitrary, negative and huge ids
    regions[1] = 7  # one region only
    regions[2] = torch.arange(99).view(9, 11)  # one pixel per region
    weights = FocalRegionLoss(gamma=1.0, delta=delta).region_weights(error, regions)
    torch.testing.assert_close(weights.double(), _reference_weights(error, regions, delta), atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
def test_focal_region_loss_never_waits_for_the_gpu():
    pred = torch.rand(4, 1, 64, 64, device="cuda", requires_grad=True)
    target, regions = torch.rand(4, 1, 64, 64, device="cuda"), torch.randint(0, 50, (4, 64, 64), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with finite_checks(False):  # as in the training step
            FocalRegionLoss()(pred, target, regions).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
