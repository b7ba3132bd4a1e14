"""Real signals to a real training process: SIGTERM and SIGINT save last.ckpt at the current step
and exit 143 / 130 with one line naming it and the resume command; the resume repeats no step; SLURM's
warning signal requeues the job, whose next start resumes by itself."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.commands import SMOKE, run

pytestmark = pytest.mark.slow
SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ratlit", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}  # one task of a SLURM job


def start(cwd: Path, run_dir: Path, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "RATLIT_CACHE": str(cwd / "cache"), "RATLIT_OUTPUTS": str(cwd / "outputs"),
           "HOME": str(cwd), "WANDB_SILENT": "true", **(env_extra or {})}
    logs = run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}"  # files, not pipes: tqdm fills a pipe
    process = subprocess.Popen([sys.executable, "-m", "ratlit.train", *SMOKE, "trainer.max_steps=500",
                                "trainer.val_check_interval=5", f"hydra.run.dir={run_dir}", *args],
                               cwd=cwd, env=env, stdout=open(f"{logs}.out", "w"), stderr=open(f"{logs}.err", "w"))
    process.logs = logs
    return process


def output(process: subprocess.Popen, timeout: float = 400) -> tuple[str, str]:
    process.wait(timeout=timeout)
    return Path(f"{process.logs}.out").read_text(), Path(f"{process.logs}.err").read_text()


def logged_steps(run_dir: Path) -> list[tuple[int, str]]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(int(r["step"]), k) for r in csv.DictReader(f) for k, v in r.items()
                if v and k not in ("step", "epoch")]


def stop_after(process: subprocess.Popen, run_dir: Path, signum: int, steps: int = 12) -> tuple[str, str]:
    deadline = time.time() + 300
    while max((s for s, k in logged_steps(run_dir) if k == "train/loss"), default=-1) < steps:
        assert process.poll() is None and time.time() < deadline, (process.returncode, output(process)[1][-3000:])
        time.sleep(0.2)
    process.send_signal(signum)
    out, err = output(process)
    assert process.returncode == 128 + signum, err[-3000:]
    return out, err


def stopped_line(out: str, run_dir: Path, name: str) -> int:
    lines = [line for line in out.splitlines() if line.startswith(f"[ratlit] stopped by {name}")]
    assert len(lines) == 1, out
    match = re.search(r"at step (\d+): checkpoint (\S+) \(step (\d+)\); continue with: "
                      r"python -m ratlit.train resume=(\S+)$", lines[0])
    assert match, lines[0]
    step = int(match[1])
    assert match[2] == str(run_dir / "checkpoints" / "last.ckpt") and int(match[3]) == step
    assert match[4] == str(run_dir)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
    return step


def assert_no_step_twice(run_dir: Path, last: int) -> None:
    seen = logged_steps(run_dir)
    assert len(seen) == len(set(seen)), [k for k in seen if seen.count(k) > 1][:5]
    assert sorted(s for s, k in seen if k == "train/loss") == list(range(last))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_resume_repeats_none(ct_root, tmp_path, signum):  # noqa: F811
    run_dir = tmp_path / "run"
    out, err = stop_after(start(tmp_path, run_dir, f"data.root={ct_root}"), run_dir, signum)
    step = stopped_line(out, run_dir, signal.Signals(signum).name)
    assert step >= 12 and "Traceback" not in err
    resumed = run("ratlit.train", f"resume={run_dir}", f"trainer.max_steps={step + 3}", cwd=tmp_path)
    assert "best val PSNR" in resumed.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step + 3
    assert_no_step_twice(run_dir, step + 3)


def test_slurm_warning_requeues_and_the_requeued_job_resumes_by_itself(ct_root, tmp_path):  # noqa: F811
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # records the call instead of asking a SLURM controller
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    scontrol.chmod(0o755)
    slurm = {**SLURM_TASK, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run_dir = tmp_path / "job"  # a sweep job's folder: the same on every start of the job
    args = (f"data.root={ct_root}", "trainer.max_steps=20")
    out, err = stop_after(start(tmp_path, run_dir, *args, env_extra=slurm), run_dir, signal.SIGUSR1, steps=6)
    step = stopped_line(out.replace("; SLURM job 4242 requeued; it resumes from there", ""), run_dir, "SIGUSR1")
    assert "SLURM job 4242 requeued" in out and (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    again = start(tmp_path, run_dir, *args, env_extra={**slurm, "SLURM_RESTART_COUNT": "1"})
    out, err = output(again)
    assert again.returncode == 0, err[-3000:]
    assert "already holds a run" not in err and "best val PSNR" in out
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 20
    assert_no_step_twice(run_dir, 20) and step < 20


SIGNAL_IN_VALIDATION = '''
import os, signal
from lightning.pytorch.callbacks import Callback

class TermInValidation(Callback):
    """Sends this process a real SIGTERM as a validation batch starts after step 10, once, in the first run only."""
    sent = False

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        armed = os.environ.get("TERM_IN_VALIDATION") == "1"
        if armed and trainer.global_step >= 10 and not trainer.sanity_checking and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
'''


def test_a_sigterm_during_validation_saves_the_step_and_the_resume_repeats_none(ct_root, tmp_path):  # noqa: F811
    (tmp_path / "signal_in_validation.py").write_text(SIGNAL_IN_VALIDATION)
    run_dir = tmp_path / "run"
    process = start(tmp_path, run_dir, f"data.root={ct_root}", "+callbacks.term._target_=signal_in_validation."
                    "TermInValidation", "trusted_targets=[signal_in_validation]", "data.val_fraction=0.5",
                    "data.batch_size=1",
                    env_extra={"TERM_IN_VALIDATION": "1",
                               "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    out, err = output(process)
    assert process.returncode == 143, err[-3000:]
    step = stopped_line(out, run_dir, "SIGTERM")
    assert step == 10 and "Traceback" not in err
    # The saved config names the callback; the resume imports it from its working folder, unarmed, once trusted
    # again (a run folder cannot vouch for its own targets).
    resumed = run("ratlit.train", f"resume={run_dir}", "trainer.max_steps=13", "trusted_targets=[signal_in_validation]",
                  cwd=tmp_path)
    assert "best val PSNR" in resumed.stdout
    assert_no_step_twice(run_dir, 13)



def test_the_slurm_environment_is_the_runs_own_object(monkeypatch):
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from ratlit.training.preemption import StopOnSignals, slurm_environment

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    plugins = []
    assert slurm_environment(plugins) is None and plugins == []  # not under SLURM: Lightning's default
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    environment = slurm_environment(plugins)
    assert isinstance(environment, SLURMEnvironment) and plugins == [environment]  # what Lightning would detect
    assert StopOnSignals(environment).requeue_signal == signal.SIGUSR1
    own = SLURMEnvironment(auto_requeue=False)
    assert slurm_environment(given := [own]) is own and given == [own]
    assert StopOnSignals(own).requeue_signal is None  # no requeue: SIGUSR1 left alone
    assert slurm_environment(given := [LightningEnvironment()]) is None and len(given) == 1  # another one chosen
