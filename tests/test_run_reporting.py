"""What a run reports: display and panels, callbacks (per-image scores, best validation, W&B), the input's score,
the loss column, and Lightning's unactionable messages hidden."""

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from helpers import wandb_offline
from ratlit.cli.command import quiet_unactionable_messages
from ratlit.losses import L1Loss
from ratlit.models.edsr import EDSR
from ratlit.training.callbacks import BestValidation, PerImageScores, RegionPanels, StepProgressBar
from ratlit.training.loggers import WandbSummaries, comparison_columns
from ratlit.training.module import RestorationModule, image_metrics
from ratlit.utils.display import display_image, render_panels, to_display_scale


class Pairs(Dataset):
    """Noisy / clean 24 x 24 discs with a two-region label map."""

    def __init__(self, count: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), indexing="ij")
        disc = (rows**2 + cols**2 < 0.5).float()
        self.items = []
        for i in range(count):
            hq = (disc * (0.4 + 0.05 * i) + 0.2)[None]
            lq = (hq + 0.08 * torch.randn(hq.shape, generator=g)).clamp(0, 1)
            self.items.append({"lq": lq, "hq": hq, "regions": disc.long(), "name": f"img{i}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _module() -> RestorationModule:
    return RestorationModule(EDSR(1, features=8, blocks=1), L1Loss(), data_range=1.0)


def _trainer(tmp_path, callbacks, loggers=None, steps=4) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, val_check_interval=2, check_val_every_n_epoch=None,
                     logger=loggers if loggers is not None else CSVLogger(tmp_path, name="csv", version=""),
                     callbacks=callbacks, enable_model_summary=False, num_sanity_val_steps=1,
                     default_root_dir=tmp_path, log_every_n_steps=1)


def test_display_window_and_colour_map():
    hu = torch.tensor([-1024.0, -160.0, 40.0, 240.0, 3072.0])
    x = (hu + 1024) / 4096  # the CT task's normalisation
    shown = to_display_scale(x, (-1024, 3072), (40, 400))
    assert torch.allclose(shown, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]), atol=1e-6)
    assert torch.equal(to_display_scale(torch.tensor([-0.5, 0.3, 2.0]), None, None), torch.tensor([0.0, 0.3, 1.0]))
    gray = display_image(torch.full((1, 2, 2), 0.5), cmap="gray")
    hot = display_image(torch.full((1, 2, 2), 0.5), cmap="hot")
    assert gray.shape == hot.shape == (2, 2, 3) and np.allclose(gray[..., 0], gray[..., 1])
    assert not np.allclose(hot[..., 0], hot[..., 2])  # a colour map, not grey
    with pytest.raises(ValueError, match="width must be positive"):
        to_display_scale(x, (-1024, 3072), (40, 0))
    with pytest.raises(ValueError, match="unknown colour map"):
        RegionPanels(cmap="no-such-map")


def test_panels_are_titled_pictures():
    row = {"lq": torch.rand(1, 24, 24), "restored": torch.rand(1, 24, 24), "hq": torch.rand(1, 24, 24),
           "regions": torch.zeros(24, 24, dtype=torch.long), "psnr": 31.0, "input_psnr": 29.5, "name": "a"}
    picture = render_panels([row, row], (-1024, 3072), (40, 400))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] > 4 * picture.shape[0] / 2  # five columns side by side, two rows


def test_callbacks_report_scores_beside_the_input(tmp_path):
    data = Pairs(3, 0)
    loader = DataLoader(data, batch_size=2)
    best, panels, per_image = BestValidation(), RegionPanels(count=2, dirpath=str(tmp_path / "panels")), PerImageScores(
        path=str(tmp_path / "test_results.csv"))
    trainer = _trainer(tmp_path, [best, panels, per_image, StepProgressBar()])
    module = _module()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=DataLoader(data, batch_size=1))
    bar = trainer.progress_bar_callback.train_progress_bar  # one bar over both epochs, counting steps
    assert isinstance(trainer.progress_bar_callback, StepProgressBar) and (bar.n, bar.total) == (4, 4)
    logged = [r for r in csv.DictReader((tmp_path / "csv" / "metrics.csv").open()) if r.get("val/psnr")]
    assert len(logged) == 2  # the sanity check is not a validation
    top = max(logged, key=lambda r: float(r["val/psnr"]))
    assert best.best["psnr"] == pytest.approx(float(top["val/psnr"]))
    assert best.best["ssim"] == pytest.approx(float(top["val/ssim"]))
    assert best.best["step"] == 2 * (logged.index(top) + 1)  # validations at steps 2 and 4
    assert {float(r["val/best_psnr"]) for r in csv.DictReader((tmp_path / "csv" / "metrics.csv").open())
            if r.get("val/best_psnr")} <= {float(r["val/psnr"]) for r in logged}
    assert sorted(p.name for p in (tmp_path / "panels").glob("*.png")) == ["val_step0000002.png", "val_step0000004.png"]

    trainer.test(module, dataloaders=DataLoader(data, batch_size=2))
    rows = list(csv.DictReader((tmp_path / "test_results.csv").open()))
    assert [r["name"] for r in rows] == ["img0", "img1", "img2"]
    lq = torch.stack([d["lq"] for d in data.items])
    hq = torch.stack([d["hq"] for d in data.items])
    input_psnr, input_ssim = image_metrics(lq, hq, 1.0)
    assert [float(r["input_psnr"]) for r in rows] == pytest.approx(input_psnr.tolist(), abs=1e-4)
    assert [float(r["input_ssim"]) for r in rows] == pytest.approx(input_ssim.tolist(), abs=1e-4)
    assert float(rows[0]["psnr_gain"]) == pytest.approx(float(rows[0]["psnr"]) - float(rows[0]["input_psnr"]), abs=1e-5)
    metrics = trainer.callback_metrics
    assert float(metrics["test/input_psnr"]) == pytest.approx(input_psnr.mean().item(), abs=1e-4)
    assert float(metrics["test/input_psnr_std"]) == pytest.approx(input_psnr.std(unbiased=False).item(), abs=1e-4)

    # the best value survives a checkpoint round trip (a resumed run keeps it)
    again = BestValidation()
    again.load_state_dict(best.state_dict())
    assert again.best == best.best


