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
    for proc, args in zip(procs, calls, strict=True):
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
    # A folder the failed run made itself is gone afterwards: a failed start leaves nothing behind.
    made = tmp_path / "made"
    bad = run("ratlit.train", *SMOKE, f"data.root={tmp_path / 'no_such_data'}", f"hydra.run.dir={made}",
              cwd=tmp_path, check=False)
    assert bad.returncode == 2 and not made.exists()
    # A folder the user made is kept, and neither blocks a new start nor passes for a run.
    folder = tmp_path / "again"
    folder.mkdir()
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


# Past 128 characters together: the keys a sweep varies must still lead every name.
LONG = [*SMOKE, "trainer.log_every_n_steps=1", "model.cuda_graph=false", "data.num_workers=0",
        "float32_matmul_precision=highest", "logger=wandb", "sweep_name=names"]


@pytest.fixture(scope="module")
def named_sweep(ct_root, tmp_path_factory):
    """attention x seed with a long override list, logged to W&B offline; its test images are one patient's."""
    cwd = tmp_path_factory.mktemp("named")
    (cwd / "split.json").write_text('{"train": ["P0", "P1"], "val": ["P2"], "test": ["P3"]}')
    run("ratlit.train", "-m", *LONG, f"data.root={ct_root}", f"data.splits={cwd / 'split.json'}",
        "attention=msa,rmsa", "seed=0,1", cwd=cwd)
    return next((cwd / "outputs" / "sweeps" / "names").iterdir())


def test_names_in_a_sweep_say_what_varies_in_folder_report_and_wandb(named_sweep):
    from helpers import wandb_offline

    expected = [(a, s) for a in ("msa", "rmsa") for s in (0, 1)]  # Hydra's job order
    names = []
    for num, (attention, seed) in enumerate(expected):
        folder = named_sweep / str(num)
        name = json.loads((folder / "results.json").read_text())["name"]
        assert name.startswith(f"attention={attention},seed={seed},") and len(name) <= 128, name
        names.append(name)
        records = wandb_offline.read_finished_run(folder)
        assert wandb_offline.of_type(records, "run")[0].display_name == name
        assert wandb_offline.of_type(records, "run")[0].run_group == "names"
        config = wandb_offline.config(records)
        assert (config["attention"], config["seed"]) == (attention, seed)
    assert len(set(names)) == 4 and any("~" in n for n in names)  # shortened by a hash, still four names
    run("ratlit.report", str(named_sweep), "--resamples", "200", cwd=named_sweep)
    report = (named_sweep / "report.md").read_text()
    assert all(f"| {n} (+1 seeds) |" in report for n in names[0::2]), report


def test_a_report_names_a_crashed_and_a_deleted_run_and_what_rows_rest_on(named_sweep, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(named_sweep, sweep)
    (sweep / "1" / "results.json").unlink()  # crashed: its folder without results
    shutil.rmtree(sweep / "3")  # deleted
    result = run("ratlit.report", str(sweep), "--resamples", "200", cwd=tmp_path)
    report = (sweep / "report.md").read_text()
    assert "4 jobs planned: 2 finished, 1 incomplete, 1 missing" in report, report
    assert "- job 1 (1) incomplete: no results.json (crashed or killed)" in report
    assert "- job 3 (3) missing: no folder" in report
    rows = [line for line in report.splitlines() if line.startswith("| attention=")]
    assert len(rows) == 2 and all("| 1 of 2 |" in row for row in rows), rows
    assert "incomplete" in result.stdout


def test_a_paired_report_over_images_of_one_patient_says_so(named_sweep, tmp_path):
    out = tmp_path / "paired"
    result = run("ratlit.report", str(named_sweep), "--reference", "attention=msa", "--resamples", "200",
                 "--out", str(out), cwd=tmp_path)
    with open(named_sweep / "0" / "test_results.csv") as f:
        header, *lines = f.read().splitlines()
    assert header.startswith("name,group,psnr") and len({line.split(",")[1] for line in lines}) == 1
    assert len(lines[0].split(",")[2].split(".")[1]) > 6  # full float precision, not 6 decimals
    paired = (out / "paired.md").read_text()
    assert "come from one group (patient / slide)" in paired and "come from one group" in result.stdout
    row = next(line for line in paired.splitlines() if "| PSNR |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[8:10] == [str(len(lines)), "1"] and cells[10] == "2 vs 2 paired", cells
