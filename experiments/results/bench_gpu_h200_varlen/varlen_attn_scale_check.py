"""Why varlen_attn's gradients differ: the same inputs against a float32 reference, per `scale=` form."""
import inspect

import torch
import torch.nn.attention.varlen as V
from torch.nn.attention.varlen import varlen_attn

WORDS = ("def _backward", "def _setup_context", "ctx.scale", "scale=", "_flash_attention_backward(")
for i, line in enumerate(inspect.getsource(V).splitlines()):
    if any(w in line for w in WORDS):
        print(f"varlen.py:{i + 1}: {line.strip()}")
torch.manual_seed(0)
T, H, D = 256, 2, 32
cu = torch.tensor([0, 100, 256], dtype=torch.int32, device="cuda")


def reference(q, k, v, scale):
    outs = []
    for a, b in ((0, 100), (100, 256)):
        s = torch.einsum("qhd,khd->hqk", q[a:b], k[a:b]) * scale
        outs.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v[a:b]))
    return torch.cat(outs)


for label, scale, prescale in (("scale=None", None, 1.0), ("scale=1/sqrt(d)", D ** -0.5, 1.0),
                               ("scale=0.3", 0.3, 1.0), ("q*(0.3*sqrt(d)), scale=None", None, 0.3 * D ** 0.5)):
    q, k, v = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = varlen_attn(q * prescale if prescale != 1.0 else q, k, v, cu, cu, 156, 156, scale=scale)
    true_scale = (D ** -0.5 if scale is None else scale) * prescale
    ref = reference(q.float(), k.float(), v.float(), true_scale)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g.float())
    errors = " ".join(f"d{n} {(a.float() - b).abs().max().item():.4f}"
                      for n, a, b in zip("qkv", grads, grads_ref, strict=True))
    print(f"{label:32s} out {(out.float() - ref).abs().max().item():.4f} {errors}")
