"""Resume: the cosine schedule follows the new end from the restored step and never rises, value overrides are
typed as on a fresh run and applied or refused, the run's history is kept, and the crops of an epoch are not
replayed."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ratlit.training.schedule import CosineToEnd

ETA = 1e-6


def _optimizer(lr=2e-4):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _resumed(state_opt, state_sched, lr, T):
    """What Lightning does on resume: build from the config, then load the optimiser and scheduler states."""
    optimizer = _optimizer(lr)
    scheduler = CosineToEnd(optimizer, T_max=T, eta_min=ETA)
    optimizer.load_state_dict(state_opt)
    scheduler.load_state_dict(state_sched)
    return scheduler


def test_a_fresh_schedule_is_torchs_cosine_in_closed_form():
    ours, theirs = CosineToEnd(_optimizer(), T_max=16, eta_min=ETA), torch.optim.lr_scheduler.CosineAnnealingLR(
        _optimizer(), T_max=16, eta_min=ETA)
    assert _lrs(ours, 17) == pytest.approx(_lrs(theirs, 17), rel=1e-9)
    assert _lrs(ours, 10) == [ETA] * 10  # past the end it stays at eta_min (torch's recursive form rises again)


def test_resume_keeps_the_curve_or_reaims_it_at_the_new_end():
    first = CosineToEnd(_optimizer(), T_max=16, eta_min=ETA)
    whole = _lrs(first, 16)
    first = CosineToEnd(_optimizer(), T_max=16, eta_min=ETA)
    head = _lrs(first, 8)
    opt_state, sched_state = first.optimizer.state_dict(), first.state_dict()
    same = _resumed(opt_state, sched_state, 2e-4, 16)
    assert head + _lrs(same, 8) == whole  # max_steps unchanged: exactly the original schedule

    longer = _resumed(opt_state, sched_state, 2e-4, 32)
    tail = _lrs(longer, 25)
    assert tail[0] == pytest.approx(whole[8]) and all(b <= a for a, b in zip(tail, tail[1:], strict=False))
    assert tail[23] > ETA and tail[24] == pytest.approx(ETA)  # reaches eta_min at the new end, step 32
    mid = (24 - 8) / (32 - 8)
    assert tail[16] == pytest.approx(ETA + (whole[8] - ETA) * (1 + math.cos(math.pi * mid)) / 2)

    # A torch CosineAnnealingLR state (older runs) resumes the same way: never rising back.
    torch_first = torch.optim.lr_scheduler.CosineAnnealingLR(_optimizer(), T_max=16, eta_min=ETA)
    _lrs(torch_first, 16)
    old = _resumed(torch_first.optimizer.state_dict(), torch_first.state_dict(), 2e-4, 32)
    tail = _lrs(old, 16)
    assert tail[0] == pytest.approx(ETA) and max(tail) == pytest.approx(ETA)


def test_a_new_learning_rate_on_resume_starts_there_and_anneals_to_the_end():
    first = CosineToEnd(_optimizer(), T_max=16, eta_min=ETA)
    _lrs(first, 8)
    changed = _resumed(first.optimizer.state_dict(), first.state_dict(), 1e-3, 16)
    tail = _lrs(changed, 9)
    assert tail[0] == pytest.approx(1e-3) and tail[-1] == pytest.approx(ETA)
    assert all(b <= a for a, b in zip(tail, tail[1:], strict=False))
    # and the next resume keeps that rate: unchanged configuration, unchanged curve
    again = CosineToEnd(_optimizer(), T_max=16, eta_min=ETA)
    _lrs(again, 8)
    half = _resumed(again.optimizer.state_dict(), again.state_dict(), 1e-3, 16)
    _lrs(half, 4)
    kept = _resumed(half.optimizer.state_dict(), half.state_dict(), 1e-3, 16)
    assert _lrs(kept, 5) == pytest.approx(tail[4:])


class _Tiny(L.LightningModule):
    def __init__(self, lr=2e-4):
        super().__init__()
        self.layer, self.lr, self.seen = torch.nn.Linear(2, 1), lr, []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, self.trainer.optimizers[0].param_groups[0]["lr"]))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        scheduler = CosineToEnd(optimizer, T_max=self.trainer.max_steps, eta_min=ETA)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(module, max_steps, tmp_path, ckpt_path=None):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=4)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=data, ckpt_path=ckpt_path)
    return module.seen


def test_lightning_resume_with_more_steps_never_raises_the_rate(tmp_path):
    first = _fit(_Tiny(), 16, tmp_path)
    resumed = _fit(_Tiny(), 32, tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed[0][0] == 16 and resumed[0][1] == pytest.approx(ETA) and len(resumed) == 16
    rates = [lr for _, lr in first + resumed]  # torch's CosineAnnealingLR climbs back to 1.98e-4 here
    assert all(b <= a * (1 + 1e-9) for a, b in zip(rates, rates[1:], strict=False))


# --- what a resume may change, typed as on a fresh run ----------------------------------------------------


def _saved_run():
    from omegaconf import OmegaConf

    return OmegaConf.create({"trainer": {"max_steps": 16}, "callbacks": {}, "model": {
        "optimizer": {"lr": 2e-4}, "net": {"width": 8},
        "scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "eta_min": ETA}}})


def test_resume_overrides_are_typed_like_a_fresh_run_and_the_rest_refused():
    from ratlit.training.run_folder import apply_resume_overrides

    cfg = _saved_run()
    apply_resume_overrides(cfg, ["model.optimizer.lr=1e-3", "trainer.max_steps=32", "+callbacks.x={_target_: a.B}"])
    assert cfg.model.optimizer.lr == 1e-3 and isinstance(cfg.model.optimizer.lr, float)  # YAML read '1e-3'
    assert cfg.trainer.max_steps == 32 and cfg.callbacks.x._target_ == "a.B"
    assert cfg.model.scheduler._target_ == "ratlit.training.schedule.CosineToEnd"  # old runs: the closed form
    for item, why in (("model.net.width=4", "cannot change on resume"), ("attention=msa", "names no value"),
                      ("trainer.max_steps=3,4", "cannot change"), ("~callbacks.x", "cannot change")):
        before = cfg.copy()
        with pytest.raises(ValueError, match=f"{why}.*can change only trainer.max_steps,.*model.optimizer.lr"):
            apply_resume_overrides(cfg, [item])
        assert cfg == before


def test_a_resumed_run_keeps_its_name_and_history(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from ratlit.training.loggers import build_loggers, run_name, wandb_id
    from ratlit.training.run_folder import RunHistory, original_overrides

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- attention=msa\n- data.root=/x\n- seed=3\n")
    monkeypatch.setenv("WANDB_MODE", "offline")
    node = {"_target_": "lightning.pytorch.loggers.WandbLogger", "offline": True, "save_dir": str(tmp_path)}
    old = OmegaConf.create({"logger": {"wandb": dict(node)}, "run_dir": str(tmp_path), "resume": str(tmp_path)})
    assert original_overrides(tmp_path) == ["attention=msa", "data.root=/x", "seed=3"]
    assert run_name(old) == "attention=msa,seed=3"  # the original call's, not this resume call's
    wandb_id(old)
    assert old.logger.wandb.name == "attention=msa,seed=3"  # saved in config.yaml with the id
    old.logger.wandb.name = "kept"
    wandb_logger, _ = build_loggers(old, [], {})
    assert wandb_logger._wandb_init["name"] == "kept"

    history = RunHistory(["attention=msa"], "kept")
    resumed = RunHistory(["resume=x"], "other", resume=["resume=x", "trainer.max_steps=9"])
    resumed.load_state_dict(history.state_dict())

    class _Trainer:
        global_step = 6

    resumed.on_train_start(_Trainer(), None)
    state = resumed.state_dict()
    assert state["overrides"] == ["attention=msa"] and state["name"] == "kept"
    assert [(r["from_step"], r["overrides"]) for r in state["resumes"]] == [(6, ["resume=x", "trainer.max_steps=9"])]


# --- a mid-epoch resume continues the epoch ----------------------------------------------------------------


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer, self.seen = torch.nn.Linear(1, 1), []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, batch["index"].tolist(), round(float(batch["lq"].sum()), 3)))
        return self.layer(batch["lq"].mean().reshape(1, 1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _ct_datamodule(tmp_path):
    import numpy as np

    from ratlit.data import CTDataModule
    from ratlit.data.ct import write_ct_series
    from ratlit.partition import GridPartitioner

    root = tmp_path / "ct"
    for p in range(4):
        full = [np.random.default_rng(p * 10 + k).uniform(-1000, 1000, (24, 24)).astype(np.float32) for k in range(2)]
        for side, offset in (("full_1mm", 0), ("quarter_1mm", 100)):
            write_ct_series(root / f"P{p}" / side, [f + offset for f in full], f"P{p}", "FD", 0.7, [0.0, 1.0], "1.2.3")
    return CTDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), partitioner=GridPartitioner(8),
                        patch_size=8, batch_size=2, epoch_size=12, splits={"train": ["P0", "P1", "P2"], "val": [],
                                                                           "test": ["P3"]})


def _fit_crops(tmp_path, max_steps, ckpt_path=None):
    L.seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    module = _Recorder()
    trainer.fit(module, datamodule=_ct_datamodule(tmp_path), ckpt_path=ckpt_path)
    return module.seen


def test_a_mid_epoch_resume_does_not_replay_the_epochs_first_crops(tmp_path):
    whole = _fit_crops(tmp_path, 14)  # 6 batches an epoch: steps 0-5, 6-11, 12-13
    assert len(whole) == 14 and whole[0][1:] != whole[6][1:]  # another order and other crops each epoch
    resumed = _fit_crops(tmp_path, 14, ckpt_path=str(tmp_path / "ckpt" / "epoch=1-step=8.ckpt"))
    assert resumed == whole[8:]  # steps 8-13: the rest of epoch 1, then epoch 2, as without the interruption


def test_resuming_a_finished_schedule_with_more_steps_says_the_rate_stays_at_its_end(caplog):
    first = CosineToEnd(_optimizer(), T_max=16, eta_min=ETA)
    _lrs(first, 16)  # to the end: 1e-6
    with caplog.at_level("WARNING", logger="ratlit.training.schedule"):
        longer = _resumed(first.optimizer.state_dict(), first.state_dict(), 2e-4, 32)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "the 16 added steps run at its end rate 1e-06" in said[0]
    assert "model.optimizer.lr=0.0002" in said[0]
    assert _lrs(longer, 4) == pytest.approx([ETA] * 4)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ratlit.training.schedule"):
        _resumed(first.optimizer.state_dict(), first.state_dict(), 2e-4, 16)  # unchanged: nothing to say
    assert not caplog.records
