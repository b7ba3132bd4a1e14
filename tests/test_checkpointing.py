"""Checkpoints a run can trust: written whole beside their target, never through the system temp
folder; a full disk is one line with the earlier files intact; a truncated file is never chosen; last.ckpt
follows every validation; metrics.csv never holds a step twice after a resume."""

import csv
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from ratlit.training.checkpoint_saving import AtomicCheckpointIO, RunCheckpoint, is_whole_checkpoint, resume_checkpoint
from ratlit.training.loggers import AppendingCSVLogger, MetricsFromRestoredStep
from ratlit.training.run_loading import load_checkpoint
from ratlit.utils.files import DiskFullError, write_bytes_atomic

STATE = {"state_dict": {"w": torch.arange(20_000, dtype=torch.float32)}, "global_step": 7}


def test_checkpoint_is_written_beside_its_target_not_in_the_temp_folder(tmp_path, monkeypatch):
    system_tmp = tmp_path / "systmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    seen = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (seen.append(Path(f.name).parent), real_save(obj, f)))
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, target)
    assert seen == [target.parent] and not list(system_tmp.iterdir())
    assert os.listdir(target.parent) == ["last.ckpt"] and is_whole_checkpoint(target)
    assert torch.load(target, weights_only=True)["global_step"] == 7


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, target)
    before = target.read_bytes()

    def half_then_full(obj, f):
        f.write(b"PK\x03\x04" + b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    monkeypatch.setattr("ratlit.training.checkpoint_saving.saved_size", lambda obj: 81_234_567)
    with pytest.raises(DiskFullError, match=rf"no space left in {tmp_path} for last.ckpt: 81.2 MB needed, .* MB free"):
        AtomicCheckpointIO().save_checkpoint({**STATE, "global_step": 8}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MB filesystem (tmpfs; needs root), else skip."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_on_a_real_small_filesystem(small_fs):
    big = {"state_dict": {"w": torch.zeros(150_000)}, "global_step": 1}  # 600 KB: one fits, not two
    AtomicCheckpointIO().save_checkpoint(big, small_fs / "best.ckpt")
    with pytest.raises(DiskFullError) as err:
        AtomicCheckpointIO().save_checkpoint({**big, "global_step": 2}, small_fs / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message and f"no space left in {small_fs} for last.ckpt: 0.6 MB needed" in message
    assert os.listdir(small_fs) == ["best.ckpt"] and is_whole_checkpoint(small_fs / "best.ckpt")
    with pytest.raises(DiskFullError, match=rf"in {small_fs} for panel.png: 0.7 MB needed"):
        write_bytes_atomic(small_fs / "panel.png", b"x" * 700_000)
    assert os.listdir(small_fs) == ["best.ckpt"]


def test_a_kill_during_a_save_never_replaces_last_ckpt(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, target)
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ratlit.utils.files import atomic_write
        def slow(f):
            f.write(b"PK" + b"x" * 100_000); f.flush(); print("writing", flush=True); time.sleep(60)
        atomic_write(Path({str(target)!r}), slow)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert target.read_bytes() == before
    stale = [p.name for p in target.parent.iterdir() if p.name != "last.ckpt"]
    assert len(stale) == 1 and stale[0].startswith(".last.ckpt.")
    assert resume_checkpoint(target) == target and os.listdir(target.parent) == ["last.ckpt"]  # the stale temp goes


def test_a_truncated_checkpoint_is_never_chosen(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint(STATE, folder / "best-step0000004.ckpt")
    time.sleep(0.01)
    io.save_checkpoint(STATE, folder / "best-step0000008.ckpt")
    io.save_checkpoint(STATE, folder / "last.ckpt")
    whole = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    assert not is_whole_checkpoint(folder / "last.ckpt")
    assert resume_checkpoint(folder / "last.ckpt") == folder / "best-step0000008.ckpt"
    assert "truncated" in caplog.text
    (folder / "best-step0000008.ckpt").write_bytes(b"")
    assert resume_checkpoint(folder / "last.ckpt") == folder / "best-step0000004.ckpt"
    (folder / "best-step0000004.ckpt").write_bytes(whole[:100])
    with pytest.raises(ValueError, match="holds no other whole checkpoint"):
        resume_checkpoint(folder / "last.ckpt")
    # evaluate / predict: one line naming the file
    with pytest.raises(ValueError, match=r"checkpoint .*last.ckpt is truncated or damaged"):
        load_checkpoint(folder / "last.ckpt")


# ------------------------------------------------------------------------------------------ last.ckpt


class Worsening(L.LightningModule):
    """A tiny model whose validation score only gets worse: no best after the first validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.validations = 0

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/psnr", 30.0 - self.validations)

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 2)), batch_size=2)


def fit(tmp_path, max_steps, every=None, logger=False, callbacks=(), ckpt_path=None):
    checkpoint = RunCheckpoint(dirpath=tmp_path / "checkpoints", filename="best-step{step:07d}",
                               auto_insert_metric_name=False, monitor="val/psnr", mode="max", save_top_k=1,
                               save_last=True, checkpoint_every_n_steps=every)
    written = []
    real = checkpoint._save_checkpoint
    checkpoint._save_checkpoint = lambda trainer, path: (written.append((Path(path).name, trainer.global_step)),
                                                         real(trainer, path))
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=5, check_val_every_n_epoch=None, logger=logger,
                        callbacks=[checkpoint, *callbacks], enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1, accelerator="cpu", plugins=[AtomicCheckpointIO()])
    trainer.fit(Worsening(), ckpt_path=ckpt_path)
    return checkpoint, written


def test_last_ckpt_follows_every_validation_and_every_n_steps(tmp_path):
    checkpoint, written = fit(tmp_path, 15)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 15
    assert [w for w in written if w[0] == "last.ckpt"] == [("last.ckpt", 5), ("last.ckpt", 10), ("last.ckpt", 15)]
    assert [w for w in written if w[0] != "last.ckpt"] == [("best-step0000005.ckpt", 5)]  # only the first was best
    _, written = fit(tmp_path / "every3", 11, every=3)
    assert [s for name, s in written if name == "last.ckpt"] == [3, 5, 6, 9, 10, 11]
    assert [s for name, s in written if name != "last.ckpt"] == [5]  # a step save never hides a best


def test_metrics_csv_drops_the_rows_a_resume_logs_again(tmp_path):
    logger = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    writer = logger.experiment
    for step in range(12):
        writer.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    writer.log_metrics({"val/psnr": 30.0}, 10)  # a validation after 10 steps, its scores and best values at 10
    writer.log_metrics({"val/best_psnr": 30.0}, 10)
    writer.save()
    with open(writer.metrics_file_path, "a") as f:
        f.write("0.5,")  # a row a kill cut short
    assert writer.keep_steps_before(10) == 3
    rows = list(csv.DictReader(open(writer.metrics_file_path)))
    assert [(r["step"], r["train/loss"] != "") for r in rows][-3:] == [("9", True), ("10", False), ("10", False)]
    assert rows[-1]["val/best_psnr"] == "30.0" and len(rows) == 12


def test_a_resume_continues_the_csv_without_repeating_a_step(tmp_path):
    logger = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    fit(tmp_path, 13, logger=logger, callbacks=[MetricsFromRestoredStep()])
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes((tmp_path / "checkpoints" / "best-step0000005.ckpt")
                                                         .read_bytes())  # as if killed after step 5's save
    logger = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    fit(tmp_path, 13, logger=logger, callbacks=[MetricsFromRestoredStep()],
        ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    seen = [(r["step"], k) for r in rows for k, v in r.items() if v and k not in ("step", "epoch")]
    assert len(seen) == len(set(seen)) and {int(r["step"]) for r in rows} == set(range(13))