def test_untrained_module_scores_exactly_the_input(tmp_path):
    """A zero-initialised residual network scores what the input scores (the starting point of training)."""
    data = Pairs(2, 1)
    trainer = _trainer(tmp_path, [PerImageScores()], loggers=False)
    trainer.test(_module(), dataloaders=DataLoader(data, batch_size=2), verbose=False)
    metrics = trainer.callback_metrics
    assert float(metrics["test/psnr"]) == pytest.approx(float(metrics["test/input_psnr"]), abs=1e-5)


def test_wandb_offline_run_is_ready_to_compare(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    columns = comparison_columns("ct", "rat", "rmsa", "fr", "slic", 3)
    assert columns["loss"] == "fr" and columns["seed"] == 3
    logger = WandbLogger(project="ratlit-test", save_dir=str(tmp_path), offline=True, group="sweep-x",
                         config={**columns, "cfg": {"trainer": {"max_steps": 4}}})
    data = Pairs(3, 2)
    callbacks = [BestValidation(), RegionPanels(count=1), PerImageScores(), WandbSummaries()]
    trainer = _trainer(tmp_path, callbacks, loggers=[logger])
    module = _module()
    try:
        trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2),
                    val_dataloaders=DataLoader(data, batch_size=1))
        trainer.test(module, dataloaders=DataLoader(data, batch_size=1), verbose=False)
    finally:
        wandb.finish()
    records = wandb_offline.read_finished_run(tmp_path)
    config = wandb_offline.config(records)
    assert {k: config[k] for k in columns} == columns  # top-level columns for grouping
    assert config["cfg"] == {"trainer": {"max_steps": 4}}
    assert wandb_offline.of_type(records, "run")[0].run_group == "sweep-x"
    defined = {m.name: m for m in wandb_offline.of_type(records, "metric") if m.name}
    assert defined["val/psnr"].summary.max and defined["val/ssim"].summary.max
    summary = wandb_offline.summary(records)
    best = callbacks[0].best
    assert summary["val/best_psnr"] == pytest.approx(best["psnr"]) and summary["val/best_step"] == best["step"]
    assert summary["val/psnr"]["max"] == pytest.approx(best["psnr"])
    for key in ("test/psnr", "test/psnr_std", "test/ssim", "test/ssim_std", "test/input_psnr"):
        assert isinstance(summary[key], float), key
    assert summary["test/per_image/_type"] == "table-file" and summary["test/per_image/nrows"] == 3
    assert summary["val/panels/_type"] == "images/separated" and summary["val/panels/count"] == 1
    run_dir = wandb_offline.run_file(tmp_path).parent
    table = json.loads(next(run_dir.rglob("*.table.json")).read_text())
    assert table["columns"][:6] == ["name", "group", "psnr", "ssim", "input_psnr", "input_ssim"]
    assert len(table["data"]) == 3


def test_unactionable_messages_are_hidden_by_their_text(caplog):
    import logging
    import warnings

    quiet_unactionable_messages()
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](x) now")
        log.info("a message that matters")
    assert [r.getMessage() for r in caplog.records] == ["a message that matters"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_unactionable_messages()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=2)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_loss_column_names_the_loss_as_typed_without_hydra():
    """Outside Hydra (a resume, a direct call) the loss is named by its conf/loss file, as typed (fr, l1)."""
    from omegaconf import OmegaConf

    from ratlit.training.results import loss_name

    named = {t: loss_name(OmegaConf.create({"model": {"loss": {"_target_": f"ratlit.losses.{t}"}}}))
             for t in ("FocalRegionLoss", "L1Loss", "NoSuchLoss")}
    assert named == {"FocalRegionLoss": "fr", "L1Loss": "l1", "NoSuchLoss": "NoSuchLoss"}
