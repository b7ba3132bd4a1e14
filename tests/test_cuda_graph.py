"""CUDA-graph training (model.cuda_graph): the same gradients and the same run as the eager step."""

import contextlib
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ratlit.cuda_graph import GraphedBackward
from ratlit.losses import FocalRegionLoss
from ratlit.models import RAT
from ratlit.module import RestorationModule
from ratlit.validation import finite_checks

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


def _reference_grads(net, loss, batch, autocast=contextlib.nullcontext()):
    net.zero_grad(set_to_none=True)
    with autocast:
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
    for batch, (value, grads) in zip(batches, expected):
        got = step(**batch)
        assert torch.equal(got, value)
        for p, g in zip(net.parameters(), grads):
            torch.testing.assert_close(p.grad, g)  # written, not added to the last step's
    assert not step.captured and step.calls == 3
    with pytest.raises(ValueError, match="warmup must be >= 2"):
        GraphedBackward(_loss_fn(net, loss), list(net.parameters()), warmup=1)


def _fit(cuda_graph: bool, steps: int = 5) -> tuple[list[torch.Tensor], float]:
    torch.manual_seed(0)
    module = RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph=cuda_graph, cuda_graph_warmup=2)
    data = [_batch(seed=s) for s in range(steps)]
    loader = DataLoader(data, batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    assert trainer.global_step == steps
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    return [p.detach().clone() for p in module.parameters()], float(lr)


def test_cuda_graph_run_on_the_cpu_trains_as_the_automatic_step():
    # The manual-optimisation path (optimiser, scheduler and step count outside the graph) on the CPU,
    # where the step runs eagerly with a warning: the same weights and learning rate as the usual run.
    reference, reference_lr = _fit(False)
    with pytest.warns(UserWarning, match="no CUDA device"):
        got, lr = _fit(True)
    assert lr == pytest.approx(reference_lr) and lr < 2e-4  # the cosine schedule was stepped
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("trainer, message", [
    (SimpleNamespace(world_size=2, precision="32-true"), "trains on one GPU"),
    (SimpleNamespace(world_size=1, precision="16-mixed"), "32-true or bf16-mixed"),
])
def test_cuda_graph_refuses_what_it_cannot_capture(monkeypatch, trainer, message):
    monkeypatch.setattr(RestorationModule, "trainer", property(lambda self: trainer))
    module = RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph=True)
    with pytest.raises(ValueError, match=message):
        module.on_fit_start()
    with pytest.raises(ValueError, match="cuda_graph_warmup"):
        RestorationModule(RAT(**TINY), FocalRegionLoss(), cuda_graph_warmup=0)


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
        for p, g in zip(net.parameters(), captured_grads):
            p.grad = g  # the reference step released them; the graph still writes these
        assert step.captured == (i >= 2), step.failed
        torch.testing.assert_close(got, value, **tol)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, **tol)
    # Another batch size runs eagerly into the same gradient tensors; the graph replays after it.
    odd = _batch(batch=1, device="cuda", seed=9)
    with autocast:
        got = step(**odd)
    grads = [p.grad.clone() for p in net.parameters()]
    value, expected = _reference_grads(net, loss, odd, autocast)
    torch.testing.assert_close(got, value, **tol)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, **tol)


@pytest.mark.gpu
def test_a_step_that_waits_for_the_host_is_not_captured_and_trains_on():
    net, loss = RAT(**TINY, region_impl="sparse").cuda(), FocalRegionLoss()  # packing reads region lengths
    step = GraphedBackward(_loss_fn(net, loss), list(net.parameters()), warmup=2)
    batch = _batch(device="cuda")
    step(**batch)
    with pytest.warns(UserWarning, match="cannot be captured as a CUDA graph .it waits for the GPU"):
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
