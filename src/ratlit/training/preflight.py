"""A run's preflight, before it builds anything (data set, partitions, model): on a CPU, a run whose training
step would not fit in the memory this process may use, or whose planned steps would take more than
``MAX_HOURS``, is refused in one line naming the reason, the task's CPU preset and the override that runs it
anyway (``preflight=false``). A GPU run is not checked.

The estimate comes from a real step of the run's own network, small: one forward and backward of batch 1 at
``PROBE_SIDE`` pixels (less when the run's patches are smaller), in the run's precision. What autograd keeps
for backward grows with the pixels of a step, so it is scaled to the run's batch x patch; the step's peak is
that times ``PEAK_OVER_SAVED`` (the rest: temporaries of the backward pass) plus the weights, their gradients
and Adam's two moments. docs/preflight.md compares the estimate with measured steps.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ratlit.utils.config import CONF_DIR

log = logging.getLogger(__name__)

MAX_HOURS = 24.0  # "about a day": longer on a CPU is refused
PROBE_SIDE = 64
PEAK_OVER_SAVED = 1.35  # docs/preflight.md: measured peaks over saved bytes, rounded up
PARAM_BYTES = 16  # float32 weight, gradient and Adam's two moments
OVERRIDE = "preflight=false"


def duration_text(seconds: float) -> str:
    """``~139 h``, ``~25 min``, ``~12 days`` (from ten days on): a rough duration for a log line."""
    if seconds >= 10 * 86400:
        return f"~{seconds / 86400:.0f} days"
    return f"~{seconds / 3600:.0f} h" if seconds >= 5400 else f"~{seconds / 60:.0f} min"


def gigabytes(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def cpu_preset(task: str | None) -> str:
    """The experiment preset meant for a CPU run of ``task`` (conf/experiment/cpu_<task>.yaml), else smoke."""
    name = f"cpu_{task}"
    return f"experiment={name}" if task and (CONF_DIR / "experiment" / f"{name}.yaml").is_file() else "experiment=smoke"


@dataclass(frozen=True)
class StepEstimate:
    """One training step of a run on this CPU: its peak memory (bytes) and its duration (seconds)."""

    peak_bytes: int
    seconds: float
    what: str  # the step in words, e.g. "RAT, batch 8 of 1 x 256 x 256, 32-true"


def on_cpu(trainer_cfg: Any) -> bool:
    """Whether the trainer config runs on the CPU (``auto`` does where no GPU is visible)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    from lightning.fabric.accelerators.cuda import num_cuda_devices
    from lightning.fabric.accelerators.mps import MPSAccelerator

    return num_cuda_devices() == 0 and not MPSAccelerator.is_available()  # counted without starting CUDA


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """What this process's memory cgroup (v2, or v1) still allows: its limit less its use, reclaimable page
    cache counted as free; None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    room: list[int] = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2: the limit of this group and of every group above it
            folder = Path("/sys/fs/cgroup") / rel.lstrip("/")
            for group in [folder, *folder.parents]:
                if not str(group).startswith("/sys/fs/cgroup"):
                    break
                limit, used = _read_int(group / "memory.max"), _read_int(group / "memory.current")
                if limit is not None and used is not None:
                    room.append(limit - used + _inactive_file(group / "memory.stat"))
        elif "memory" in controllers.split(","):
            group = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            for folder in (group, Path("/sys/fs/cgroup/memory")):
                limit = _read_int(folder / "memory.limit_in_bytes")
                used = _read_int(folder / "memory.usage_in_bytes")
                if limit is not None and used is not None and limit < 1 << 60:
                    room.append(limit - used + _inactive_file(folder / "memory.stat"))
                    break
    return min(room) if room else None


def _inactive_file(stat: Path) -> int:
    try:
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def available_memory() -> int | None:
    """Bytes this process may still take: the kernel's MemAvailable, or its cgroup's headroom when smaller."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(max(headroom, 0))
    return min(found) if found else None


def _precision_context(precision: str, net: torch.nn.Module) -> tuple[Any, torch.dtype]:
    """How a step runs in Lightning's ``precision``: an autocast context and the input's dtype."""
    if precision in ("bf16-mixed", "16-mixed"):
        return torch.autocast("cpu", dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16), \
            torch.float32
    dtype = {"bf16-true": torch.bfloat16, "bf16": torch.bfloat16, "16-true": torch.float16, "16": torch.float16,
             "64-true": torch.float64, "64": torch.float64}.get(precision, torch.float32)
    net.to(dtype)
    return nullcontext(), dtype


