"""Region attention and paper-size RAT on one GPU: one command, under 4 minutes, tables + JSON.

    python benchmarks/bench_gpu.py [--json bench_gpu.json] [--time-budget 225] [--no-compile] [--autotune]
    python benchmarks/bench_gpu.py --time-budget 0            # every case, however long it takes
    python benchmarks/bench_gpu.py --device cpu --tiny      # the same logic at toy sizes (tests, no GPU)

Cases run in priority order (the attention table, then the core network cases: the network table and the
step-time and memory goals of docs/performance.md, then the rest) and each starts only if it is expected to
end within ``--time-budget`` seconds of the start (expected: the longest case of its kind so far, eager or
compiled); those that would not are written as "skipped (time budget)" and listed at the end.

Table 1, R-MSA forward + backward of one layer as RAT runs it (region layout built once per forward and
reused, tokens already in region order; the layouts' own cost is their own columns): dense Eq. 3-4 / global
SDPA / packed / FlexAttention with 128- and 64-token block masks / varlen (flash attention, one sequence per
region; bf16 only: no fp32 kernel), and global SDPA, flex64 (with ``--autotune`` also with autotuned tiles), varlen
and the sorted layout replayed from a CUDA graph, fp32 and bf16, on
SLIC and Felzenszwalb partitions of scikit-image's camera image, at 64x64 tokens (B=8, 8 heads x 32) and
128x128 tokens (B=2).
Table 2, paper-size RAT: one training step (forward, loss, backward, fused Adam) at batch 4, 256x256, and
512x512 whole-image inference, for every region_impl (varlen: bf16-mixed) and attention msa / wmsa, fp32 and
bf16-mixed, eager
and with compiled blocks (model.compile), replayed as a CUDA graph (model.cuda_graph) or not, with
activation memory budgets (--memory-budget), and activation checkpointing at batch 4 and 16; peak memory:
torch.cuda.max_memory_allocated over the whole case (first step, warm-up, capture, timed steps) above the
model's weights, and the most memory the case reserved. Cases that run out of memory are reported as OOM,
cases that fail otherwise by their error's name. Every figure is a median over timed repeats after warm-up;
each row is written to the JSON as it is measured, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL = {"attn_sizes": [(64, 8), (128, 2)], "heads": 8, "head_dim": 32, "train": (4, 256), "large_batch": 16,
        "infer": 512, "rat": {}, "warmup": 3, "repeats": 10}
TINY = {"attn_sizes": [(16, 2)], "heads": 2, "head_dim": 8, "train": (1, 32), "large_batch": 2, "infer": 48,
        "rat": dict(width=8, num_groups=1, layers_per_group=1, num_heads=2), "warmup": 1, "repeats": 2}


def camera_partition(kind: str, side: int) -> np.ndarray:
    """A real-image partition at 4x the token grid, sampled to ``side x side`` tokens (as RAT does)."""
    from skimage import data, segmentation, transform

    image = transform.resize(data.camera(), (4 * side, 4 * side), anti_aliasing=True)
    if kind == "slic":
        labels = segmentation.slic(image, n_segments=100 * (side // 64) ** 2 or 100, compactness=0.1,
                                   channel_axis=None, start_label=0)
    else:
        labels = segmentation.felzenszwalb(image, scale=400, sigma=0.8, min_size=200)
    return labels[::4, ::4].astype(np.int64)


def measure(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median milliseconds and peak memory (GPU: allocated bytes above the start) of ``fn()``."""
    cuda = device.type == "cuda"
    try:
        for _ in range(warmup):
            fn()
        if cuda:
            torch.cuda.synchronize()
            warmup_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        if not cuda:
            return {"ms": statistics.median(times), "peak_mb": None}
        peak = torch.cuda.max_memory_allocated()
        # peak_mb: the timed steps above their steady state; max_allocated_mb: the most allocated at any point
        # (warm-up included: a CUDA graph allocates its activations while it is captured).
        return {"ms": statistics.median(times), "peak_mb": (peak - base) / 2**20,
                "max_allocated_mb": max(peak, warmup_peak) / 2**20}
    except torch.OutOfMemoryError:
        return {"ms": None, "peak_mb": None, "error": "OOM"}
    except Exception as err:  # e.g. a kernel that does not compile here: recorded, the other cases still run
        traceback.print_exc()
        return {"ms": None, "peak_mb": None, "error": type(err).__name__}
    finally:
        if cuda:
            torch.cuda.empty_cache()


