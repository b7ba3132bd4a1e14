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
            assert {(partition, dtype, m) for m in ("dense", "global SDPA", "packed", "flex", "flex64")} <= methods
        assert (partition, "float32", "layout packed") in methods
    timed = [r for r in result["attention"] if r["method"] not in (*bench_gpu.FLEX_METHODS, "varlen")]
    assert all(r["ms"] > 0 for r in timed)
    assert all(r["error"] == "no CPU backward" for r in result["attention"] if r["method"] in bench_gpu.FLEX_METHODS)
    varlen = [r for r in result["attention"] if r["method"] == "varlen"]  # flash attention: CUDA only
    assert len(varlen) == 4 and all(r["error"] == "no CPU kernel" and r["ms"] is None for r in varlen)
    printed = capsys.readouterr().out
    assert "| 16x16 | 2 | felzenszwalb |" in printed and "| varlen |" in printed and "global / varlen |" in printed


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
    assert {("dense", False, False, False, None), ("packed", False, False, False, None),
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
    wanted = {"region_impl": "auto", "graph": "True", "memory_budget": "None"}
    chosen = [c for c in cases if bench_gpu.selected(c, wanted)]
    assert chosen and all(c["graph"] and c["region_impl"] == "auto" for c in chosen)
    assert len(chosen) == 8  # rmsa / msa x eager / compiled blocks x fp32 / bf16
    step_kinds = {(c["attention"], c["precision"], c["compiled"], c["graph"]) for c in cases
                  if c["region_impl"] == "auto" and not c["infer"] and c["memory_budget"] is None}
    assert {(a, p, c, g) for a in ("rmsa", "msa") for p in ("fp32", "bf16-mixed") for c in (False, True)
            for g in (False, True) if c or g} <= step_kinds
    assert len([c for c in cases if bench_gpu.selected(c, {"memory_budget": "0.5|0.3"})]) == 2  # fp32, graph or not
    assert len([c for c in cases if bench_gpu.selected(c, {})]) == len(cases)


def test_core_cases_run_first():
    import bench_gpu

    cases = bench_gpu.network_cases("inductor", (0.5,))
    flags = [c["core"] for c in cases]
    assert flags == sorted(flags, reverse=True)  # every core case before any other
    core = [c for c in cases if c["core"]]
    # the core table: region_impl dense / packed / auto x fp32 / bf16-mixed, training and 512x512 inference,
    # compiled and not; msa beside rmsa in each mode (the step-time target); the fp32 memory budget; checkpointing
    for precision in ("fp32", "bf16-mixed"):
        for impl in ("dense", "packed", "auto"):
            assert any(c["region_impl"] == impl and c["precision"] == precision and c["infer"] and not c["compiled"]
                       for c in core)
        for attention in ("rmsa", "msa"):
            assert any(c["attention"] == attention and c["precision"] == precision and c["compiled"] for c in core)
            assert any(c["attention"] == attention and c["precision"] == precision and not c["compiled"]
                       for c in core)
        assert {(c["checkpointing"], c["batch"]) for c in core if c["precision"] == precision} >= {
            (True, None), (False, "large"), (True, "large")}
    assert any(c["memory_budget"] == 0.5 and c["precision"] == "fp32" for c in core)
    # varlen (no fp32 kernel): bf16 eager with inference, and compiled
    assert {(c["precision"], c["compiled"], c["infer"]) for c in core if c["region_impl"] == "varlen"} == {
        ("bf16-mixed", False, True), ("bf16-mixed", True, False)}
    assert not any(c["region_impl"] in bench_gpu.FLEX_METHODS for c in core)  # the bench's own block sizes


def test_time_budget_starts_only_what_is_expected_to_fit(monkeypatch):
    import bench_gpu

    clock = [0.0]
    monkeypatch.setattr(bench_gpu.time, "perf_counter", lambda: clock[0])
    budget = bench_gpu.TimeBudget(100.0)
    assert budget.allows("compiled", 45.0, "a")  # 0 + 45 <= 100
    with budget.timing("compiled"):
        clock[0] += 60.0  # the first compiled case took longer than its prior
    assert not budget.allows("compiled", 30.0, "b")  # 60 + 60 > 100: the longest so far counts, not the prior
    assert budget.allows("eager", 10.0, "c")  # 60 + 10: the prior, before any eager case ran
    with budget.timing("eager"):
        clock[0] += 2.0
    clock[0] = 98.0
    assert budget.allows("eager", 10.0, "d")  # 98 + 2 <= 100
    clock[0] = 99.0
    assert not budget.allows("eager", 10.0, "e")
    assert budget.skipped == ["b", "e"]
    unlimited = bench_gpu.TimeBudget(0.0)
    clock[0] = 1e9
    assert unlimited.allows("compiled", 45.0, "f") and unlimited.skipped == []


def test_cases_past_the_time_budget_are_listed_as_skipped(tmp_path, capsys):
    import bench_gpu

    out = tmp_path / "bench.json"
    result = bench_gpu.main(["--device", "cpu", "--tiny", "--time-budget", "1e-9", "--json", str(out),
                             "--network-filter", "attention=rmsa,region_impl=auto,precision=fp32,compiled=False"])
    saved = json.loads(out.read_text())
    rows = saved["attention"] + saved["network"]
    timed = [r for r in rows if r.get("error") not in ("no CPU backward", "no CPU kernel")]
    assert timed and all(r["error"] == "skipped (time budget)" and r["ms"] is None for r in timed)
    assert len(saved["skipped"]) == len(timed) == len(result["skipped"])
    assert any(name.startswith("network rmsa") or "attention=rmsa" in name for name in saved["skipped"])
    printed = capsys.readouterr().out
    assert "skipped (time budget)" in printed and f"{len(timed)} cases did not fit --time-budget" in printed


@pytest.mark.parametrize("args", [["--network-filter", "impl=auto"], ["--network-filter", "graph"],
                                  ["--skip", "atention"], ["--time-budget", "-1"]])
def test_misspelt_selection_is_a_usage_error(args, capsys):
    import bench_gpu

    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main(["--device", "cpu", "--tiny", "--json", "/dev/null", *args])
    assert exit_info.value.code == 2 and args[1] in capsys.readouterr().err


def test_cuda_is_required_without_tiny_cpu_mode():
    import torch

    import bench_gpu

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_gpu.main(["--json", "/dev/null"])