def probe_step(net: torch.nn.Module, channels: int, side: int, precision: str = "32-true") -> tuple[int, float]:
    """Real training steps (forward, loss, backward) of ``net`` on batch 1 of ``channels x side x side``: the
    bytes autograd kept for backward (weights left out) and the seconds the second step took."""
    context, dtype = _precision_context(precision, net)
    net.train()
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    cell = torch.arange(side) // 16  # square regions of 16 x 16 pixels, about SLIC's
    regions = (cell[:, None] * side + cell[None, :])[None]
    lq = torch.rand(1, channels, side, side, dtype=dtype)
    seconds = 0.0
    for _ in range(2):  # the second step is timed: the first one pays for first-call set-up
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), context:
            out = net(lq, regions)
        (out.float() - lq.float()).abs().mean().backward()
        seconds = time.perf_counter() - start
        del out
    return sum(saved.values()), seconds


def estimate_step(cfg: DictConfig) -> StepEstimate:
    """The training step of the run ``cfg`` on this CPU, from :func:`probe_step` on its own network."""
    from ratlit.utils.config import instantiate

    batch, patch = int(cfg.data.batch_size), int(cfg.data.patch_size)
    channels = int(cfg.in_channels)
    precision = str(cfg.trainer.get("precision", "32-true"))
    side = min(PROBE_SIDE, patch)
    threads = torch.get_num_threads()
    net = instantiate(cfg.model.net)
    try:
        saved, seconds = probe_step(net, channels, side, precision)
    finally:
        torch.set_num_threads(threads)
    params = sum(p.numel() for p in net.parameters())
    scale = batch * patch * patch / (side * side)
    peak = int(saved * scale * PEAK_OVER_SAVED + params * PARAM_BYTES)
    name = str(cfg.model.net.get("_target_", "network")).rsplit(".", 1)[-1]
    return StepEstimate(peak, seconds * scale, f"{name}, batch {batch} of {channels} x {patch} x {patch}, {precision}")


def refusal(step: StepEstimate, planned_steps: int | None, available: int | None, task: str | None) -> str | None:
    """The one line refusing a CPU run, or None when its step fits and its steps end within ``MAX_HOURS``."""
    reasons = []
    if available is not None and step.peak_bytes > available:
        reasons.append(f"one training step ({step.what}) needs ~{gigabytes(step.peak_bytes)} of memory and "
                       f"{gigabytes(available)} are available")
    if planned_steps is not None and planned_steps > 0:
        total = planned_steps * step.seconds
        if total > MAX_HOURS * 3600:
            reasons.append(f"its {planned_steps} steps would take {duration_text(total)} at ~{step.seconds:.3g} s "
                           f"per step (estimated)")
    if not reasons:
        return None
    return (f"this run is too large for this CPU: {'; '.join(reasons)}. For a CPU run {cpu_preset(task)} "
            f"(or train on a GPU), or add {OVERRIDE} to run it anyway")


def preflight(cfg: DictConfig) -> None:
    """Refuse (:class:`ratlit.utils.errors.InputError`) a CPU run that would not fit or not end in a day."""
    from ratlit.utils.errors import InputError

    if not cfg.get("preflight", True) or not on_cpu(cfg.trainer):
        return
    if int(cfg.data.batch_size) < 1 or int(cfg.data.patch_size) < 1:
        return  # the DataModule names the bad value
    start = time.perf_counter()
    step = estimate_step(cfg)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    line = refusal(step, None if max_steps is None else int(max_steps), available_memory(),
                   cfg.get("task_name"))
    log.debug("preflight in %.1f s: %s, ~%.3g s per step, peak ~%s", time.perf_counter() - start, step.what,
              step.seconds, gigabytes(step.peak_bytes))
    if line is not None:
        raise InputError(line)


def planned_time_problem(rate: float, planned: int, step: int, limit_h: float, task: str | None) -> str | None:
    """For :class:`ratlit.training.guardrails.CpuTimeEstimate`: the warning when the rest of the planned steps,
    at the measured ``rate`` (steps/s), would take more than ``limit_h`` hours."""
    remaining = (planned - step) / rate
    if remaining <= limit_h * 3600:
        return None
    return (f"at {rate:.3g} steps/s the {planned} steps take {duration_text(remaining)} on this CPU; "
            f"for a CPU try {cpu_preset(task)} or experiment=smoke (or fewer trainer.max_steps)")