FLEX_METHODS = {"flex": 128, "flex64": 64}  # FlexAttention with a block mask of 128 / 64 tokens
ATTENTION_METHODS = ("dense", "global SDPA", "packed", *FLEX_METHODS, "varlen", "layout packed",
                     *(f"layout sorted {m}" for m in (*FLEX_METHODS, "varlen")))
# The same calls replayed from a CUDA graph (as model.cuda_graph trains): kernel time without launch overhead.
GRAPH_METHODS = {"global SDPA graph": "global SDPA", "flex64 graph": "flex64", "flex64 autotuned graph": "flex64",
                 "varlen graph": "varlen", "layout sorted flex64 graph": "layout sorted flex64"}
# FlexAttention compiled with mode="max-autotune-no-cudagraphs": its tile sizes chosen by timing (not yet the default).
AUTOTUNED = {"flex64 autotuned graph"}


@contextlib.contextmanager
def flex_autotuned(enabled: bool):
    """Inside: region attention's FlexAttention kernel compiled with autotuned tile sizes (one compilation)."""
    from ratlit.models.region_attention import flex

    if not enabled:
        yield
        return
    global _AUTOTUNED_FLEX
    if _AUTOTUNED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _AUTOTUNED_FLEX = torch.compile(flex_attention, dynamic=True, mode="max-autotune-no-cudagraphs")
    saved = flex._compiled_flex
    flex._compiled_flex = lambda device_type: _AUTOTUNED_FLEX
    try:
        yield
    finally:
        flex._compiled_flex = saved


_AUTOTUNED_FLEX = None


def cuda_graphed(step):
    """``step`` captured in a CUDA graph on its first call (after two warm-up runs on a side stream), then replayed."""
    from ratlit.training.cuda_graph import capture, side_stream

    graph = None

    def replay() -> None:
        nonlocal graph
        if graph is None:
            with side_stream():
                for _ in range(2):
                    step()
            graph, _ = capture(step)
        graph.replay()
    return replay


@contextlib.contextmanager
def flex_block(block: int | None):
    """Run the flex path with a block mask of ``block`` tokens (None: the default)."""
    from ratlit.models.region_attention import flex

    saved = flex.FLEX_BLOCK
    flex.FLEX_BLOCK = block or saved
    try:
        yield
    finally:
        flex.FLEX_BLOCK = saved


