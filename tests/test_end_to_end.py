"""The experiment suite end to end, through its command lines: train, evaluate, predict, sweeps, report."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from helpers.commands import SMOKE, run
from helpers.scans import tiny_ct
from ratlit.data.ct import write_ct_series
from ratlit.data.io import write_nifti

pytestmark = pytest.mark.slow  # subprocess runs of the command lines


def only_run(cwd: Path, task="ct") -> Path:
    runs = sorted((cwd / "outputs" / "runs" / task).iterdir())
    assert len(runs) == 1
    return runs[0]


def test_smoke_train_then_evaluate_and_predict(ct_root, tmp_path):
    train = run("ratlit.train", *SMOKE, f"data.root={ct_root}", "callbacks.training_speed.skip=2", cwd=tmp_path)
    assert "[ratlit] ct rmsa/FocalRegionLoss partition=slic: best val PSNR" in train.stdout
    run_dir = only_run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["partition"]["name"] == "slic"
    assert results["speed"]["timed_steps"] == 4 and results["speed"]["steps_per_sec"] > 0
    assert results["speed"]["warmup_s"] > 0 and "train/steps_per_sec" in (run_dir / "csv" / "metrics.csv").read_text()
    assert results["test"]["psnr"] > 0 and results["best_checkpoint"].endswith(".ckpt")
    assert results["best_val"]["ssim"] is not None and results["best_val"]["step"] in (3, 6)
    assert f"/ SSIM {results['best_val']['ssim']:.4f}" in train.stdout
    gain = results["test"]["psnr"] - results["input"]["psnr"]
    assert results["gain"]["psnr"] == pytest.approx(gain) and f"(input {results['input']['psnr']:.2f}, " in train.stdout
    assert "LeafSpec" not in train.stderr and "Tip:" not in train.stdout + train.stderr
    saved = (run_dir / "config.yaml").read_text()
    assert "partition_used:" in saved and "_target_: ratlit.data.CTDataModule" in saved
    assert "train_image_shape:\n- 48\n- 48\n" in saved  # the fixture's slices: predict keeps their region density
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "csv" / "metrics.csv").exists()
    assert list((run_dir / "panels").glob("*.png"))
    test_patients = json.loads((run_dir / "splits.json").read_text())["test"]
    assert test_patients  # 2 slices per patient: one row each
    assert len((run_dir / "test_results.csv").read_text().splitlines()) == 1 + 2 * len(test_patients)

    ckpt = results["best_checkpoint"]
    evaluation = run("ratlit.evaluate", f"ckpt={ckpt}", cwd=tmp_path)
    assert "| best-" in evaluation.stdout and " ± " in evaluation.stdout
    saved_eval = json.loads((run_dir / "eval" / "eval_test.json").read_text())
    assert saved_eval["psnr"] == pytest.approx(results["test"]["psnr"], abs=1e-3)
    shutil.copytree(ct_root, tmp_path / "moved")  # HOME is tmp_path: data.root=~/moved, as documented
    run("ratlit.evaluate", f"ckpt={ckpt}", "data.root=~/moved", "out=moved_eval", cwd=tmp_path)
    moved_eval = json.loads((tmp_path / "moved_eval" / "eval_test.json").read_text())
    assert moved_eval["psnr"] == pytest.approx(results["test"]["psnr"], abs=1e-3)
    assert moved_eval["data"]["root"] == str(tmp_path / "moved")

    run("ratlit.predict", f"ckpt={ckpt}", f"input={ct_root / 'P0' / 'quarter_1mm'}", "output=restored", cwd=tmp_path)
    for name in ("0001.dcm", "0002.dcm"):
        before = pydicom.dcmread(ct_root / "P0" / "quarter_1mm" / name)
        after = pydicom.dcmread(tmp_path / "restored" / name)
        assert after.PatientID == before.PatientID and after.pixel_array.shape == before.pixel_array.shape
        assert after.SOPInstanceUID != before.SOPInstanceUID and after.SeriesInstanceUID != before.SeriesInstanceUID
        assert "restored" in after.SeriesDescription
        assert not np.array_equal(after.pixel_array, before.pixel_array)

    volume = np.random.default_rng(1).uniform(0, 3, (40, 36, 5)).astype(np.float32)
    write_nifti(tmp_path / "scan.nii.gz", volume, (2.0, 2.0, 3.0))
    run("ratlit.predict", f"ckpt={ckpt}", "input=scan.nii.gz", "output=restored_nii", cwd=tmp_path)
    import nibabel as nib

    src, out = nib.load(tmp_path / "scan.nii.gz"), nib.load(tmp_path / "restored_nii" / "scan.nii.gz")
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)


def test_sweep_with_wandb_offline_and_report(ct_root, tmp_path):
    result = run("ratlit.train", "-m", *SMOKE, f"data.root={ct_root}", "attention=msa,wmsa,rmsa",
                 "logger=wandb", "sweep_name=t4", cwd=tmp_path)
    sweep = next((tmp_path / "outputs" / "sweeps" / "t4").iterdir())
    runs = sorted(p for p in sweep.iterdir() if (p / "results.json").exists())
    assert len(runs) == 3, result.stdout[-2000:]
    offline = [list((r / "wandb").glob("offline-run-*")) for r in runs]
    assert all(len(o) == 1 for o in offline)  # one W&B run per job, none shared
    assert len({o[0].name for o in offline}) == 3
    report = run("ratlit.report", str(sweep), cwd=tmp_path)
    table, accounting = (sweep / "report.md").read_text().split("\n\n", 1)
    lines = table.splitlines()
    assert lines[0].startswith("| run | attention |") and len(lines) == 2 + 1 + 3
    assert ": 3 jobs planned: 3 finished" in accounting.splitlines()[0]
    assert lines[2].startswith("| input |")  # the input's own score first
    assert {"msa", "wmsa", "rmsa"} == {line.split("|")[2].strip() for line in lines[3:]}
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG" and (sweep / "report.csv").exists()
    assert "± " in report.stdout
    columns = json.loads((runs[0] / "results.json").read_text())["columns"]
    assert (columns["loss"], columns["seed"]) == ("fr", 0)  # the loss as typed (the config's choice), the seed
    with open(sweep / "paired.csv", newline="") as f:
        paired = list(csv.DictReader(f))
    assert len(paired) == 2 * 2 and {r["reference"] for r in paired} == {lines[3].split("|")[1].strip()}
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in paired)


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return sorted({int(row["step"]) for row in csv.DictReader(f)})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_continues_from_the_last_checkpoint(ct_root, tmp_path):
    # Shorter than val_check_interval: still validated at the end, so a best checkpoint exists.
    first = run("ratlit.train", *SMOKE, "trainer.val_check_interval=100", f"data.root={ct_root}",
                "test_after_fit=false", cwd=tmp_path)
    run_dir = only_run(tmp_path)
    assert "checkpoint None" not in first.stdout and f"| checkpoint {run_dir}/checkpoints/best-" in first.stdout
    splits = json.loads((run_dir / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == ["P0", "P1", "P2", "P3"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["splits"] == splits  # and so the checkpoint
    steps = _steps(run_dir)
    kept = {name: data for name, data in _snapshot(run_dir).items() if not name.startswith((".hydra", "train.log"))}
    again = run("ratlit.train", *SMOKE, f"data.root={ct_root}", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert again.returncode == 2 and f"run folder {run_dir} already holds a run: resume=" in again.stdout + again.stderr
    assert {name: data for name, data in _snapshot(run_dir).items() if name in kept} == kept  # nothing overwritten
    refused = run("ratlit.train", f"resume={run_dir}", "attention=msa", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "names no value of the saved run config" in refused.stdout + refused.stderr
    resumed = run("ratlit.train", f"resume={run_dir}", "trainer.max_steps=9", cwd=tmp_path)
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in (
        resumed.stdout + resumed.stderr
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 9
    assert "max_steps: 9" in (run_dir / "config.yaml").read_text()
    resumed_steps = _steps(run_dir)
    assert only_run(tmp_path) == run_dir and list((run_dir / ".hydra").glob("resume-*"))  # no new dated folder
    assert resumed_steps[: len(steps)] == steps and resumed_steps[-1] > steps[-1]  # history kept, then more

    # A copy of the run folder is a run of its own: it resumes in itself; the original stays byte-identical.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = _snapshot(run_dir)
    run("ratlit.train", "resume=copy", "trainer.max_steps=12", cwd=tmp_path)
    assert _snapshot(run_dir) == before
    copied = json.loads((copy / "results.json").read_text())
    assert copied["steps"] == 12 and copied["best_checkpoint"].startswith(str(copy))
    for folder in (run_dir, copy):  # each step's training loss once, however often the run was resumed
        with open(folder / "csv" / "metrics.csv", newline="") as f:
            losses = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
        assert len(losses) == len(set(losses)), losses
    assert _steps(copy)[: len(resumed_steps)] == resumed_steps, (_steps(copy), resumed_steps)
    assert f"run_dir: {copy}" in (copy / "config.yaml").read_text()


@pytest.fixture(scope="module")
def ct_odd_root(tmp_path_factory):
    """4 patients x 3 slices: a patient's 3 test images do not share evenly over 2 processes."""
    return tiny_ct(tmp_path_factory.mktemp("aapm3"), 1, 40, 3, 8, lambda p: 20 + 10 * p)


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _odd_split(tmp_path: Path) -> str:
    (tmp_path / "split.json").write_text('{"train": ["P0", "P1"], "val": ["P2"], "test": ["P3"]}')
    return f"data.splits={tmp_path / 'split.json'}"


