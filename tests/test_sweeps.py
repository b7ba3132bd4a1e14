"""Sweeps that lose nothing, with real processes: one process per run folder, unique default folders, a failed job
recorded while the sweep goes on, and a run that failed before training started again in its folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import SMOKE, run
from ratlit.training.run_claim import CLAIM_FILE, claim_folder, is_claimed
from ratlit.utils.errors import InputError


def _env(cwd: Path) -> dict[str, str]:
    env = {**os.environ, "RATLIT_CACHE": str(cwd / "cache"), "RATLIT_OUTPUTS": str(cwd / "outputs"),
           "HOME": str(cwd), "WANDB_SILENT": "true"}
    for key in ("WANDB_API_KEY", "WANDB_MODE", "RATLIT_SAM_CHECKPOINT"):
        env.pop(key, None)
    return env


def _together(cwd: Path, *calls: list[str]) -> list[subprocess.CompletedProcess]:
    """The ``ratlit.train`` calls started at the same moment, each waited for."""
    procs = [subprocess.Popen([sys.executable, "-m", "ratlit.train", *args], cwd=cwd, env=_env(cwd),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in calls]
    done = []
    for proc, args in zip(procs, calls):
        out, err = proc.communicate(timeout=400)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def test_a_claim_belongs_to_one_process_and_a_dead_holders_claim_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from ratlit.training.run_claim import claim_folder; "
                               f"claim_folder(Path({str(folder)!r})); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid}" in is_claimed(folder)
        with pytest.raises(InputError, match=f"run folder {folder} is in use by pid {holder.pid} on host"):
            claim_folder(folder)
    finally:
        holder.kill()  # SIGKILL: no clean release, the claim file stays behind unlocked
        holder.wait()
    assert (folder / CLAIM_FILE).exists() and is_claimed(folder) is None
    claim = claim_folder(folder)  # taken over: the kernel dropped the dead process's lock
    assert json.loads((folder / CLAIM_FILE).read_text())["pid"] == os.getpid()
    claim.release()
    assert not (folder / CLAIM_FILE).exists()


def test_two_trainings_into_one_folder_one_is_refused_and_writes_nothing(ct_root, tmp_path):
    folder = tmp_path / "shared"
    args = [*SMOKE, f"data.root={ct_root}", f"hydra.run.dir={folder}"]
    first, second = _together(tmp_path, args, args)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first.stderr[-2000:], second.stderr[-2000:])
    refused = first if first.returncode == 2 else second
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: run folder {folder} is in use by pid ") and len(lines) == 1, lines
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert checkpoints == ["best-step0000006.ckpt", "last.ckpt"]  # no -v1 copies of a second writer
    logged = (folder / "train.log").read_text()
    assert logged.count("run folder:") == 1  # one process's log only
    steps = [line.split(",") for line in (folder / "csv" / "metrics.csv").read_text().splitlines()[1:]]
    assert not (folder / CLAIM_FILE).exists() and steps


def test_two_runs_started_in_the_same_second_get_their_own_folders(ct_root, tmp_path):
    args = [*SMOKE, f"data.root={ct_root}", "trainer.max_steps=2", "test_after_fit=false"]
    done = _together(tmp_path, args, args)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    folders = sorted((tmp_path / "outputs" / "runs" / "ct").iterdir())
    assert len(folders) == 2 and all((f / "results.json").is_file() for f in folders)


def test_a_run_that_failed_before_training_is_started_again_in_its_folder(ct_root, tmp_path):
    folder = tmp_path / "again"
    bad = run("ratlit.train", *SMOKE, f"data.root={tmp_path / 'no_such_data'}", f"hydra.run.dir={folder}",
              cwd=tmp_path, check=False)
    assert bad.returncode == 2 and not (folder / "config.yaml").exists()
    resumed = run("ratlit.train", f"resume={folder}", cwd=tmp_path, check=False)
    assert resumed.returncode == 2 and "stopped before its first training step" in resumed.stderr + resumed.stdout
    run("ratlit.train", *SMOKE, f"data.root={ct_root}", f"hydra.run.dir={folder}", "test_after_fit=false",
        cwd=tmp_path)
    assert (folder / "config.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()


def test_a_sweep_goes_on_past_a_diverging_job_and_names_it_at_the_end(ct_root, tmp_path):
    result = run("ratlit.train", "-m", *SMOKE, f"data.root={ct_root}", "model.optimizer.lr=2e-4,1e30,3e-4",
                 "sweep_name=div", cwd=tmp_path, check=False)
    sweep = next((tmp_path / "outputs" / "sweeps" / "div").iterdir())
    records = {n: json.loads((sweep / str(n) / "results.json").read_text()) for n in range(3)}
    assert records[0].get("status") == records[2].get("status") == "finished", result.stderr[-3000:]
    assert records[0]["test"]["psnr"] > 0 and records[2]["test"]["psnr"] > 0  # the job after the failure ran
    failed = records[1]
    assert failed["status"] == "failed" and failed["phase"] in ("training", "validation")
    assert failed["error"].startswith((f"training step {failed['step']}: ", f"validation at step {failed['step']}: "))
    assert "NaN or infinite" in failed["error"]
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("[ratlit]   job ")]
    assert len(lines) == 1 and lines[0].startswith("[ratlit]   job 1 (model.optimizer.lr=1e+30) failed: ")
    assert not (sweep / CLAIM_FILE).exists()
