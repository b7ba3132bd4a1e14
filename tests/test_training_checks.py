"""The training step's input checks (no host sync per call, still a clear error) and the compile switch."""

import pytest
import torch

from ratlit.losses import L1Loss
from ratlit.models import RAT
from ratlit.module import RestorationModule
from ratlit.validation import DeferredFiniteCheck, finite_checks

TINY = dict(width=8, num_groups=1, layers_per_group=1, num_heads=2, window_size=4)


def test_deferred_check_names_the_bad_value_one_step_later():
    check = DeferredFiniteCheck()
    check.update(0, lq=torch.ones(2), loss=torch.tensor(1.0))
    check.update(1, lq=torch.ones(2), loss=torch.tensor(float("nan")))  # queued, not yet read
    with pytest.raises(ValueError, match="training step 1: loss contains NaN or infinite values"):
        check.update(2, lq=torch.ones(2), loss=torch.tensor(1.0))
    check.update(3, lq=torch.tensor([1.0, float("inf")]), loss=torch.tensor(1.0))
    with pytest.raises(ValueError, match="training step 3: lq contains"):
        check.flush()
    check.flush()  # read once


def test_losses_keep_their_error_outside_training():
    pred = torch.full((1, 1, 4, 4), float("nan"))
    with pytest.raises(ValueError, match="pred contains NaN"):
        L1Loss()(pred, torch.zeros(1, 1, 4, 4))
    with finite_checks(False):
        assert torch.isnan(L1Loss()(pred, torch.zeros(1, 1, 4, 4)))


def _module(**kwargs):
    module = RestorationModule(RAT(**TINY), L1Loss(), **kwargs)
    module.log = lambda *args, **kw: None  # no trainer attached
    return module


def test_training_step_stops_on_a_nan_target_without_syncing_inside_the_step():
    module = _module()
    regions = torch.randint(0, 3, (1, 16, 16))
    good = {"lq": torch.rand(1, 1, 16, 16), "hq": torch.rand(1, 1, 16, 16), "regions": regions}
    bad = dict(good, hq=good["hq"].clone().index_fill_(2, torch.tensor([5]), float("nan")))
    assert torch.isfinite(module.training_step(good, 0))
    module.training_step(bad, 1)  # the NaN goes through the network and loss unchecked...
    with pytest.raises(ValueError, match="hq, loss contains NaN"):  # ...and stops the run at the next step
        module.training_step(good, 2)
    with pytest.raises(ValueError, match="lq contains NaN"):  # the public forward still checks at once
        module(bad["hq"], regions)


def test_compile_switch_compiles_the_training_network_only():
    module = _module(compile=True)
    module.configure_model()
    assert module._train_net is not None and module._train_net._orig_mod is module.net
    assert not any(key.startswith("_train_net") for key in module.state_dict())  # checkpoints unchanged
    assert _module()._train_net is None
