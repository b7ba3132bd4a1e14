"""The local parallel launcher: one sweep job per GPU, each pinned to its own device and CPU share."""

import multiprocessing as mp
import os

import pytest
from hydra import compose, initialize_config_dir

from ratlit.training.launch import claim_gpu, gpu_count
from ratlit.utils.config import CONF_DIR


def _claim(slot_dir, slots, barrier, queue):
    try:
        pin = claim_gpu(slot_dir, slots)
        again = claim_gpu(slot_dir, slots)  # a worker keeps its GPU for every later job
        queue.put((os.environ["CUDA_VISIBLE_DEVICES"], pin["slot"], tuple(pin["cpus"]), again["slot"] == pin["slot"]))
    except ValueError as err:
        queue.put(str(err))
    barrier.wait(timeout=60)  # hold the claim until every process has claimed


def test_parallel_jobs_get_distinct_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")  # a fake 4-GPU machine
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(tmp_path / "slots", 4, barrier, queue)) for _ in range(5)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    refused = [r for r in results if isinstance(r, str)]
    pinned = [r for r in results if not isinstance(r, str)]
    assert len(refused) == 1 and "all 4 GPU slots" in refused[0]  # a fifth concurrent job finds no free GPU
    assert sorted(gpu for gpu, *_ in pinned) == ["3", "5", "6", "7"]
    assert sorted(slot for _, slot, *_ in pinned) == [0, 1, 2, 3]
    assert all(sticky for *_, sticky in pinned)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 4:  # each job its own CPUs
        assert len({c for _, _, mine, _ in pinned for c in mine}) == sum(len(m) for _, _, m, _ in pinned)


def test_more_jobs_than_gpus_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    p = ctx.Process(target=_claim, args=(tmp_path / "slots", 3, barrier, queue))
    p.start()
    message = queue.get(timeout=60)
    barrier.wait(timeout=60)
    p.join(timeout=60)
    assert "n_jobs=3" in message and "2 GPU(s)" in message


def test_preset_runs_one_job_per_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2,4")
    assert gpu_count() == 3
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["run_dir=/tmp/ratlit-compose", "hydra/launcher=local_gpus"],
                      return_hydra_config=True)
    assert "joblib" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.n_jobs == 3


@pytest.mark.parametrize("value", ["highest", "high", "medium"])
def test_matmul_precision_key(value):
    import torch
    from omegaconf import OmegaConf

    from ratlit.training.launch import set_matmul_precision

    before = torch.get_float32_matmul_precision()
    try:
        set_matmul_precision(OmegaConf.create({"float32_matmul_precision": value}))
        assert torch.get_float32_matmul_precision() == value
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(ValueError, match="float32_matmul_precision must be one of"):
        set_matmul_precision(OmegaConf.create({"float32_matmul_precision": "tf32"}))


@pytest.mark.slow
def test_local_gpus_sweep_pins_each_job(ct_root, tmp_path):
    import re

    from helpers.commands import SMOKE, run

    run("ratlit.train", "-m", *SMOKE, f"data.root={ct_root}", "trainer=cpu", "hydra/launcher=local_gpus",
        "seed=1,2", "sweep_name=pin", "test_after_fit=false", cwd=tmp_path, env_extra={"CUDA_VISIBLE_DEVICES": "4,6"})
    sweep = next((tmp_path / "outputs" / "sweeps" / "pin").iterdir())
    logs = sorted(sweep.glob("*/train.log"))
    assert len(logs) == 2 and all((log.parent / "results.json").exists() for log in logs)
    gpus = [re.search(r"sweep job \d+: GPU (\d+)", log.read_text()).group(1) for log in logs]
    assert set(gpus) <= {"4", "6"}  # each job pinned to one of the machine's GPUs (distinct: see above)
