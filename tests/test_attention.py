import warnings

import pytest
import torch

from helpers.compare import assert_same_outputs_and_grads
from ratlit.models.attention import (
    MultiHeadSelfAttention,
    attention_scale,
    region_attention,
    window_partition,
    window_reverse,
)
from ratlit.models.region_attention import dense_region_attention


def _qkv(batch, heads, n, d, dtype=torch.float64):
    return [torch.randn(batch, heads, n, d, dtype=dtype, requires_grad=True) for _ in range(3)]


def _awkward_labels():
    g = torch.Generator().manual_seed(1)
    n = 131  # not a multiple of any block size
    return {
        "one region": torch.full((2, n), 5),
        "every token its own": torch.stack([torch.randperm(n, generator=g), torch.arange(n) * 3 - 200]),
        "large non-contiguous ids": torch.randint(0, 4, (2, n), generator=g) * 10**12 - 7,
        "different per item": torch.stack([torch.randint(0, 3, (n,), generator=g),
                                           torch.randint(0, 40, (n,), generator=g)]),
        "one huge region + dust": torch.where(torch.rand(2, n, generator=g) < 0.8, 0, torch.arange(n) + 1),
    }


@pytest.mark.parametrize("case", list(_awkward_labels()))
@pytest.mark.parametrize("block_size", [1, 16, 64, 128])
def test_packed_matches_dense_forward_and_backward(case, block_size):
    labels = _awkward_labels()[case]
    q, k, v = _qkv(2, 3, labels.shape[1], 8)
    scale = 0.37
    out = region_attention(q, k, v, labels, scale, block_size=block_size, impl="packed")
    ref = dense_region_attention(q, k, v, labels, scale)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    grads_ref = torch.autograd.grad(ref, (q, k, v), grad_out)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=0)


def test_float32_default_scale_and_value_dim():
    labels = torch.randint(0, 6, (3, 70))
    q, k = (torch.randn(3, 2, 70, 16) for _ in range(2))
    v = torch.randn(3, 2, 70, 5)  # values may have another width
    out = region_attention(q, k, v, labels)
    ref = dense_region_attention(q, k, v, labels, scale=16**-0.5)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_one_region_is_global_attention():
    q, k, v = (torch.randn(2, 4, 50, 8) for _ in range(3))
    out = region_attention(q, k, v, torch.zeros(2, 50, dtype=torch.long), block_size=16)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["auto", "packed", "flex"])
@pytest.mark.parametrize("batch, tokens", [(0, 16), (2, 0)])
def test_no_tokens_give_an_empty_result_with_gradients(impl, batch, tokens):
    q, k, v = (torch.randn(batch, 2, tokens, 4, requires_grad=True) for _ in range(3))
    out = region_attention(q, k, v, torch.zeros(batch, tokens, dtype=torch.long), impl=impl)
    assert out.shape == (batch, 2, tokens, 4)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in (q, k, v))


def test_tokens_alone_in_their_region_return_their_value():
    q, k, v = (torch.randn(1, 2, 30, 4) for _ in range(3))
    out = region_attention(q, k, v, torch.arange(30)[None])
    torch.testing.assert_close(out, v)


def test_finite_lambda_matches_minus_infinity_in_float32():
    labels = torch.randint(0, 5, (2, 64))
    q, k, v = (torch.randn(2, 2, 64, 8) for _ in range(3))
    lam = dense_region_attention(q, k, v, labels, 0.5, mask_value=-1000.0)
    torch.testing.assert_close(region_attention(q, k, v, labels, 0.5), lam, atol=1e-6, rtol=0)


def test_flex_path_forward_matches_dense():
    labels = _awkward_labels()["different per item"]
    q, k, v = (t.detach().float() for t in _qkv(2, 2, labels.shape[1], 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is unfused
        out = region_attention(q, k, v, labels, 0.3, impl="flex")
    torch.testing.assert_close(out, dense_region_attention(q, k, v, labels, 0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.zeros(2, 10), "integer dtype"),
        (torch.zeros(2, 10, dtype=torch.bool), "integer dtype"),
        (torch.zeros(2, 9, dtype=torch.long), r"labels must have shape \[2, 10\]"),
        (torch.zeros(3, 10, dtype=torch.long), "batch size"),
        ([[0] * 10] * 2, "torch.Tensor"),
    ],
)
def test_bad_labels_name_the_argument(labels, match):
    q = torch.randn(2, 1, 10, 4)
    with pytest.raises(ValueError, match=match):
        region_attention(q, q, q, labels)


def test_bad_arguments():
    q = torch.randn(2, 1, 10, 4)
    labels = torch.zeros(2, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="impl"):
        region_attention(q, q, q, labels, impl="fast")
    with pytest.raises(ValueError, match="q, k, v shapes"):
        region_attention(q, torch.randn(2, 1, 11, 4), q, labels)
    with pytest.raises(ValueError, match="scale_by"):
        attention_scale(64, 8, "sqrt")


def test_scale_choices():
    assert attention_scale(256, 8, "heads") == pytest.approx(8**-0.5)
    assert attention_scale(256, 8, "head_dim") == pytest.approx(32**-0.5)


def test_window_partition_roundtrip():
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 3)
    torch.testing.assert_close(window_reverse(windows, 4, 2, 8, 12), x)
    torch.testing.assert_close(windows[1], x[0, :4, 4:8].reshape(16, 3))


