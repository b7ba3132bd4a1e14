"""The preflight of a CPU run: its step's memory and its planned time estimated before anything is built."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers.commands import run
from ratlit.training import preflight as pf
from ratlit.utils.config import CONF_DIR


def train_config(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_refusal_is_one_line_with_the_reason_the_cpu_preset_and_the_override():
    step = pf.StepEstimate(30_000_000_000, 50.0, "RAT, batch 8 of 1 x 192 x 192, 32-true")
    line = pf.refusal(step, 200000, 20_000_000_000, "pet")
    assert "\n" not in line
    assert "needs ~30.0 GB of memory and 20.0 GB are available" in line
    assert "200000 steps would take ~116 days" in line
    assert "experiment=cpu_pet" in line and "preflight=false" in line
    small = pf.StepEstimate(100_000_000, 0.2, "RAT, batch 4 of 1 x 64 x 64, 32-true")
    assert pf.refusal(small, 2000, 20_000_000_000, "pet") is None
    for task in ("ct", "pet", "pathology"):
        assert pf.cpu_preset(task) == f"experiment=cpu_{task}"


def test_available_memory_is_what_the_kernel_reports_at_most():
    available = pf.available_memory()
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert available is not None and 0 < available <= total


MEASURE = """
import sys, torch
from hydra import compose, initialize_config_dir
from ratlit.utils.config import CONF_DIR, instantiate
torch.set_num_threads(1)
with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[1:])
net = instantiate(cfg.model.net).train()
optimizer = torch.optim.Adam(net.parameters())
side, batch = int(cfg.data.patch_size), int(cfg.data.batch_size)
cell = torch.arange(side) // 16
regions = (cell[:, None] * side + cell[None, :]).expand(batch, side, side).contiguous()
lq = torch.rand(batch, 1, side, side)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again from the resident size now
    f.write("5")
(net(lq, regions) - lq).abs().mean().backward()
optimizer.step()
print(status("VmHWM:") - before)
"""


@pytest.mark.slow
def test_the_estimate_covers_a_measured_training_step():
    # A real step, in a fresh process (its peak resident memory is that step's), against the estimate made from
    # a smaller probe step: the estimate may be cautious, hardly short.
    overrides = ["model.net.width=16", "model.net.num_groups=2", "data.patch_size=192", "data.batch_size=2"]
    done = subprocess.run([sys.executable, "-c", MEASURE, *overrides], capture_output=True, text=True, check=True)
    measured = int(done.stdout.split()[-1])
    estimate = pf.estimate_step(train_config(*overrides))
    assert 0.9 * measured <= estimate.peak_bytes <= 2.5 * measured, (measured, estimate)


def test_the_estimate_follows_batch_patch_and_precision():
    base = pf.estimate_step(train_config("size=tiny", "data.patch_size=64", "data.batch_size=2"))
    larger = pf.estimate_step(train_config("size=tiny", "data.patch_size=128", "data.batch_size=4"))
    assert 6 < larger.peak_bytes / base.peak_bytes < 9  # 8x the pixels, the weights' share unchanged
    assert "batch 4 of 1 x 128 x 128, 32-true" in larger.what
    half = pf.estimate_step(train_config("size=tiny", "data.patch_size=128", "data.batch_size=4",
                                         "trainer.precision=bf16-mixed"))
    assert half.peak_bytes < larger.peak_bytes


@pytest.mark.slow
def test_the_headline_command_on_a_cpu_exits_at_once_building_nothing(tmp_path):
    start = time.perf_counter()
    result = run("ratlit.train", "task=pet", "attention=rmsa", cwd=tmp_path, check=False,
                 env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert time.perf_counter() - start < 60
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "too large for this CPU" in errors[0] and "experiment=cpu_pet" in errors[0]
    assert "preflight=false" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # no embedded set, no partitions


def test_a_gpu_run_is_not_checked(monkeypatch):
    cfg = train_config("task=pet", "trainer=gpu")
    monkeypatch.setattr(pf, "estimate_step", lambda cfg: pytest.fail("estimated a GPU run"))
    pf.preflight(cfg)
    cpu = train_config("task=pet", "trainer=cpu", "preflight=false")
    pf.preflight(cpu)  # the override: not estimated either
