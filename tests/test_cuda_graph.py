"""CUDA-graph training (model.cuda_graph): the same gradients and the same run as the eager step."""

import contextlib
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ratlit.losses import FocalRegionLoss
from ratlit.models import RAT
from ratlit.training.cuda_graph import GraphedBackward
from ratlit.training.module import RestorationModule
from ratlit.utils.checks import finite_checks

TINY = dict(width=8, num_groups=1, layers_per_group=2, num_heads=2, window_size=4, zero_init_last=False)


def _batch(batch: int = 2, side: int = 32, device: str = "cpu", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    hq = torch.rand(batch, 1, side, side, generator=g)
    lq = hq + 0.1 * torch.randn(batch, 1, side, side, generator=g)
    regions = torch.randint(0, 5, (batch, side // 8, side // 8), generator=g)
    regions = regions.repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocky regions, as partitions make
    return {k: v.to(device) for k, v in dict(lq=lq, hq=hq, regions=regions).items()}


def _loss_fn(net, loss):
    def step_loss(lq, hq, regions):
        with finite_checks(False):
            return loss(net(lq, regions), hq, regions)
    return step_loss


def _reference_grads(net, loss, batch, autocast=None):
    net.zero_grad(set_to_none=True)
    with autocast or contextlib.nullcontext():
        value = _loss_fn(net, loss)(**batch)
    value.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    return value.detach(), grads


def test_without_cuda_every_step_is_eager_and_writes_its_gradients():
    net, loss = RAT(**TINY), FocalRegionLoss()
    batches = [_batch(seed=s) for s in range(3)]
    expected = [_reference_grads(net, loss, b) for b in batches]
    step = GraphedBackward(_loss_fn(net, loss), list(net.parameters()), warmup=2)
    for batch, (value, grads) in zip(batches, expected, strict=True):
        got = step(**batch)
        assert torch.equal(got, value)
        for p, g in zip(net.parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad, g)  # written, not added to the last step's
    assert not step.captured and step.calls == 3
    with pytest.raises(ValueError, match="warmup must be >= 2"):
        GraphedBackward(_loss_fn(net, loss), list(net.parameters()), warmup=1)


def _fit(cuda_graph, steps: int = 5, accelerator: str = "cpu",
         **trainer_kwargs) -> tuple[RestorationModule, list[torch.Tensor], float]:
    torch.manual_seed(0)
    module = RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph=cuda_graph, cuda_graph_warmup=2)
    data = [_batch(seed=s) for s in range(steps)]
    loader = DataLoader(data, batch_size=None)
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        **trainer_kwargs)
    trainer.fit(module, loader)
    assert trainer.global_step == steps
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    return module, [p.detach().clone() for p in module.parameters()], float(lr)


@pytest.mark.parametrize("clip", [None, 0.01])
def test_cuda_graph_run_on_the_cpu_trains_as_the_usual_step(clip):
    # The graphed step's plumbing (its own backward, Lightning's backward and zero_grad left out, clipping, the
    # optimiser, the scheduler and the step count Lightning's) on the CPU, where the step runs eagerly with a
    # warning: the same weights and learning rate as the usual run.
    _, reference, reference_lr = _fit(False, gradient_clip_val=clip)
    with pytest.warns(UserWarning, match="trains on cpu, not CUDA, so the training step runs eagerly"):
        module, got, lr = _fit(True, gradient_clip_val=clip)
    assert module._graphed is not None and module._graphed.calls == 5
    assert lr == pytest.approx(reference_lr) and lr < 2e-4  # the cosine schedule was stepped
    for a, b in zip(got, reference, strict=True):
        torch.testing.assert_close(a, b)


def test_cuda_graph_auto_is_off_on_the_cpu_without_a_word():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(val_dataloader|LeafSpec|num_workers).*")
        module, _, _ = _fit("auto", steps=2)
    assert module._graphed is None


def _fake_trainer(**kwargs):
    return SimpleNamespace(**{"world_size": 1, "precision": "bf16-mixed", "accumulate_grad_batches": 1, **kwargs})


@pytest.mark.parametrize("trainer, message", [
    (_fake_trainer(world_size=2), "it runs 2 processes"),
    (_fake_trainer(precision="16-mixed"), "precision 16-mixed"),
    (_fake_trainer(accumulate_grad_batches=4), "accumulate_grad_batches=4"),
])
def test_cuda_graph_true_refuses_what_it_cannot_capture_and_auto_steps_aside(monkeypatch, trainer, message):
    monkeypatch.setattr(RestorationModule, "trainer", property(lambda self: trainer))
    module = RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph=True)
    with pytest.raises(ValueError, match=f"model.cuda_graph=true cannot be used here: {message}"):
        module.on_fit_start()
    module = RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph="auto")
    module.on_fit_start()
    assert module._graphed is None and module.cuda_graph_blockers()


