"""experiments/reproduce_cpu.sh without training (RUNS=<sweep>): each run's small files are collected by variant and
seed, and the two paired reports name the right references."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "reproduce_cpu.sh"
IMAGES = ("a/0001", "b/0001", "b/0002")


def _run(folder: Path, attention: str, loss: str, partition: str, seed: int, offset: float) -> None:
    """A results.json and test_results.csv as a training run writes them (the fields the report reads)."""
    folder.mkdir(parents=True)
    psnr = [40.0 + i + offset + 0.01 * seed for i in range(len(IMAGES))]
    overrides = ["experiment=cpu_ct", f"seed={seed}", f"attention={attention}", f"loss={loss}",
                 f"partition={partition}"]
    result = {"task": "ct", "overrides": overrides, "partition": {"name": partition},
              "test": {"psnr": sum(psnr) / 3, "psnr_std": 1.0, "ssim": 0.9, "ssim_std": 0.01},
              "input": {"psnr": 38.0, "psnr_std": 1.0, "ssim": 0.8, "ssim_std": 0.01}}
    (folder / "results.json").write_text(json.dumps(result))
    with open(folder / "test_results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "psnr", "ssim", "input_psnr", "input_ssim"])
        for name, value in zip(IMAGES, psnr, strict=True):
            writer.writerow([name, value, 0.9 + offset / 100, 38.0, 0.8])


def _paired(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_reproduce_cpu_collects_runs_and_reports_against_both_references(tmp_path):
    sweep, results = tmp_path / "sweep", tmp_path / "results"
    job = 0
    for seed in (0, 1):
        for k, (attention, loss) in enumerate((a, b) for a in ("msa", "wmsa", "rmsa") for b in ("l1", "fr")):
            _run(sweep / "table4" / str(job), attention, loss, "slic", seed, 0.1 * k)
            job += 1
        for k, partition in enumerate(("felzenszwalb", "grid")):
            _run(sweep / "partition" / str(job), "rmsa", "fr", partition, seed, -0.2 * (k + 1))
            job += 1
    env = {**os.environ, "RUNS": str(sweep), "RESULTS": str(results), "PYTHONPATH": str(ROOT / "src")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this interpreter as `python`
    for runs in (sweep, results / "runs"):  # the second time from its own copies: copied before they are replaced
        subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env={**env, "RUNS": str(runs)}, check=True,
                       capture_output=True)
        copied = sorted(p.relative_to(results / "runs").as_posix() for p in (results / "runs").rglob("results.json"))
        assert len(copied) == 16 and "table4/msa_l1_slic/seed0/results.json" in copied
        assert "partition/rmsa_fr_grid/seed1/results.json" in copied
        assert (results / "runs/table4/wmsa_fr_slic/seed1/test_results.csv").is_file()
        table4 = _paired(results / "table4" / "paired.csv")
        assert {r["reference"] for r in table4} == {"msa_l1_slic/seed0 (+1 seeds)"} and len(table4) == 5 * 2
        assert all(r["seed_pairing"] == "paired" for r in table4)
        axis = _paired(results / "partition" / "paired.csv")
        assert {r["reference"] for r in axis} == {"table4/rmsa_fr_slic/seed0 (+1 seeds)"} and len(axis) == 7 * 2
        grid = next(r for r in axis if r["partition"] == "grid" and r["metric"] == "psnr")
        assert float(grid["mean"]) == pytest.approx(-0.4 - 0.5)  # grid at -0.4, rmsa_fr_slic at +0.5
        assert grid["verdict"] == "lower"
        for name in ("report.md", "report.csv", "paired.md", "report.png"):
            assert (results / "partition" / name).is_file() and (results / "table4" / name).is_file()
