"""region_impl=varlen (flash attention, one sequence per region) and the region_impl=auto table.

On the CPU the whole varlen path (layout, cu_seq, gathers, backward) runs with a reference per-sequence attention
in place of torch's CUDA-only ``varlen_attn``; the tests marked ``gpu`` run the real kernel in bf16 / fp16.
"""

import logging

import pytest
import torch

from helpers.compare import assert_same_network, assert_same_outputs_and_grads
from ratlit.models import RAT
from ratlit.models.region_attention import (
    AUTO_IMPL,
    REGION_IMPLS,
    auto_region_impl,
    build_region_layout,
    dense_region_attention,
    dispatch,
    flex,
    region_attention,
    region_sequences,
    varlen,
    wants_packed_layout,
)


def _partitions(n: int = 200) -> dict[str, torch.Tensor]:
    """Two items of ``n`` tokens each, per kind of partition (ids arbitrary, per item)."""
    g = torch.Generator().manual_seed(3)
    sizes = torch.tensor([n // 2, n // 4, n // 8, n // 16] + [1] * (n - n // 2 - n // 4 - n // 8 - n // 16))
    heavy = torch.repeat_interleave(torch.arange(len(sizes)) * 7 - 3, sizes)  # one half, a quarter, ... then dust
    return {
        "one region": torch.full((2, n), 4),
        "one token per region": torch.stack([torch.randperm(n, generator=g), torch.arange(n) * 5 - 90]),
        "heavy-tailed": torch.stack([heavy[torch.randperm(n, generator=g)], heavy.flip(0)]),
        "many small": torch.randint(0, n // 3, (2, n), generator=g) * 10**9,
    }


def _reference_varlen(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
    """``varlen_attn``'s contract written as a loop: attention within each sequence ``cu_seq[i]:cu_seq[i+1]``."""
    assert cu_seq_q.dtype == torch.int32 and cu_seq_q.device == q.device and cu_seq_k is cu_seq_q
    assert type(max_q) is int and max_q == max_k
    bounds = cu_seq_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0]
    assert max_q == max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    outs = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))  # [heads, n, d]
        outs.append(((qs @ ks.transpose(-1, -2)) * scale).softmax(-1).matmul(vs).transpose(0, 1))
    return torch.cat(outs)


@pytest.fixture
def reference_kernel(monkeypatch):
    """The varlen path on the CPU in float64: the reference above in place of flash attention's kernel."""
    calls = []

    def kernel(*args, **kwargs):
        calls.append(args[3])
        return _reference_varlen(*args, **kwargs)

    monkeypatch.setattr(varlen, "_kernel", lambda: kernel)
    monkeypatch.setattr(varlen, "varlen_unsupported", lambda q, v: None)
    return calls


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("case", list(_partitions()))
def test_region_sequences_are_the_layout_runs_and_the_order_is_a_permutation(case, packed):
    labels = _partitions()[case]
    layout = build_region_layout(labels, 16, packed=packed)
    cu_seq, max_len = layout.varlen_sequences()
    assert layout.varlen_sequences()[0] is cu_seq  # built once per layout
    lengths = torch.cat([torch.unique(item, return_counts=True)[1] for item in labels])
    assert cu_seq.dtype == torch.int32 and cu_seq.device == labels.device and type(max_len) is int
    assert cu_seq[0] == 0 and cu_seq[-1] == labels.numel() and max_len == int(lengths.max())
    assert sorted(torch.diff(cu_seq).tolist()) == sorted(lengths.tolist())
    for a, b in zip(cu_seq[:-1].tolist(), cu_seq[1:].tolist(), strict=True):  # each sequence is one region of one item
        rows = layout.order[a:b]
        assert len(set((rows // labels.shape[1]).tolist())) == 1 and labels.flatten()[rows].unique().numel() == 1
    assert torch.equal(layout.order[layout.inverse], torch.arange(labels.numel()))
    x = torch.randn(labels.numel(), 3)
    assert torch.equal(layout.from_layout(layout.to_layout(x)), x)


def test_region_sequences_of_no_rows():
    cu_seq, max_len = region_sequences(torch.zeros(0, dtype=torch.long))
    assert cu_seq.tolist() == [0] and max_len == 0


@pytest.mark.parametrize("case", list(_partitions()))
def test_varlen_path_equals_dense_forward_and_backward_in_float64(case, reference_kernel):
    labels = _partitions()[case]
    q, k, v = (torch.randn(2, 3, labels.shape[1], 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = region_attention(q, k, v, labels, 0.37, impl="varlen")
    assert_same_outputs_and_grads(out, dense_region_attention(q, k, v, labels, 0.37), (q, k, v))
    assert len(reference_kernel) == 1


def test_varlen_network_equals_dense_in_float64_with_one_layout_per_forward(reference_kernel, monkeypatch):
    built = []
    monkeypatch.setattr(varlen, "region_sequences", lambda run_id: built.append(1) or region_sequences(run_id))
    config = dict(width=8, num_groups=2, layers_per_group=2, num_heads=2, window_size=4, layer_scale_init=0.5,
                  zero_init_last=False)
    model = RAT(region_impl="varlen", **config).double()
    dense = RAT(region_impl="dense", mask_value=float("-inf"), **config).double()
    dense.load_state_dict(model.state_dict())
    assert not model.region_layout(torch.zeros(1, 16, 16, dtype=torch.long)).packed  # the sorted layout
    lq, regions = torch.randn(2, 1, 19, 21, dtype=torch.float64), torch.randint(0, 6, (2, 19, 21)) * 100 - 7
    assert_same_network(model, dense, lq, regions)
    assert len(built) == 1 and len(reference_kernel) == 4  # one layout, four R-MSA layers


def test_varlen_on_the_cpu_is_one_clear_error():
    labels = torch.randint(0, 3, (1, 20))
    q, k, v = (torch.randn(1, 2, 20, 8) for _ in range(3))
    with pytest.raises(ValueError, match=r"region_impl='varlen' needs CUDA.*on cpu.*use region_impl=auto"):
        region_attention(q, k, v, labels, impl="varlen")
    model = RAT(width=8, num_groups=1, layers_per_group=1, num_heads=2, region_impl="varlen")
    with pytest.raises(ValueError, match="region_impl='varlen' needs CUDA"):
        model(torch.rand(1, 1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.long))


def test_varlen_unsupported_names_what_is_missing():
    cpu = torch.zeros(4, 2, 8)
    assert "on cpu" in varlen.varlen_unsupported(cpu, cpu)
    meta = torch.empty(4, 2, 8, device="meta")  # a stand-in device type that is not CUDA
    assert "on meta" in varlen.varlen_unsupported(meta, meta)


def test_auto_table_entries_are_known_kernels_that_run_on_one_layout_per_device():
    assert set(AUTO_IMPL.values()) <= set(REGION_IMPLS) - {"auto"}
    for device_type in {d for d, _ in AUTO_IMPL}:
        kinds = {impl == "packed" for (d, _), impl in AUTO_IMPL.items() if d == device_type}
        assert len(kinds) == 1, device_type  # the layout is built before the dtype is known
    assert all(dtype in varlen.VARLEN_DTYPES for (_, dtype), impl in AUTO_IMPL.items() if impl == "varlen")
    assert {impl for (d, _), impl in AUTO_IMPL.items() if d == "cpu"} == {"packed"}
    # Measured on an H100 / H200: flex in fp32 and bf16. varlen is not measured yet: flex until it is.
    assert AUTO_IMPL[("cuda", torch.float32)] == AUTO_IMPL[("cuda", torch.bfloat16)] == "flex"
    assert auto_region_impl(torch.device("cpu"), torch.bfloat16) == "packed"
    assert auto_region_impl(torch.device("mps")) == "packed"  # a device the table does not list
    assert wants_packed_layout("auto", torch.device("cpu")) and not wants_packed_layout("auto", torch.device("cuda"))
    assert not wants_packed_layout("varlen", torch.device("cpu"))


def test_auto_falls_back_when_a_kernel_is_missing(monkeypatch):
    monkeypatch.setitem(AUTO_IMPL, ("cuda", torch.float16), "varlen")
    monkeypatch.setattr(flex, "_FLEX_BROKEN", set())
    monkeypatch.setattr(dispatch, "varlen_available", lambda: True)
    assert auto_region_impl(torch.device("cuda"), torch.float16) == "varlen"
    monkeypatch.setattr(dispatch, "varlen_available", lambda: False)  # torch < 2.10
    assert auto_region_impl(torch.device("cuda"), torch.float16) == "flex"
    monkeypatch.setattr(flex, "_FLEX_BROKEN", {"cuda"})  # FlexAttention failed in this process
    assert auto_region_impl(torch.device("cuda"), torch.float16) == "packed"


def test_auto_with_varlen_in_the_table_falls_back_for_a_head_dim_flash_lacks(monkeypatch, reference_kernel):
    # As on a GPU with varlen in the table: inputs flash attention cannot take (a stand-in reason) take flex.
    monkeypatch.setattr(dispatch, "auto_region_impl", lambda device, dtype=None: "varlen")
    monkeypatch.setattr(dispatch, "varlen_unsupported", lambda q, v: "head dim 4")
    monkeypatch.setattr(dispatch, "flex_usable", lambda device_type: False)  # (no flex backward on the CPU)
    labels = _partitions(40)["many small"]
    q, k, v = (torch.randn(2, 2, 40, 4, dtype=torch.float64) for _ in range(3))
    out = region_attention(q, k, v, labels, 0.5)
    torch.testing.assert_close(out, dense_region_attention(q, k, v, labels, 0.5), atol=1e-12, rtol=1e-12)
    assert reference_kernel == []  # the varlen kernel never ran
    monkeypatch.setattr(dispatch, "varlen_unsupported", lambda q, v: None)
    torch.testing.assert_close(region_attention(q, k, v, labels, 0.5), out, atol=1e-12, rtol=1e-12)
    assert len(reference_kernel) == 1


def test_auto_choice_is_logged_once_per_device_and_dtype(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_AUTO_LOGGED", set())
    labels = torch.randint(0, 3, (1, 20))
    q, k, v = (torch.randn(1, 2, 20, 8) for _ in range(3))
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        for _ in range(3):
            region_attention(q, k, v, labels)
        auto_region_impl(torch.device("cpu"))  # the layout's question (no dtype): not a kernel choice, not logged
        region_attention(q.double(), k.double(), v.double(), labels)
    messages = [r.getMessage() for r in caplog.records if r.name == dispatch.__name__]
    assert messages == ["region_impl=auto on cpu float32 runs packed (ratlit.models.region_attention.dispatch."
                        "AUTO_IMPL)", "region_impl=auto on cpu float64 runs packed (ratlit.models.region_attention."
                        "dispatch.AUTO_IMPL)"]


# --- on a GPU: torch's varlen_attn itself -------------------------------------------------------------------


def _check_cuda_against_dense(labels, dtype, heads=2, dim=32):
    labels = labels.cuda()
    q, k, v = (torch.randn(labels.shape[0], heads, labels.shape[1], dim, device="cuda", dtype=dtype,
                           requires_grad=True) for _ in range(3))
    out = region_attention(q, k, v, labels, 0.3, impl="varlen")
    assert out.dtype == dtype
    # The reference in float32 on float32 leaves, so its gradients stay float32 (not rounded to q's dtype).
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = dense_region_attention(q32, k32, v32, labels, 0.3)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    grads_ref = torch.autograd.grad(ref, (q32, k32, v32), grad_out.float())
    for name, g, g_ref in zip("qkv", grads, grads_ref, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), g_ref, atol=5 * tol, rtol=5 * tol, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(_partitions()))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_matches_dense_on_cuda_forward_and_backward(dtype, case):
    _check_cuda_against_dense(_partitions(600)[case], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_on_camera_partitions_and_in_the_network_on_cuda(dtype):
    import numpy as np
    from skimage import data, segmentation

    image = data.camera()[::4, ::4] / 255.0  # 128 x 128
    for labels in (segmentation.slic(image, n_segments=60, channel_axis=None),
                   segmentation.felzenszwalb(image, scale=400, min_size=50)):
        _check_cuda_against_dense(torch.from_numpy(np.asarray(labels, dtype=np.int64)).reshape(1, -1), dtype)
    config = dict(width=16, num_groups=2, layers_per_group=1, num_heads=2, layer_scale_init=0.5, zero_init_last=False)
    model = RAT(region_impl="varlen", **config).cuda()  # q, k, v: strided slices of one qkv tensor
    reference = RAT(region_impl="packed", **config).cuda()
    reference.load_state_dict(model.state_dict())
    lq, regions = torch.rand(2, 1, 40, 56, device="cuda"), torch.randint(0, 7, (2, 40, 56), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out, expected = model(lq, regions), reference(lq, regions)
    torch.testing.assert_close(out.float(), expected.float(), atol=3e-2, rtol=3e-2)
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="float16 / bfloat16"):  # fp32 on CUDA: no kernel, one clear error
        model(lq, regions)
