"""Comparing a computation with its reference, forward and backward (shared by the attention and network tests)."""

import torch


def assert_same_outputs_and_grads(out, ref, inputs, tol=1e-12):
    """``out`` equals ``ref``, and so do their gradients with respect to ``inputs`` for one random output grad."""
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(out)
    grads, grads_ref = torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(ref, inputs, grad_out)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=tol, rtol=tol)


def assert_same_network(model, reference, lq, regions, tol=1e-10):
    """Two networks with the same parameters give the same output and parameter gradients on ``(lq, regions)``."""
    out, expected = model(lq, regions), reference(lq, regions)
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=tol, rtol=tol, msg=name)
