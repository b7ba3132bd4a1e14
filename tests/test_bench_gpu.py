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
            assert {(partition, dtype, m) for m in ("dense", "global SDPA", "sparse", "flex")} <= methods
    timed = [r for r in result["attention"] if r["method"] != "flex"]
    assert all(r["ms"] > 0 for r in timed)
    assert "| 16x16 | 2 | felzenszwalb |" in capsys.readouterr().out


@pytest.mark.slow
def test_network_table_at_toy_size(tmp_path):
    import bench_gpu

    out = tmp_path / "bench.json"
    bench_gpu.main(["--device", "cpu", "--tiny", "--skip", "attention", "--compile-backend", "aot_eager",
                    "--json", str(out)])
    rows = json.loads(out.read_text())["network"]
    impls = {(r["attention"], r["region_impl"], r["precision"], r["compiled"]) for r in rows}
    assert ("rmsa", "auto", "bf16-mixed", True) in impls and ("msa", "auto", "fp32", False) in impls
    assert all(r["ms"] > 0 for r in rows)


def test_cuda_is_required_without_tiny_cpu_mode():
    import bench_gpu
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_gpu.main(["--json", "/dev/null"])
