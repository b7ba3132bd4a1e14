"""benchmarks/bench_gpu.py's logic at toy sizes on the CPU (the real run needs a GPU)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_attention_table_at_toy_size(tmp_path, capsys):
    import bench_gpu

    out = tmp_path / "bench.json"
    bench_gpu.main(["--device", "cpu", "--tiny", "--skip", "network", "--json", str(out)])
    result = json.loads(out.read_text())
    methods = {(r["partition"], r["dtype"], r["method"]) for r in result["attention"]}
    for partition in ("slic", "felzenszwalb"):
        for dtype in ("float32", "bfloat16"):
            assert {(partition, dtype, m) for m in ("dense", "global SDPA", "sparse", "flex", "flex64")} <= methods
        assert (partition, "float32", "layout packed") in methods
    timed = [r for r in result["attention"] if r["method"] not in bench_gpu.FLEX_METHODS]
    assert all(r["ms"] > 0 for r in timed)
    assert all(r["error"] == "no CPU backward" for r in result["attention"] if r["method"] in bench_gpu.FLEX_METHODS)
    assert "| 16x16 | 2 | felzenszwalb |" in capsys.readouterr().out


@pytest.mark.slow
def test_network_table_at_toy_size(tmp_path):
    import bench_gpu

    # fp32 R-MSA rows only (each compiled case traces the network again): every kind of row, eager and
    # compiled, graphed, checkpointed and under a memory budget; the full case list is checked below.
    out = tmp_path / "bench.json"
    bench_gpu.main(["--device", "cpu", "--tiny", "--skip", "attention", "--compile-backend", "aot_eager",
                    "--memory-budget", "0.5", "--network-filter", "attention=rmsa,precision=fp32", "--json", str(out)])
    rows = json.loads(out.read_text())["network"]
    impls = {(r["region_impl"], r["compiled"], r["graph"], r["checkpointing"], r["memory_budget"]) for r in rows}
    assert {r["attention"] for r in rows} == {"rmsa"} and {r["precision"] for r in rows} == {"fp32"}
    assert {("dense", False, False, False, None), ("sparse", False, False, False, None),
            ("auto", False, False, True, None)} <= impls
    assert {(r["compiled"], r["memory_budget"]) for r in rows if r["graph"]} == {(False, None), (True, None),
                                                                                  (True, 0.5)}
    assert all(r["ms"] > 0 and r["captured"] is False for r in rows if r["graph"])  # no CUDA: the step runs eagerly
    assert {r["memory_budget"] for r in rows if r["compiled"] and not r["graph"]} == {None, 0.5}
    assert {r["case"] for r in rows} == {"train b1 32x32", "train b2 32x32", "infer 48x48"}
    assert all(r["ms"] > 0 for r in rows if r["region_impl"] not in bench_gpu.FLEX_METHODS)
    assert all(r["error"] == "no CPU backward" for r in rows if r["region_impl"] in bench_gpu.FLEX_METHODS)


def test_network_filter_selects_cases_by_their_keys():
    import bench_gpu

    cases = bench_gpu.network_cases("inductor", (0.5,))
    chosen = [c for c in cases if bench_gpu.selected(c, {"region_impl": "auto", "graph": "True", "memory_budget": "None"})]
    assert chosen and all(c["graph"] and c["region_impl"] == "auto" for c in chosen)
    assert len(chosen) == 8  # rmsa / msa x eager / compiled blocks x fp32 / bf16
    step_kinds = {(c["attention"], c["precision"], c["compiled"], c["graph"]) for c in cases
                  if c["region_impl"] == "auto" and not c["infer"] and c["memory_budget"] is None}
    assert {(a, p, c, g) for a in ("rmsa", "msa") for p in ("fp32", "bf16-mixed") for c in (False, True)
            for g in (False, True) if c or g} <= step_kinds
    assert len([c for c in cases if bench_gpu.selected(c, {"memory_budget": "0.5|0.3"})]) == 2  # fp32, graph or not
    assert len([c for c in cases if bench_gpu.selected(c, {})]) == len(cases)


@pytest.mark.parametrize("args", [["--network-filter", "impl=auto"], ["--network-filter", "graph"],
                                  ["--skip", "atention"]])
def test_misspelt_selection_is_a_usage_error(args, capsys):
    import bench_gpu

    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main(["--device", "cpu", "--tiny", "--json", "/dev/null", *args])
    assert exit_info.value.code == 2 and args[1] in capsys.readouterr().err


def test_cuda_is_required_without_tiny_cpu_mode():
    import bench_gpu
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_gpu.main(["--json", "/dev/null"])