def test_cuda_graph_and_budget_arguments_are_checked():
    for bad in ("yes", 2):
        with pytest.raises(ValueError, match="cuda_graph must be one of"):
            RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph=bad)
    with pytest.raises(ValueError, match="cuda_graph_warmup"):
        RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph_warmup=1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="compile_memory_budget"):
            RestorationModule(RAT(**TINY), FocalRegionLoss(), compile_memory_budget=bad)
    assert RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph=1).cuda_graph is True


def test_compile_memory_budget_is_in_force_while_the_compiled_blocks_run(monkeypatch):
    seen = []

    def fake_compile(fn, **kwargs):
        def compiled(*args, **kw):
            seen.append(torch._functorch.config.activation_memory_budget)
            return fn(*args, **kw)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    module = RestorationModule(RAT(**TINY), FocalRegionLoss(), compile=True, compile_memory_budget=0.5)
    module.log = lambda *args, **kw: None
    module.configure_model()
    module.training_step(_batch(), 0)
    assert seen and set(seen) == {0.5}
    assert torch._functorch.config.activation_memory_budget == 1.0  # only inside the step
    seen.clear()
    module.validation_step(_batch(batch=1), 0)  # eager evaluation: no budget needed
    assert all(v == 1.0 for v in seen)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_lightning_fit_on_cuda_replays_the_step_and_trains_as_the_usual_step(precision):
    _, reference, _ = _fit(False, steps=6, accelerator="gpu", precision=precision)
    module, got, _ = _fit("auto", steps=6, accelerator="gpu", precision=precision)
    assert module._graphed is not None and module._graphed.captured, module._graphed and module._graphed.failed
    # Adam turns tiny gradient differences (atomic adds in the loss and attention backward) into updates of up to
    # lr per step where a gradient is near zero.
    tol = dict(rtol=2e-2, atol=2e-3) if precision == "bf16-mixed" else dict(rtol=1e-4, atol=1e-4)
    for a, b in zip(got, reference, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_step_replays_the_eager_gradients_on_cuda(precision):
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    net, loss = RAT(**TINY, region_impl="flex").cuda(), FocalRegionLoss()
    batches = [_batch(device="cuda", seed=s) for s in range(5)]
    step = GraphedBackward(_loss_fn(net, loss), list(net.parameters()), warmup=2)
    tol = dict(rtol=2e-2, atol=2e-3) if precision == "bf16" else dict(rtol=1e-4, atol=1e-5)
    for i, batch in enumerate(batches):
        with autocast:
            got = step(**batch)
        grads = [p.grad.clone() for p in net.parameters()]
        captured_grads = [p.grad for p in net.parameters()]
        value, expected = _reference_grads(net, loss, batch, autocast)
        for p, g in zip(net.parameters(), captured_grads, strict=True):
            p.grad = g  # the reference step released them; the graph still writes these
        assert step.captured == (i >= 2), step.failed
        torch.testing.assert_close(got, value, **tol)
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g, e, **tol)
    # Another batch size runs eagerly into the same gradient tensors; the graph replays after it.
    odd = _batch(batch=1, device="cuda", seed=9)
    with autocast:
        got = step(**odd)
    grads = [p.grad.clone() for p in net.parameters()]
    value, expected = _reference_grads(net, loss, odd, autocast)
    torch.testing.assert_close(got, value, **tol)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, **tol)


@pytest.mark.gpu
def test_a_step_that_waits_for_the_host_is_not_captured_and_trains_on():
    net, loss = RAT(**TINY, region_impl="packed").cuda(), FocalRegionLoss()  # packing reads region lengths
    step = GraphedBackward(_loss_fn(net, loss), list(net.parameters()), warmup=2)
    batch = _batch(device="cuda")
    step(**batch)
    with pytest.warns(UserWarning, match="cannot be captured as a CUDA graph .under torch.cuda.set_sync_debug_mode"):
        probed = step(**batch)  # the last warm-up step finds the synchronisation: no capture is tried
    value, _ = _reference_grads(net, loss, batch)
    torch.testing.assert_close(probed, value)
    step(**batch)
    assert not step.captured and step.calls == 3
    torch.rand(3, device="cuda")  # CUDA's random numbers still work


@pytest.mark.gpu
def test_a_failed_capture_leaves_cuda_usable_and_trains_on():
    net, loss = RAT(**TINY, region_impl="flex").cuda(), FocalRegionLoss()
    inner = _loss_fn(net, loss)

    def step_loss(**batch):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # not allowed while capturing, and not seen by the warm-up's check
        return inner(**batch)

    step = GraphedBackward(step_loss, list(net.parameters()), warmup=2)
    batch = _batch(device="cuda")
    step(**batch)
    step(**batch)
    with pytest.warns(UserWarning, match="cannot be captured as a CUDA graph"):
        got = step(**batch)
    assert not step.captured and step.failed
    torch.rand(3, device="cuda")  # a failed capture leaves the generator in capture mode unless reset
    value, _ = _reference_grads(net, loss, batch)
    torch.testing.assert_close(got, value)
    assert torch.isfinite(step(**batch))  # eager from now on