def test_wmsa_equals_rmsa_on_window_labels():
    torch.manual_seed(0)
    wmsa = MultiHeadSelfAttention(16, num_heads=2, attention="wmsa", window_size=4)
    rmsa = MultiHeadSelfAttention(16, num_heads=2, attention="rmsa", window_size=4)
    rmsa.load_state_dict(wmsa.state_dict())
    x = torch.randn(2, 8, 12, 16)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(12), indexing="ij")
    labels = ((rows // 4) * 3 + cols // 4).expand(2, 8, 12)
    torch.testing.assert_close(rmsa(x, labels), wmsa(x), atol=1e-5, rtol=0)


def test_msa_equals_rmsa_on_one_region():
    msa = MultiHeadSelfAttention(16, num_heads=4, attention="msa")
    rmsa = MultiHeadSelfAttention(16, num_heads=4, attention="rmsa")
    rmsa.load_state_dict(msa.state_dict())
    x = torch.randn(2, 4, 4, 16)
    torch.testing.assert_close(rmsa(x, torch.full((2, 4, 4), 9)), msa(x), atol=1e-5, rtol=0)


def test_dense_impl_module_matches_packed():
    a = MultiHeadSelfAttention(16, num_heads=2, attention="rmsa", region_impl="dense")
    b = MultiHeadSelfAttention(16, num_heads=2, attention="rmsa", region_impl="packed")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 8, 16)
    labels = torch.randint(0, 4, (1, 8, 8))
    torch.testing.assert_close(a(x, labels), b(x, labels), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="labels"):
        b(x)


@pytest.mark.parametrize("case", list(_awkward_labels()))
def test_flex_block_mask_covers_exactly_the_needed_blocks(case):
    from ratlit.models.region_attention import region_block_mask

    labels = _awkward_labels()[case]  # 131 tokens: 5 blocks of 32, the last partial
    sorted_labels, _ = labels.sort(dim=1)
    mask = region_block_mask(sorted_labels, block=32)
    n_blocks = 5
    same = sorted_labels[:, :, None] == sorted_labels[:, None, :]

    def blocks(counts: torch.Tensor, indices: torch.Tensor, b: int) -> set:
        return {(i, int(j)) for i in range(n_blocks) for j in indices[b, 0, i, : int(counts[b, 0, i])]}

    for b in range(labels.shape[0]):
        needed = {(int(i) // 32, int(j) // 32) for i, j in same[b].nonzero()}
        partial = blocks(mask.kv_num_blocks, mask.kv_indices, b)
        full = blocks(mask.full_kv_num_blocks, mask.full_kv_indices, b)
        assert not partial & full
        assert needed <= partial | full  # exact: nothing the attention needs is skipped
        assert len(partial | full) <= len(needed) + n_blocks  # sparse: at most the run ends' extra blocks
        for i, j in full:  # full means every query of the block may see every key of the block
            assert same[b, i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32].all()
            assert (i + 1) * 32 <= labels.shape[1] and (j + 1) * 32 <= labels.shape[1]
    if case == "every token its own":
        assert (mask.kv_num_blocks == 1).all() and (mask.full_kv_num_blocks == 0).all()


def test_flex_block_mask_lists_the_inside_of_large_regions_as_full():
    from ratlit.models.region_attention import region_block_mask

    sorted_labels = torch.repeat_interleave(torch.tensor([0, 1, 2]), torch.tensor([10, 300, 74]))[None]
    mask = region_block_mask(sorted_labels, block=32)  # region 1: tokens 10-309
    full = {(i, int(j)) for i in range(12)
            for j in mask.full_kv_indices[0, 0, i, : int(mask.full_kv_num_blocks[0, 0, i])]}
    inside = [range(1, 9), range(10, 12)]  # blocks 1-8 (tokens 32-287) in region 1, 10-11 (320-383) in region 2
    assert full == {(i, j) for blocks in inside for i in blocks for j in blocks}


def test_flex_path_forward_matches_dense_on_large_regions():
    labels = _large_region_labels()
    q, k, v = (torch.randn(2, 2, labels.shape[1], 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is unfused
        out = region_attention(q, k, v, labels, 0.3, impl="flex")
    torch.testing.assert_close(out, dense_region_attention(q, k, v, labels, 0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(_awkward_labels()))
@pytest.mark.parametrize("block_size, packed",
                         [(1, True), (7, True), (64, True), (128, True), (7, False), (128, False)])
def test_prebuilt_layout_is_exact_in_float64(case, block_size, packed):
    from ratlit.models.region_attention import build_region_layout

    labels = _awkward_labels()[case]
    layout = build_region_layout(labels, block_size, packed=packed)  # not packed: the packed path packs its rows
    q, k, v = _qkv(2, 3, labels.shape[1], 8)
    out = region_attention(q, k, v, layout, 0.37, impl="packed")
    assert_same_outputs_and_grads(out, dense_region_attention(q, k, v, labels, 0.37), (q, k, v))
    # The layout is a permutation whose regions are contiguous runs, small ones first, each once.
    assert torch.equal(layout.order[layout.inverse], torch.arange(labels.numel()))
    assert (layout.run_id.diff() >= 0).all()
    flat = (labels + 0 * labels).flatten()
    item = torch.arange(labels.numel()) // labels.shape[1]
    keys = torch.stack([item[layout.order], flat[layout.order]], 1)
    runs = torch.unique_consecutive(keys, dim=0)
    assert runs.shape[0] == int(layout.run_id[-1]) + 1  # no region split in two runs
    assert layout.packed == packed and (layout.block_index is None) == (not packed or layout.small_rows == 0)


@pytest.mark.parametrize("case", list(_awkward_labels()))
@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_module_token_path_matches_dense_forward_and_backward(case, block_size):
    # The layer's own path: qkv gathered once into the packed blocks, large regions as split parts.
    from ratlit.models.region_attention import build_region_layout

    labels = _awkward_labels()[case]
    torch.manual_seed(0)
    sparse = MultiHeadSelfAttention(16, num_heads=2, attention="rmsa", region_impl="packed").double()
    dense = MultiHeadSelfAttention(16, num_heads=2, region_impl="dense", mask_value=float("-inf")).double()
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, labels.shape[1], 1, 16, dtype=torch.float64, requires_grad=True)
    out = sparse(x, build_region_layout(labels, block_size))
    ref = dense(x, labels[..., None])
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *sparse.parameters()], grad)
    want = torch.autograd.grad(ref, [x, *dense.parameters()], grad)
    for g, g_ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("tokens, batch", [(16, 3), (64, 3), (65, 3), (150, 2), (150, 40)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_kernel_choice_is_invisible(tokens, batch, masked):
    # The CPU's matmul form (short sequences, small score tensors) and SDPA give the same values and gradients.
    from ratlit.models.region_attention import attention, matmul_form_is_faster

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 8, tokens, 8, generator=g, requires_grad=True) for _ in range(3))
    expected = tokens <= 64 or batch * 8 * tokens * tokens * 4 <= 8 * 2**20
    assert matmul_form_is_faster(q, training=True) == expected
    assert matmul_form_is_faster(q, training=False) == (tokens <= 32)
    assert not matmul_form_is_faster(q.bfloat16(), training=True)
    ids = torch.randint(0, 3, (batch, 1, tokens), generator=g)
    mask = ids[..., :, None] == ids[..., None, :] if masked else None
    out = attention(q, k, v, 0.4, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v, 0.4, mask), ref, atol=1e-5, rtol=1e-5)


def test_packed_block_size_by_device():
    from ratlit.models.region_attention import build_region_layout, packed_block_size

    assert packed_block_size(torch.device("cpu")) == 64 and packed_block_size(torch.device("cuda")) == 128
    assert build_region_layout(torch.zeros(1, 10, dtype=torch.long)).block_size == 64


def test_layout_reused_across_calls_and_labels_rejected_when_mismatched():
    from ratlit.models.region_attention import build_region_layout

    labels = torch.randint(0, 9, (2, 40))
    layout = build_region_layout(labels)
    q, k, v = (torch.randn(2, 2, 40, 4) for _ in range(3))
    torch.testing.assert_close(region_attention(q, k, v, layout), region_attention(q, k, v, labels))
    with pytest.raises(ValueError, match="labels must have shape"):
        region_attention(torch.randn(2, 2, 41, 4), torch.randn(2, 2, 41, 4), torch.randn(2, 2, 41, 4), layout)
    with pytest.raises(ValueError, match="block_size"):
        build_region_layout(labels, 0)


def test_module_accepts_a_prebuilt_layout():
    from ratlit.models.region_attention import build_region_layout

    attn = MultiHeadSelfAttention(16, num_heads=2, attention="rmsa", region_impl="packed").double()
    x = torch.randn(2, 6, 5, 16, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 6, 5))
    dense = MultiHeadSelfAttention(16, num_heads=2, region_impl="dense", mask_value=float("-inf")).double()
    dense.load_state_dict(attn.state_dict())
    layout = build_region_layout(labels.reshape(2, -1))
    torch.testing.assert_close(attn(x, layout), dense(x, labels), atol=1e-12, rtol=1e-12)


def test_auto_impl_by_device_and_precision():
    from ratlit.models.region_attention import auto_region_impl

    assert auto_region_impl(torch.device("cpu")) == "packed"
    assert auto_region_impl(torch.device("cuda")) == "flex"  # fastest on an H200, in bf16 and fp32


def _large_region_labels() -> torch.Tensor:
    """Two items of 512 tokens: regions of 300, 5, 140 and 67 tokens (full FlexAttention blocks inside)."""
    labels = torch.repeat_interleave(torch.tensor([3, 0, 7, 1]), torch.tensor([300, 5, 140, 67]))[None].repeat(2, 1)
    labels[1] = labels[1].flip(0)
    return labels


@pytest.mark.gpu
@pytest.mark.parametrize("block", [128, 64])
@pytest.mark.parametrize("case", ["awkward", "large regions"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_matches_dense_on_cuda_forward_and_backward(dtype, case, block, monkeypatch):
    from ratlit.models.region_attention import auto_region_impl, flex

    monkeypatch.setattr(flex, "FLEX_BLOCK", block)
    labels = (_awkward_labels()["different per item"] if case == "awkward" else _large_region_labels()).cuda()
    q, k, v = (torch.randn(2, 2, labels.shape[1], 32, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    out = region_attention(q, k, v, labels, 0.3, impl="flex")
    ref = dense_region_attention(q, k, v, labels, 0.3)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(out)
    grads, grads_ref = torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(ref, (q, k, v), grad_out)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=5 * tol, rtol=5 * tol)
    assert auto_region_impl(q.device) == "flex"


def test_failed_flex_falls_back_to_the_packed_path_on_a_sorted_layout(monkeypatch):
    from ratlit.models.region_attention import build_region_layout, dispatch, flex

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(dispatch, "flex_tokens", broken)
    monkeypatch.setattr(flex, "_FLEX_BROKEN", set())
    monkeypatch.setattr(dispatch, "auto_region_impl", lambda device, dtype=None: "flex")  # as on CUDA
    labels = _awkward_labels()["different per item"]
    layout = build_region_layout(labels, packed=False)
    q, k, v = _qkv(2, 2, labels.shape[1], 8)
    with pytest.warns(UserWarning, match="FlexAttention failed"):
        out = region_attention(q, k, v, layout, 0.3)
    torch.testing.assert_close(out, dense_region_attention(q, k, v, labels, 0.3), atol=1e-12, rtol=1e-12)


@pytest.mark.gpu
def test_flex_layout_and_block_mask_never_wait_for_the_gpu():
    from ratlit.models import RAT

    model = RAT(width=8, num_groups=1, layers_per_group=1, num_heads=2, region_impl="flex").cuda()
    regions = torch.randint(0, 9, (2, 37, 45), device="cuda") * 1000 - 5
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layout = model.region_layout(regions, pad_h=-37 % 16, pad_w=-45 % 16)
        layout.flex_mask()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not layout.packed


def test_sparse_is_an_alias_of_packed_and_unknown_impls_are_named():
    from ratlit.models import RAT

    assert MultiHeadSelfAttention(16, num_heads=2, region_impl="sparse").region_impl == "packed"
    assert RAT(width=8, num_groups=1, layers_per_group=1, num_heads=2, region_impl="sparse").region_impl == "packed"
    q, k, v = _qkv(1, 2, 20, 8)
    labels = torch.randint(0, 3, (1, 20))
    torch.testing.assert_close(region_attention(q, k, v, labels, impl="sparse"),
                               dense_region_attention(q, k, v, labels))
    with pytest.raises(ValueError, match="region_impl must be one of"):
        MultiHeadSelfAttention(16, num_heads=2, region_impl="blocky")
    with pytest.raises(ValueError, match="attention must be one of"):
        MultiHeadSelfAttention(16, num_heads=2, attention="rmsa2")