def attention_table(cfg: dict, device: torch.device, record, budget: TimeBudget, autotune: bool = False) -> list[dict]:
    from ratlit.models import region_attention as attn

    rows = []
    heads, dim = cfg["heads"], cfg["head_dim"]
    for side, batch in cfg["attn_sizes"]:
        for kind in ("slic", "felzenszwalb"):
            labels = torch.from_numpy(camera_partition(kind, side)).reshape(1, -1).repeat(batch, 1).to(device)
            n = side * side
            _, counts = torch.unique(labels[0], return_counts=True)
            work = float((counts.double() ** 2).sum() / n**2)
            layouts = {True: attn.build_region_layout(labels), False: attn.build_region_layout(labels, packed=False)}
            for dtype in (torch.float32, torch.bfloat16):
                scale = heads**-0.5
                qkv = torch.randn(batch * n, 3, heads, dim, device=device, dtype=dtype, requires_grad=True)
                dense_qkv = torch.randn(3, batch, heads, n, dim, device=device, dtype=dtype, requires_grad=True)

                # This iteration's tensors bound now: the closure never sees a later iteration's.
                def run(method: str, *, qkv=qkv, dense_qkv=dense_qkv, labels=labels, layouts=layouts,
                        scale=scale):
                    def step() -> None:
                        if method == "dense":
                            q, k, v = dense_qkv.unbind(0)
                            out = attn.dense_region_attention(q, k, v, labels, scale, mask_value=-1000.0)
                        elif method == "global SDPA":
                            q, k, v = dense_qkv.unbind(0)
                            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                        elif method == "layout packed":
                            attn.build_region_layout(labels)
                            return
                        elif method == "layout sorted varlen":  # what the varlen path builds per forward
                            attn.build_region_layout(labels, packed=False).varlen_sequences()
                            return
                        elif method.startswith("layout sorted"):  # what the flex path builds per forward
                            attn.build_region_layout(labels, packed=False).flex_mask(FLEX_METHODS.get(method[14:]))
                            return
                        else:
                            q, k, v = qkv.unbind(1)
                            impl = "flex" if method in FLEX_METHODS else method
                            layout = layouts[impl == "packed"]  # flex and varlen: the sorted layout
                            with flex_block(FLEX_METHODS.get(method)):
                                out = attn.region_attention_tokens(q, k, v, layout, scale, impl, qkv=qkv)
                        out.sum().backward()
                    return step

                for method in (*ATTENTION_METHODS, *GRAPH_METHODS):
                    base = GRAPH_METHODS.get(method, method)
                    if base.startswith("layout") and dtype != torch.float32:
                        continue
                    if (base.startswith("layout sorted") or method in GRAPH_METHODS) and device.type != "cuda":
                        continue  # flex_mask on the CPU: no kernel to feed; CUDA graphs need CUDA
                    if method in AUTOTUNED and not autotune:
                        continue
                    if base in FLEX_METHODS and device.type != "cuda":
                        r = {"ms": None, "peak_mb": None, "error": "no CPU backward"}  # FlexAttention's limit
                    elif base == "varlen" and (device.type != "cuda" or dtype == torch.float32):
                        r = {"ms": None, "peak_mb": None,  # flash attention's kernels: CUDA, fp16 / bf16
                             "error": "no CPU kernel" if device.type != "cuda" else "no fp32 kernel"}
                    elif not budget.allows("attention", ATTENTION_PRIOR_S * (device.type == "cuda"),
                                           f"attention {side}x{side} {kind} {dtype} {method}"):
                        r = dict(SKIPPED)
                    else:
                        with budget.timing("attention"):
                            if method in GRAPH_METHODS:
                                with flex_autotuned(method in AUTOTUNED):
                                    r = measure(cuda_graphed(run(base)), device, cfg["warmup"], cfg["repeats"])
                            else:
                                r = measure(run(method), device, cfg["warmup"], cfg["repeats"])
                    rows.append({"tokens": f"{side}x{side}", "batch": batch, "partition": kind,
                                 "regions": int(counts.numel()), "work": work, "dtype": str(dtype).split(".")[-1],
                                 "method": method, **r})
                    record(rows[-1])
                    qkv.grad = dense_qkv.grad = None
    return rows


def network_cases(compile_backend: str | None, memory_budgets: tuple[float, ...] = ()) -> list[dict]:
    """The paper-size RAT cases in the order they run, the core table and goals first (``core``): every
    region_impl a user chooses (auto, dense, packed) and attention msa / wmsa, eager, fp32 and bf16-mixed, then
    compiled blocks replayed as a CUDA graph (what ``model.compile=true`` trains with), activation memory budgets,
    activation checkpointing; then the rest: the bench's own FlexAttention block sizes, a CUDA graph of eager
    blocks, compiled blocks without a graph. A time budget (``--time-budget``) skips what no longer fits."""
    base = dict(compiled=False, graph=False, checkpointing=False, batch=None, infer=False, memory_budget=None)
    precisions = ("fp32", "bf16-mixed")

    def case(core: bool, attention: str, precision: str, impl: str = "auto", **kw) -> dict:
        return {**base, "attention": attention, "region_impl": impl, "precision": precision, "core": core, **kw}

    core, extra = [], []
    for precision in precisions:
        for attention, impl in [("rmsa", "auto"), ("msa", "auto"), ("wmsa", "auto"), ("rmsa", "dense"),
                                ("rmsa", "packed")]:
            core.append(case(True, attention, precision, impl, infer=True))
        extra += [case(False, "rmsa", precision, impl, infer=True) for impl in FLEX_METHODS]
        extra += [case(False, attention, precision, graph=True) for attention in ("rmsa", "msa")]
    # varlen: flash attention has no fp32 kernel. Its layout reads the region count and longest region on the host,
    # so the step cannot be captured: the graph row shows whether GraphedBackward steps aside as it should.
    core.append(case(True, "rmsa", "bf16-mixed", "varlen", infer=True))
    if compile_backend:
        for precision in precisions:
            core += [case(True, attention, precision, compiled=True, graph=True) for attention in ("rmsa", "msa")]
            extra += [case(False, attention, precision, compiled=True) for attention in ("rmsa", "msa")]
        core.append(case(True, "rmsa", "bf16-mixed", "varlen", compiled=True))
        extra.append(case(False, "rmsa", "bf16-mixed", "varlen", compiled=True, graph=True))
        for budget in memory_budgets:  # the memory target is fp32's (bf16 halves it anyway)
            core.append(case(True, "rmsa", "fp32", compiled=True, memory_budget=budget))
            extra.append(case(False, "rmsa", "fp32", compiled=True, graph=True, memory_budget=budget))
    for precision in precisions:  # memory with and without activation checkpointing
        core += [case(True, "rmsa", precision, checkpointing=True),
                 case(True, "rmsa", precision, batch="large"),
                 case(True, "rmsa", precision, checkpointing=True, batch="large")]
    return core + extra


