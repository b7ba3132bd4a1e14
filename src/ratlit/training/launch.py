"""How a run's process starts: launch checks (no DDP inside a local multirun), the float32 matmul precision, and
one sweep job per GPU on one machine: ``python -m ratlit.train -m hydra/launcher=local_gpus ...``.

The preset (conf/hydra/launcher/local_gpus.yaml) runs ``n_jobs`` jobs at once with hydra-joblib-launcher,
one job per GPU. joblib's loky workers are processes that run job after job, so a GPU belongs to a worker,
not to a job number: the first job in a worker claims a free slot (an exclusive lock file in the sweep
folder, held until the worker exits) and pins the process to that slot's GPU by ``CUDA_VISIBLE_DEVICES``
before CUDA starts, together with its share of the CPUs (affinity, torch threads, data-loader workers).
Jobs that run at the same time are in different workers and so on different GPUs, however long each takes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)
_PIN: dict[str, object] = {}  # this process's claim: slot, gpu, cpus, and the open lock file


def gpu_count() -> int:
    """GPUs this process may use, counted without starting CUDA (which would freeze CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if done.returncode == 0:
            return max(1, sum(line.startswith("GPU ") for line in done.stdout.splitlines()))
    return 1


if not OmegaConf.has_resolver("ratlit_gpu_count"):
    OmegaConf.register_new_resolver("ratlit_gpu_count", gpu_count)


def claim_gpu(slot_dir: Path, slots: int) -> dict[str, object]:
    """Claim a free slot of ``slots`` for this process (once; later calls return the same claim) and pin to it.

    Sets ``CUDA_VISIBLE_DEVICES`` to the slot's GPU (from the inherited list, else the slot number) and the CPU
    affinity to the slot's share of this process's CPUs. Raises ValueError when every slot is taken.
    """
    if _PIN:
        return _PIN
    import torch

    if torch.cuda.is_initialized():
        raise ValueError("claim_gpu must run before CUDA starts in this process")
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    gpus = inherited or [str(i) for i in range(slots)]
    if slots > len(gpus):
        raise InputError(f"hydra.launcher.n_jobs={slots} but only {len(gpus)} GPU(s) are visible "
                         f"(CUDA_VISIBLE_DEVICES={','.join(gpus)}); use at most one job per GPU")
    slot_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(slots):
        handle = open(slot_dir / f"slot{slot}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        cpus = sorted(os.sched_getaffinity(0))
        share = max(1, len(cpus) // slots)
        mine = cpus[slot * share:(slot + 1) * share] or cpus[-share:]
        os.sched_setaffinity(0, mine)
        torch.set_num_threads(len(mine))
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot]
        _PIN.update(slot=slot, gpu=gpus[slot], cpus=mine, lock=handle)
        return _PIN
    raise InputError(f"all {slots} GPU slots in {slot_dir} are taken: more parallel jobs than hydra.launcher.n_jobs")


def pin_parallel_job(cfg: DictConfig) -> None:
    """Under the ``local_gpus`` launcher, pin this sweep job to its GPU and CPU share (no-op otherwise)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or "joblib" not in str(hydra_cfg.launcher.get("_target_", "")):
        return
    slots = int(hydra_cfg.launcher.n_jobs)
    if slots < 1:
        raise InputError(f"hydra.launcher.n_jobs must be the number of GPUs (>= 1), got {slots}")
    pin = claim_gpu(Path(hydra_cfg.sweep.dir) / ".gpu_slots", slots)
    workers = cfg.get("data", {}).get("num_workers") if "data" in cfg else None
    if workers is not None and int(workers) > len(pin["cpus"]):
        with open_dict(cfg):
            cfg.data.num_workers = len(pin["cpus"])
    log.info("sweep job %s: GPU %s (slot %s), CPUs %s", hydra_cfg.job.num, pin["gpu"], pin["slot"], pin["cpus"])


def is_multi_process(trainer_cfg: DictConfig) -> bool:
    """Whether the trainer config starts more than one process (several devices or nodes)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        many = len(devices) > 1
    elif devices in ("auto", -1, "-1"):
        many = torch.cuda.device_count() > 1
    else:
        many = int(devices) > 1
    return many or int(trainer_cfg.get("num_nodes", 1) or 1) > 1


def check_launch(cfg: DictConfig) -> None:
    """Refuse DDP inside a local Hydra multirun (Lightning #15737): children would re-start the sweep."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and is_multi_process(cfg.trainer) and "submitit" not in launcher:
        raise InputError(
            "a multirun (-m) cannot use a multi-process trainer (several devices or nodes): Lightning's DDP "
            "launcher would re-start the sweep in every child. Run the sweep one job per GPU "
            "(trainer.devices=1, jobs one after another), or as a SLURM array with hydra/launcher=slurm, "
            "where each job may use several GPUs."
        )


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(cfg: DictConfig) -> None:
    """``float32_matmul_precision`` (TF32 on Ampere+ GPUs at ``high``), set before the trainer exists."""
    precision = str(cfg.get("float32_matmul_precision", "high"))
    if precision not in MATMUL_PRECISIONS:
        raise InputError(f"float32_matmul_precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    torch.set_float32_matmul_precision(precision)
