import warnings

import pytest
import torch

from ratlit.models.attention import (
    MultiHeadSelfAttention,
    attention_scale,
    dense_region_attention,
    region_attention,
    window_partition,
    window_reverse,
)


def _qkv(batch, heads, n, d, dtype=torch.float64):
    return [torch.randn(batch, heads, n, d, dtype=dtype, requires_grad=True) for _ in range(3)]


def _awkward_labels():
    g = torch.Generator().manual_seed(1)
    n = 131  # not a multiple of any block size
    return {
        "one region": torch.full((2, n), 5),
        "every token its own": torch.stack([torch.randperm(n, generator=g), torch.arange(n) * 3 - 200]),
        "large non-contiguous ids": torch.randint(0, 4, (2, n), generator=g) * 10**12 - 7,
        "different per item": torch.stack([torch.randint(0, 3, (n,), generator=g), torch.randint(0, 40, (n,), generator=g)]),
        "one huge region + dust": torch.where(torch.rand(2, n, generator=g) < 0.8, 0, torch.arange(n) + 1),
    }


@pytest.mark.parametrize("case", list(_awkward_labels()))
@pytest.mark.parametrize("block_size", [1, 16, 64, 128])
def test_sparse_matches_dense_forward_and_backward(case, block_size):
    labels = _awkward_labels()[case]
    q, k, v = _qkv(2, 3, labels.shape[1], 8)
    scale = 0.37
    out = region_attention(q, k, v, labels, scale, block_size=block_size, impl="sparse")
    ref = dense_region_attention(q, k, v, labels, scale)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    grads_ref = torch.autograd.grad(ref, (q, k, v), grad_out)
    for g, g_ref in zip(grads, grads_ref):
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
    wmsa = MultiHeadSelfAttention(16, num_heads=2, mode="wmsa", window_size=4)
    rmsa = MultiHeadSelfAttention(16, num_heads=2, mode="rmsa", window_size=4)
    rmsa.load_state_dict(wmsa.state_dict())
    x = torch.randn(2, 8, 12, 16)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(12), indexing="ij")
    labels = ((rows // 4) * 3 + cols // 4).expand(2, 8, 12)
    torch.testing.assert_close(rmsa(x, labels), wmsa(x), atol=1e-5, rtol=0)


def test_msa_equals_rmsa_on_one_region():
    msa = MultiHeadSelfAttention(16, num_heads=4, mode="msa")
    rmsa = MultiHeadSelfAttention(16, num_heads=4, mode="rmsa")
    rmsa.load_state_dict(msa.state_dict())
    x = torch.randn(2, 4, 4, 16)
    torch.testing.assert_close(rmsa(x, torch.full((2, 4, 4), 9)), msa(x), atol=1e-5, rtol=0)


def test_dense_impl_module_matches_sparse():
    a = MultiHeadSelfAttention(16, num_heads=2, mode="rmsa", region_impl="dense")
    b = MultiHeadSelfAttention(16, num_heads=2, mode="rmsa", region_impl="sparse")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 8, 16)
    labels = torch.randint(0, 4, (1, 8, 8))
    torch.testing.assert_close(a(x, labels), b(x, labels), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="labels"):
        b(x)


@pytest.mark.parametrize("case", list(_awkward_labels()))
def test_flex_block_mask_covers_exactly_the_needed_blocks(case):
    from ratlit.models.attention import region_block_mask

    labels = _awkward_labels()[case]  # 131 tokens: 5 blocks of 32, the last partial
    sorted_labels, _ = labels.sort(dim=1)
    mask = region_block_mask(sorted_labels, block=32)
    n_blocks = 5
    same = sorted_labels[:, :, None] == sorted_labels[:, None, :]
    for b in range(labels.shape[0]):
        needed = {(int(i) // 32, int(j) // 32) for i, j in same[b].nonzero()}
        listed = {(i, int(j)) for i in range(n_blocks)
                  for j in mask.kv_indices[b, 0, i, : int(mask.kv_num_blocks[b, 0, i])]}
        assert needed <= listed  # exact: nothing the attention needs is skipped
        assert len(listed) <= len(needed) + n_blocks  # sparse: at most the run ends' extra blocks
    if case == "every token its own":
        assert (mask.kv_num_blocks == 1).all()


@pytest.mark.parametrize("case", list(_awkward_labels()))
@pytest.mark.parametrize("block_size", [1, 7, 64, 128])
def test_prebuilt_layout_is_exact_in_float64(case, block_size):
    from ratlit.models.attention import build_region_layout

    labels = _awkward_labels()[case]
    layout = build_region_layout(labels, block_size)
    q, k, v = _qkv(2, 3, labels.shape[1], 8)
    out = region_attention(q, k, v, layout, 0.37, impl="sparse")
    ref = dense_region_attention(q, k, v, labels, 0.37)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad_out = torch.randn_like(out)
    for g, g_ref in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(ref, (q, k, v), grad_out)):
        torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-12)
    # The layout is a permutation whose regions are contiguous runs, small ones first, each once.
    assert torch.equal(layout.order[layout.inverse], torch.arange(labels.numel()))
    assert (layout.run_id.diff() >= 0).all()
    flat = (labels + 0 * labels).flatten()
    item = torch.arange(labels.numel()) // labels.shape[1]
    keys = torch.stack([item[layout.order], flat[layout.order]], 1)
    runs = torch.unique_consecutive(keys, dim=0)
    assert runs.shape[0] == int(layout.run_id[-1]) + 1  # no region split in two runs


def test_layout_reused_across_calls_and_labels_rejected_when_mismatched():
    from ratlit.models.attention import build_region_layout

    labels = torch.randint(0, 9, (2, 40))
    layout = build_region_layout(labels)
    q, k, v = (torch.randn(2, 2, 40, 4) for _ in range(3))
    torch.testing.assert_close(region_attention(q, k, v, layout), region_attention(q, k, v, labels))
    with pytest.raises(ValueError, match="labels must have shape"):
        region_attention(torch.randn(2, 2, 41, 4), torch.randn(2, 2, 41, 4), torch.randn(2, 2, 41, 4), layout)
    with pytest.raises(ValueError, match="block_size"):
        build_region_layout(labels, 0)


def test_module_accepts_a_prebuilt_layout():
    from ratlit.models.attention import build_region_layout

    attn = MultiHeadSelfAttention(16, num_heads=2, mode="rmsa", region_impl="sparse").double()
    x = torch.randn(2, 6, 5, 16, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 6, 5))
    dense = MultiHeadSelfAttention(16, num_heads=2, mode="rmsa", region_impl="dense", mask_value=float("-inf")).double()
    dense.load_state_dict(attn.state_dict())
    layout = build_region_layout(labels.reshape(2, -1))
    torch.testing.assert_close(attn(x, layout), dense(x, labels), atol=1e-12, rtol=1e-12)


def test_auto_impl_by_device_and_precision():
    from ratlit.models.attention import auto_region_impl

    assert auto_region_impl(torch.device("cpu"), torch.bfloat16) == "sparse"
    assert auto_region_impl(torch.device("cpu"), torch.float32) == "sparse"
    assert auto_region_impl(torch.device("cuda"), torch.float32) == "sparse"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_matches_dense_on_cuda_forward_and_backward(dtype):
    from ratlit.models.attention import auto_region_impl

    labels = _awkward_labels()["different per item"].cuda()
    q, k, v = (torch.randn(2, 2, labels.shape[1], 32, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    out = region_attention(q, k, v, labels, 0.3, impl="flex")
    ref = dense_region_attention(q, k, v, labels, 0.3)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(out)
    for g, g_ref in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(ref, (q, k, v), grad_out)):
        torch.testing.assert_close(g, g_ref, atol=5 * tol, rtol=5 * tol)
    assert auto_region_impl(q.device, torch.bfloat16) == "flex"