class TimeBudget:
    """Starts a case only if it should end within ``seconds`` of the start (0: no limit): a case's expected
    duration is the longest so far of its kind (compiled or not), before any the ``prior`` given."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()
        self.longest: dict[str, float] = {}
        self.skipped: list[str] = []

    def allows(self, kind: str, prior: float, name: str) -> bool:
        if not self.seconds:
            return True
        expected = self.longest.get(kind, prior)
        if time.perf_counter() - self.start + expected <= self.seconds:
            return True
        self.skipped.append(name)
        return False

    @contextlib.contextmanager
    def timing(self, kind: str):
        start = time.perf_counter()
        yield
        self.longest[kind] = max(self.longest.get(kind, 0.0), time.perf_counter() - start)


SKIPPED = {"ms": None, "peak_mb": None, "error": "skipped (time budget)"}
# Expected seconds of the first case of a kind on a GPU, before one has run (H100, cold caches: an attention
# row 1-3 s; an eager network case 2-11 s, the first one paying CUDA's start; compiling the network 17-44 s).
ATTENTION_PRIOR_S = 3.0
NETWORK_PRIOR_S = {"eager": 10.0, "compiled": 45.0}
DEFAULT_TIME_BUDGET_S = 225.0  # and about 15 s to import torch and start CUDA: the command ends within 4 minutes


def selected(case: dict, filters: dict[str, str]) -> bool:
    """Whether ``case`` matches every ``key=value`` of ``--network-filter`` (values compared as strings;
    ``key=a|b`` matches either)."""
    return all(str(case.get(key)) in value.split("|") for key, value in filters.items())


def network_filters(parser: argparse.ArgumentParser, text: str) -> dict[str, str]:
    """``--network-filter key=value,...`` as a dict; a malformed item or a key no case has is a usage error."""
    keys = set(network_cases("inductor", (0.5,))[0])
    filters = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            parser.error(f"--network-filter: {item!r} is not key=value with a key of {', '.join(sorted(keys))}")
        filters[key] = value
    return filters


def network_table(cfg: dict, device: torch.device, compile_backend: str | None, record, budget: TimeBudget,
                  filters: dict[str, str] | None = None, memory_budgets: tuple[float, ...] = ()) -> list[dict]:
    from bench_rat import slic_regions
    from ratlit.losses import FocalRegionLoss

    rows = []
    batch, side = cfg["train"]
    regions, image = slic_regions(max(side, 256))
    if side < 256:
        regions, image = regions[:, :side, :side], image[..., :side, :side].contiguous()
    regions, image = regions.to(device), image.to(device)
    big_regions, big_image = slic_regions(max(cfg["infer"], 512))
    big_regions = big_regions[:, : cfg["infer"], : cfg["infer"]].to(device)
    big_image = big_image[..., : cfg["infer"], : cfg["infer"]].contiguous().to(device)
    loss_fn = FocalRegionLoss()
    for case in network_cases(compile_backend, memory_budgets):
        if not selected(case, filters or {}):
            continue
        size = cfg["large_batch"] if case["batch"] == "large" else batch
        name = {k: case[k] for k in ("attention", "region_impl", "precision", "compiled", "graph", "checkpointing",
                                     "memory_budget")}
        kind = "compiled" if case["compiled"] else "eager"
        prior = NETWORK_PRIOR_S[kind] * (device.type == "cuda")
        if not budget.allows(kind, prior, f"network {' '.join(f'{k}={v}' for k, v in name.items())} b{size}"):
            rows.append({**name, "case": f"train b{size} {side}x{side}", **SKIPPED})
            record(rows[-1])
            continue
        with budget.timing(kind):
            rows += network_case(cfg, device, compile_backend, record, case, size, name, lq_inputs=(image, regions),
                                 big_inputs=(big_image, big_regions), loss_fn=loss_fn)
    torch._functorch.config.activation_memory_budget = 1.0
    return rows


def network_case(cfg: dict, device: torch.device, compile_backend: str | None, record, case: dict, size: int,
                 name: dict, lq_inputs: tuple, big_inputs: tuple, loss_fn) -> list[dict]:
    """One network case's rows: its training step and, for the cases that time it, 512x512 inference."""
    from ratlit.models import RAT
    from ratlit.training.compiling import compile_repeated_blocks
    from ratlit.training.cuda_graph import GraphedBackward
    from ratlit.utils.checks import finite_checks

    rows = []
    (image, regions), (big_image, big_regions) = lq_inputs, big_inputs
    side = image.shape[-1]
    impl = "flex" if case["region_impl"] in FLEX_METHODS else case["region_impl"]
    if impl in ("flex", "varlen") and device.type != "cuda":  # FlexAttention's limit; varlen_attn: CUDA only
        rows.append({**name, "case": f"train b{size} {side}x{side}", "ms": None, "peak_mb": None,
                     "error": "no CPU backward" if impl == "flex" else "no CPU kernel"})
        record(rows[-1])
        return rows
    lq, lq_regions = image.repeat(size, 1, 1, 1), regions.repeat(size, 1, 1)
    torch.manual_seed(0)
    if case["compiled"]:
        torch._dynamo.reset()  # each compiled case pays its own compilation (the on-disk caches stay)
    model = RAT(attention=case["attention"], region_impl=impl,
                activation_checkpointing=case["checkpointing"], **cfg["rat"]).to(device)
    if case["compiled"]:
        memory_budget = 1.0 if case["memory_budget"] is None else case["memory_budget"]
        torch._functorch.config.activation_memory_budget = memory_budget  # read when the graphs are partitioned
        compile_repeated_blocks(model, backend=compile_backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as conf/optimizer/adam.yaml
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if case["precision"] == "bf16-mixed"
                else contextlib.nullcontext())

    block = FLEX_METHODS.get(case["region_impl"])

    def step_loss(lq, hq, regions):
        with finite_checks(False):  # as RestorationModule's training step
            return loss_fn(model(lq, regions), hq, regions)

    # As model.cuda_graph=true: forward, loss and backward replayed from one CUDA graph after warm-up.
    graphed = GraphedBackward(step_loss, list(model.parameters()), warmup=2) if case["graph"] else None

    def train_step() -> None:
        with flex_block(block):
            if graphed is not None:
                with autocast:
                    graphed(lq=lq, hq=lq, regions=lq_regions)
                optimizer.step()  # the graph writes the same .grad tensors each replay: never set them to None
                return
            with autocast:
                loss = step_loss(lq, lq, lq_regions)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer() -> None:
        with torch.inference_mode(), autocast, flex_block(block):
            model.eval()(big_image, big_regions)
        model.train()

    if device.type == "cuda":  # what the card must hold for the whole case (a CUDA graph keeps its own pool)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        reserved_base, allocated_base = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
    start = time.perf_counter()
    first = measure(train_step, device, 0, 1)  # includes compilation when compiled
    first_s = time.perf_counter() - start
    timed = first if first.get("error") else measure(train_step, device, cfg["warmup"], cfg["repeats"])
    rows.append({**name, "case": f"train b{size} {side}x{side}",
                 "first_step_s": None if first.get("error") else first_s, **timed})
    if device.type == "cuda":  # the whole case: first step, warm-up, capture and timed steps
        most = max((r.get("max_allocated_mb") or 0.0) for r in (first, timed))
        rows[-1]["case_peak_mb"] = most - allocated_base / 2**20
        rows[-1]["reserved_mb"] = (torch.cuda.max_memory_reserved() - reserved_base) / 2**20
    if graphed is not None:
        rows[-1]["captured"] = graphed.captured
        if graphed.failed:
            rows[-1]["capture_error"] = graphed.failed.splitlines()[0]
    record(rows[-1])
    if case["infer"]:  # validation / inference run eagerly (docs/gpu.md: compiled training)
        rows.append({**name, "case": f"infer {cfg['infer']}x{cfg['infer']}",
                     **measure(infer, device, 1, max(2, cfg["repeats"] // 2))})
        record(rows[-1])
    return rows


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(attn_rows: list[dict], net_rows: list[dict], device_name: str) -> None:
    print(f"\nR-MSA forward + backward, one layer as RAT runs it ({device_name}); layouts: built once per forward")
    measured = {r["method"] for r in attn_rows}  # e.g. no graph rows on the CPU, autotuned rows on request
    compute = tuple(m for m in ("dense", "global SDPA", "packed", *FLEX_METHODS, "varlen", *GRAPH_METHODS)
                    if not m.startswith("layout") and m in measured)
    layouts = [m for m in (*ATTENTION_METHODS, *GRAPH_METHODS) if m.startswith("layout") and m in measured]
    print("| tokens | B | partition | regions | sum n_i^2/N^2 | dtype | " + " | ".join(compute + tuple(layouts))
          + " | global / best flex | graphs: global / best flex | global / varlen | graphs: global / varlen |")
    print("|---" * (10 + len(compute) + len(layouts)) + "|")
    keys = sorted({(r["tokens"], r["batch"], r["partition"], r["dtype"]) for r in attn_rows},
                  key=lambda k: (k[0], k[2], k[3] != "float32"))
    for key in keys:
        cells = {r["method"]: r for r in attn_rows if (r["tokens"], r["batch"], r["partition"], r["dtype"]) == key}
        cells.update({r["method"]: r for r in attn_rows
                      if (r["tokens"], r["batch"], r["partition"]) == key[:3] and r["method"] in layouts})
        any_row = next(iter(cells.values()))

        def cell(method: str, cells: dict = cells) -> str:  # this row's cells, bound now
            r = cells.get(method)
            if r is None:
                return "-"
            if r.get("error"):
                return r["error"]
            return f"{r['ms']:.2f} ms" + (f" / {r['peak_mb']:.0f} MB" if r["peak_mb"] is not None else "")

        flex_ms = [cells[m]["ms"] for m in FLEX_METHODS if cells.get(m) and cells[m].get("ms")]
        sdpa = cells.get("global SDPA", {}).get("ms")
        ratio = f"{sdpa / min(flex_ms):.2f}x" if flex_ms and sdpa else "-"
        sdpa_graph = cells.get("global SDPA graph", {}).get("ms")
        flex_graph = [cells[m]["ms"] for m in ("flex64 graph", *AUTOTUNED) if cells.get(m) and cells[m].get("ms")]
        graph_ratio = f"{sdpa_graph / min(flex_graph):.2f}x" if sdpa_graph and flex_graph else "-"
        varlen_ms, varlen_graph = (cells.get(m, {}).get("ms") for m in ("varlen", "varlen graph"))
        varlen_ratios = [f"{a / b:.2f}x" if a and b else "-"
                         for a, b in ((sdpa, varlen_ms), (sdpa_graph, varlen_graph))]
        print(f"| {key[0]} | {key[1]} | {key[2]} | {any_row['regions']} | {any_row['work']:.3f} | {key[3]} | "
              + " | ".join(cell(m) for m in compute + tuple(layouts)) + f" | {ratio} | {graph_ratio} | "
              + " | ".join(varlen_ratios) + " |")
    print(f"\nPaper-size RAT ({device_name})")
    print("| case | attention | region_impl | precision | compiled | CUDA graph | checkpointing | memory budget "
          "| time (ms) | peak (GB) | reserved (GB) | first step (s) |")
    print("|---" * 12 + "|")
    for r in net_rows:
        time_cell = r.get("error") or fmt(r["ms"], 1)
        peak_mb = r.get("case_peak_mb", r["peak_mb"])
        peak = fmt(peak_mb / 1024 if peak_mb is not None else None)
        graph = r.get("graph", False)
        if graph and not r.get("captured"):
            graph = "not captured" + (f" ({r['capture_error'][:60]})" if r.get("capture_error") else "")
        print(f"| {r['case']} | {r['attention']} | {r['region_impl']} | {r['precision']} | {r['compiled']} | "
              f"{graph} | {r['checkpointing']} | {fmt(r.get('memory_budget'))} | {time_cell} | {peak} | "
              f"{fmt(r['reserved_mb'] / 1024 if r.get('reserved_mb') is not None else None)} | "
              f"{fmt(r.get('first_step_s'), 1)} |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny, to test the script)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the logic in seconds")
    parser.add_argument("--json", default="bench_gpu.json", help="where to write all figures")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--skip", default="", help="comma-separated: attention,network")
    parser.add_argument("--network-filter", default="",
                        help="only the network cases matching every key=value (a|b: either), "
                             "e.g. region_impl=auto,graph=True")
    parser.add_argument("--memory-budget", type=float, action="append", default=[],
                        help="also time the compiled step with this activation memory budget (0-1; repeatable)")
    parser.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET_S,
                        help="seconds: start only the cases expected to end within it, in priority order (the "
                             "core table first); the rest are listed as skipped (default "
                             f"{DEFAULT_TIME_BUDGET_S:.0f}: the whole command under 4 minutes; 0: run everything)")
    parser.add_argument("--autotune", action="store_true",
                        help="also time FlexAttention with autotuned tile sizes (max-autotune: minutes of tuning)")
    args = parser.parse_args(argv)
    if args.time_budget < 0:
        parser.error(f"--time-budget must be >= 0 seconds, got {args.time_budget}")
    filters = network_filters(parser, args.network_filter)
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - {"attention", "network"}
    if unknown:
        parser.error(f"--skip takes attention and/or network, got {', '.join(sorted(unknown))}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or use --device cpu --tiny to check the script")
    torch.set_float32_matmul_precision("high")  # what a training run sets (float32_matmul_precision)
    cfg = TINY if args.tiny else FULL
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    budget = TimeBudget(args.time_budget)
    result = {"device": device_name, "torch": torch.__version__, "tiny": args.tiny, "time_budget_s": args.time_budget,
              "attention": [], "network": []}
    json_path = Path(args.json)

    def recorder(table: str):
        def record(row: dict) -> None:  # every row as it comes: a run cut short keeps what it measured
            result[table].append(row)
            print(f"  {table}: {row}", file=sys.stderr, flush=True)
            json_path.write_text(json.dumps(result, indent=2))
        return record

    if "attention" not in skip:
        attention_table(cfg, device, recorder("attention"), budget, args.autotune)
    if "network" not in skip:
        network_table(cfg, device, None if args.no_compile else args.compile_backend, recorder("network"), budget,
                      filters, tuple(args.memory_budget))
    print_tables(result["attention"], result["network"], device_name)
    result["seconds"] = time.perf_counter() - budget.start
    result["skipped"] = budget.skipped
    json_path.write_text(json.dumps(result, indent=2))
    if budget.skipped:
        print(f"\n{len(budget.skipped)} cases did not fit --time-budget {args.time_budget:.0f} s (listed in "
              f"{args.json}, 'skipped'); --time-budget 0 runs them all, --network-filter / --skip a part")
    print(f"\n{result['seconds']:.0f} s; figures in {args.json}")
    return result


if __name__ == "__main__":
    main()
