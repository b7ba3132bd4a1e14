"""The training step's input checks (no host sync per call, still a clear error) and the compile switch."""

import pytest
import torch

from ratlit.losses import L1Loss
from ratlit.models import RAT
from ratlit.training.module import RestorationModule
from ratlit.utils.checks import DeferredFiniteCheck, finite_checks

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


def test_compile_switch_compiles_the_repeated_blocks_in_place(monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append((type(fn.__self__).__name__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    module = _module(compile=True)
    keys = list(module.state_dict())
    module.configure_model()
    module.configure_model()  # Lightning may call it again: compiled once
    blocks = [type(m).__name__ for m in module.net.modules() if type(m).__name__ in ("NAFBlock", "RATLayer")]
    assert [name for name, _ in calls] == blocks and module.compiled_blocks == blocks
    assert all(kwargs == {"dynamic": False} for _, kwargs in calls)
    assert list(module.state_dict()) == keys  # checkpoints unchanged
    assert _module().compiled_blocks == []


@pytest.mark.slow
def test_compiled_training_step_then_eager_evaluation_of_other_sizes(monkeypatch):
    import functools

    import ratlit.training.module

    # aot_eager: the same dynamo graphs and AOTAutograd joint graphs as inductor, without its C++ build (80 s on
    # a cold 2-core machine); inductor itself is exercised by the CUDA tests (test_rat.py, bash gpu_check.sh).
    monkeypatch.setattr(ratlit.training.module, "compile_repeated_blocks",
                        functools.partial(ratlit.training.module.compile_repeated_blocks, backend="aot_eager"))
    torch._dynamo.reset()
    module = _module(compile=True)
    module.configure_model()
    batch = {"lq": torch.rand(2, 1, 16, 16), "hq": torch.rand(2, 1, 16, 16),
             "regions": torch.randint(0, 3, (2, 16, 16))}
    for step in range(2):
        module.training_step(dict(batch, regions=torch.randint(0, 3 + 4 * step, (2, 16, 16))), step).backward()
    with torch._dynamo.config.patch(error_on_recompile=True):  # whole images of another size: run eagerly
        out = module.validation_step({"lq": torch.rand(1, 1, 20, 28), "hq": torch.rand(1, 1, 20, 28),
                                      "regions": torch.randint(0, 5, (1, 20, 28))}, 0)
    assert out["pred"].shape == (1, 1, 20, 28)
    torch._dynamo.reset()


def test_compile_auto_compiles_on_cuda_only_and_bad_values_are_one_error(monkeypatch):
    from types import SimpleNamespace

    from ratlit.training.compiling import compiles_on

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(fn) or fn)
    module = _module(compile="auto")
    module.configure_model()  # no trainer: the module's own device, the CPU
    assert module.compiled_blocks == [] and calls == []
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.configure_model()
    assert module.compiled_blocks == [] and calls == []
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    module.configure_model()  # a GPU run: compiled (before the strategy moves the module there)
    assert module.compiled_blocks and len(calls) == len(module.compiled_blocks)
    assert compiles_on(True, torch.device("cpu")) and not compiles_on(False, torch.device("cuda"))
    for bad in ("yes", "Auto", 2, None):
        with pytest.raises(ValueError, match=f"model.compile must be true, false or auto, got {bad!r}"):
            _module(compile=bad)


def test_first_compiled_step_logs_its_time_once(monkeypatch, caplog):
    import logging

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    module = _module(compile=True)
    module.configure_model()
    batch = {"lq": torch.rand(1, 1, 16, 16), "hq": torch.rand(1, 1, 16, 16), "regions": torch.zeros(1, 16, 16).long()}
    with caplog.at_level(logging.INFO, logger="ratlit.training.module"):
        for step in range(3):
            module.on_train_batch_start(batch, step)
            module.on_train_batch_end(module.training_step(batch, step), batch, step)
    logged = [r.getMessage() for r in caplog.records if "first training step" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("first training step with compiled blocks: ")
    eager = _module()
    with caplog.at_level(logging.INFO, logger="ratlit.training.module"):
        eager.on_train_batch_start(batch, 0)
        eager.on_train_batch_end(None, batch, 0)
    assert len([r for r in caplog.records if "first training step" in r.getMessage()]) == 1
