"""This checkout against an older commit on the CPU, side by side in one run: old / new / ratio.

    python benchmarks/compare_cpu.py --old 8736dde [--repeats 2] [--threads 2] [--with-dense] [--malloc system|keep]

The old commit's ``src/`` is exported once (``git archive`` into ``/tmp/ratlit-bench-<commit>``, reused later)
and imported through PYTHONPATH; every measurement runs in a fresh subprocess, old and new alternating, and the
faster of ``--repeats`` runs counts (the least disturbed by other load). Cases: the paper-size RAT training
step at 256x256 and whole-image inference at 512x512 (bench_rat.py), and one R-MSA forward + backward at
64x64 tokens (bench_attention.py) on SLIC / Felzenszwalb / one-region / one-token-per-region partitions,
beside global SDPA. Both sides run the same case code through the public API of both versions
(``RAT``, ``FocalRegionLoss``, ``region_attention``); the rows "layout:..." exist only in the new code
and are what each R-MSA layer of RAT costs there (the layout is built once per forward for all 12 layers and
not timed here, tokens already in layout order); "kernels:..." times only the attention calls of that layout
(the packed blocks and each group of large regions, forward + backward on tensors of their shapes): the
bound for anything around them. ``--malloc keep`` runs both sides with glibc's malloc keeping freed memory
(what ratlit's CLIs set, ratlit.utils.allocator; through GLIBC_TUNABLES, as the old commit has no such setting);
the default compares the code alone under glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NETWORK_CASES = ("train256", "infer512")
ATTENTION_CASES = ("packed:slic", "packed:felzenszwalb", "packed:single", "packed:pixels", "msa:single")
DENSE_CASES = ("dense:slic", "dense:felzenszwalb")
NEW_ONLY = ("layout:felzenszwalb", "layout:slic", "kernels:felzenszwalb", "kernels:slic")
# ratlit.utils.allocator.keep_freed_memory, as environment for a process that may not have it
KEEP_FREED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def run_case(case: str, repeats: int) -> dict:
    """Time one case in this process (ratlit imported from PYTHONPATH)."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_attention import BATCH, CHANNELS, HEADS, TOKENS_SIDE, partition, peak_rss_reset, rss
    from bench_rat import network_step

    torch.manual_seed(0)
    if case in NETWORK_CASES:
        step, _ = network_step(case == "train256")
    else:
        try:
            from ratlit.models import region_attention as attn
        except ImportError:  # commits before the kernels moved into models/region_attention/
            from ratlit.models import attention as attn

        impl, kind = case.split(":")
        labels = torch.from_numpy(partition(kind)).reshape(1, -1).repeat(BATCH, 1)
        shape = (BATCH, HEADS, TOKENS_SIDE * TOKENS_SIDE, CHANNELS // HEADS)
        q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
        scale = HEADS**-0.5
        if impl == "layout":  # as each R-MSA layer of RAT: the layout is built once per forward for all 12
            n = BATCH * TOKENS_SIDE * TOKENS_SIDE
            qkv = torch.randn(n, 3, HEADS, CHANNELS // HEADS, requires_grad=True)
            layout = attn.build_region_layout(labels)
        if impl == "kernels":
            layout = attn.build_region_layout(labels)
            calls = [(layout.block_index.numel() // layout.block_size, layout.block_size, layout.block_mask)] \
                if layout.block_index is not None else []
            calls += [(count, length, None) for count, length in layout.groups]
            calls = [([torch.randn(c, HEADS, t, CHANNELS // HEADS, requires_grad=True) for _ in range(3)], m)
                     for c, t, m in calls]

        def step() -> None:
            if impl == "dense":
                out = attn.dense_region_attention(q, k, v, labels, scale, mask_value=-1000.0)
            elif impl == "msa":
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
            elif impl == "layout":
                qs, ks, vs = qkv.unbind(1)
                out = attn.region_attention_tokens(qs, ks, vs, layout, scale, "packed", qkv=qkv)
            elif impl == "kernels":
                out = sum(attn.attention(*tensors, scale, mask).sum() for tensors, mask in calls)
            else:
                # "sparse": the packed path's first name, which old and new commits both accept
                out = attn.region_attention(q, k, v, labels, scale, impl="sparse")
            out.sum().backward()

    step()  # warm-up: allocator, thread pool, first-call dispatch
    base = peak_rss_reset()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"case": case, "seconds": min(times), "cpu_seconds": min(cpu_times),
            "peak_mb": (rss("VmHWM") - base) / 2**20}


def old_checkout(commit: str) -> Path:
    """The ``src/`` tree of ``commit`` exported under /tmp on first use (git archive: no worktree to clean up)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(f"/tmp/ratlit-bench-{sha}")
    if not (path / "src" / "ratlit").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return path


def measure(src: Path, case: str, threads: int, repeats: int, malloc: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    if malloc == "keep":
        env["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--case", case,
           "--inner-repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"case {case} with PYTHONPATH={src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default="8736dde", help="commit to compare against (default: 8736dde)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating old/new subprocess runs per case")
    parser.add_argument("--cases", default=",".join(NETWORK_CASES + ATTENTION_CASES + NEW_ONLY),
                        help="comma-separated subset")
    parser.add_argument("--with-dense", action="store_true", help="also the dense Eq. 3-4 rows (3 GB, slow)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (a quiet machine), or process CPU time (a busy one; best with --threads 1)")
    parser.add_argument("--malloc", choices=["system", "keep"], default="system",
                        help="glibc's defaults, or freed memory kept for reuse as ratlit's CLIs set it (both sides)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--inner-repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case, args.inner_repeats)))
        return

    cases = [c for c in args.cases.split(",") if c] + (list(DENSE_CASES) if args.with_dense else [])
    known = NETWORK_CASES + ATTENTION_CASES + DENSE_CASES + NEW_ONLY
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; valid: {', '.join(known)}")
    old_src, new_src = old_checkout(args.old) / "src", REPO / "src"
    rows = []
    for case in cases:
        sides = {"old": [], "new": []}
        for _ in range(args.repeats):
            for side, src in (("old", old_src), ("new", new_src)):
                if side == "old" and case in NEW_ONLY:
                    continue
                sides[side].append(measure(src, case, args.threads, 1 if case in NETWORK_CASES else 3, args.malloc))
        clock = "seconds" if args.clock == "wall" else "cpu_seconds"
        best = {side: dict(min(runs, key=lambda r: r[clock]), seconds=min(r[clock] for r in runs))
                for side, runs in sides.items() if runs}
        rows.append({"case": case,
                     **{f"{side}_{key}": r[key] for side, r in best.items() for key in ("seconds", "peak_mb")}})
        old = best.get("old")
        print(f"{case}: old {old['seconds']:.3f} s, " if old else f"{case}: ", f"new {best['new']['seconds']:.3f} s",
              flush=True, file=sys.stderr)

    print(f"\nCPU, {args.threads} threads, {args.clock} clock, malloc {args.malloc}; "
          f"old = {args.old} ({old_src.parent}), "
          f"new = this checkout; best of {args.repeats} alternating runs")
    print("| case | old (s) | new (s) | old / new | old peak (MB) | new peak (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        old = f"{r['old_seconds']:.3f}" if "old_seconds" in r else "-"
        ratio = f"{r['old_seconds'] / r['new_seconds']:.2f}x" if "old_seconds" in r else "-"
        old_mb = f"{r['old_peak_mb']:.0f}" if "old_peak_mb" in r else "-"
        print(f"| {r['case']} | {old} | {r['new_seconds']:.3f} | {ratio} | {old_mb} | {r['new_peak_mb']:.0f} |")
    by_case = {r["case"]: r["new_seconds"] for r in rows}
    if "msa:single" in by_case:
        for case in ("packed:felzenszwalb", "layout:felzenszwalb", "kernels:felzenszwalb", "packed:slic",
                     "layout:slic", "kernels:slic"):
            if case in by_case:
                print(f"global SDPA / {case} (new): {by_case['msa:single'] / by_case[case]:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