def test_two_process_cpu_ddp(ct_odd_root, tmp_path):
    result = run("ratlit.train", *SMOKE, f"data.root={ct_odd_root}", _odd_split(tmp_path), *DDP, cwd=tmp_path)
    run_dir = only_run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["test"]["psnr"] > 0
    assert result.stdout.count("[ratlit] ct") == 1  # one summary: rank 0
    with open(run_dir / "test_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test_patients = json.loads((run_dir / "splits.json").read_text())["test"]
    assert len(test_patients) == 1 and len(rows) == 3 == len({r["name"] for r in rows})  # padded copy dropped
    for key in ("input_psnr", "psnr"):  # each image counted once in the summary too
        assert results["test" if key == "psnr" else "input"]["psnr"] == pytest.approx(
            np.mean([float(r[key]) for r in rows]), abs=1e-4)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_a_dead_ddp_rank_stops_the_run_naming_it_and_resume_works(ct_odd_root, tmp_path):
    import signal
    import time

    import torch

    env = {**os.environ, "RATLIT_CACHE": str(tmp_path / "cache"), "RATLIT_OUTPUTS": str(tmp_path / "outputs"),
           "HOME": str(tmp_path), "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "ratlit.train", *SMOKE, "trainer.max_steps=100000",
                             "preflight=false", f"data.root={ct_odd_root}", _odd_split(tmp_path), *DDP],
                            cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "outputs").rglob("last.ckpt")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(1)
        ranks = [c for c in _children(proc.pid) if b"ratlit.train" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(ranks) == 1
        os.kill(ranks[0], signal.SIGKILL)
        killed = time.time()
        out, err = proc.communicate(timeout=90)
        assert time.time() - killed < 60 and proc.returncode != 0
        assert f"[ratlit] DDP rank 1 (pid {ranks[0]}) ended with signal 9 (SIGKILL): stopping this run" in err
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = only_run(tmp_path)
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]
    run("ratlit.train", f"resume={run_dir}", f"trainer.max_steps={step + 3}", cwd=tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == step + 3 and results["resumes"][0]["from_step"] == step


def test_sweep_with_ddp_is_refused(ct_root, tmp_path):
    result = run("ratlit.train", "-m", *SMOKE, f"data.root={ct_root}", "trainer=ddp", "trainer.devices=2",
                 "attention=msa,rmsa", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "cannot use a multi-process trainer" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["attention=swin"], "attention=swin: no such option; attention is one of msa, none, rmsa, wmsa"),
        (["data.patch_size=-1"], "patch_size and batch_size must be positive"),
        (["data.root=/no/such/folder"], "data root /no/such/folder does not exist"),
        (["model.net.scale_by=sqrt"], "scale_by must be one of"),
    ],
)
def test_bad_overrides(ct_root, tmp_path, args, message):
    model_error = args[0].startswith("model.")
    # A model value is checked before the data is listed: on the embedded default set, nothing gets built.
    data = [] if model_error else [f"data.root={ct_root}"]
    result = run("ratlit.train", "experiment=smoke", *data, *args, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    if model_error:
        assert not (tmp_path / "cache").exists()


def test_missing_and_bad_checkpoints(tmp_path):
    result = run("ratlit.evaluate", "ckpt=missing.ckpt", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "checkpoint not found" in result.stderr + result.stdout
    (tmp_path / "bad.ckpt").write_bytes(b"junk")
    result = run("ratlit.predict", "ckpt=bad.ckpt", "input=x", "output=y", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr + result.stdout
    result = run("ratlit.train", "resume=nowhere", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "nowhere: no such folder" in result.stderr + result.stdout
    assert not (tmp_path / "nowhere").exists()  # nothing made for a resume of nothing


def _one_line_error(result, message):
    output = result.stdout + result.stderr
    assert result.returncode == 2 and message in output and "Traceback" not in output, output[-3000:]


def test_bad_checkpoint_forms_are_one_line_everywhere(tmp_path):
    import pickle

    import torch

    torch.save({"state_dict": {}, "ratlit_config": "lr: 0.1\n"}, tmp_path / "foreign.ckpt")
    _one_line_error(run("ratlit.evaluate", "ckpt=foreign.ckpt", cwd=tmp_path, check=False), "not a run config")
    _one_line_error(run("ratlit.predict", "ckpt=foreign.ckpt", "input=x", "output=y", cwd=tmp_path, check=False),
                    "not a run config")
    run_dir = tmp_path / "old_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("task_name: ct\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps({"state_dict": os.getcwd}))  # not weights
    _one_line_error(run("ratlit.train", "resume=old_run", cwd=tmp_path, check=False),
                    f"cannot read checkpoint {run_dir / 'checkpoints' / 'last.ckpt'}: UnpicklingError")
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    _one_line_error(run("ratlit.evaluate", "ckpt=old_run", cwd=tmp_path, check=False), "a folder without checkpoints")


def test_predict_folder_is_all_or_nothing_with_a_non_ascii_path(tmp_path):
    from helpers.checkpoints import make_checkpoint
    from ratlit.data.io import write_image

    folder = tmp_path / "données"  # passed unquoted: Hydra's lexer alone rejects the é
    write_image(folder / "photo.png", np.full((1, 32, 32), 0.5))
    write_nifti(folder / "scan.nii.gz", np.full((32, 32, 2), 40.0, np.float32))
    write_ct_series(folder, [np.full((32, 32), 40.0)], "P0", "QD", 0.7, [0.0], "1.2.3")
    ds = pydicom.dcmread(folder / "0001.dcm")
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(folder / "0001.dcm")
    (folder / "README").write_text("three scans\n")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "best-step0000016.ckpt", "ct")
    args = ["ckpt=run", f"input={folder}", "output=restored/é", "force=true"]
    _one_line_error(run("ratlit.predict", *args, cwd=tmp_path, check=False),
                    "0001.dcm has no RescaleSlope / RescaleIntercept")
    assert not (tmp_path / "restored").exists()
    done = run("ratlit.predict", *args, "assume_hu=true", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "restored" / "é").iterdir()) == ["0001.dcm", "photo.png", "scan.nii.gz"]
    assert f"using the run's best checkpoint {ckpt}" in done.stdout + done.stderr
    assert "skipping 1 file(s) of no known format: README" in done.stdout + done.stderr


def test_cpu_estimate_run_folder_and_scored_images_are_said_once_missing_nothing(ct_root, tmp_path):
    result = run("ratlit.train", *SMOKE, f"data.root={ct_root}", "partition=sam_or_slic", "trainer.max_steps=12",
                 "trainer.val_check_interval=12", "trainer.limit_test_batches=1", "callbacks.cpu_estimate.after=3",
                 "callbacks.cpu_estimate.limit_h=1e-6", cwd=tmp_path)
    output = result.stdout + result.stderr
    run_dir = only_run(tmp_path)
    assert result.stdout.index(f"run folder: {run_dir}") < result.stdout.index("partition cache")
    assert "steps take" in output and "on this CPU; for a CPU try experiment=cpu_ct or experiment=smoke" in output
    assert output.count("SAM PARTITIONER NOT AVAILABLE") == 1
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_images"]["scored"] == 1 < results["test_images"]["split"]
    assert (f"on 1 of {results['test_images']['split']} test images (trainer.limit_test_batches; python -m "
            f"ratlit.evaluate ckpt={results['best_checkpoint']} scores the whole split)") in result.stdout
