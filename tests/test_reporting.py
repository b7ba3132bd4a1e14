"""Reporting: callbacks (panels, per-image scores, best validation, W&B), the report, the input's score."""

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

import wandb_offline
from ratlit.cli.command import quiet_unactionable_messages
from ratlit.cli.report import load_runs, report, table_rows
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
    assert table["columns"][:5] == ["name", "psnr", "ssim", "input_psnr", "input_ssim"] and len(table["data"]) == 3


def _fake_run(folder, name, seed, psnr, attention="rmsa", task="ct", per_image=None):
    """A run folder: results.json, and test_results.csv when ``per_image`` (PSNR per image) is given."""
    run = folder / name
    run.mkdir(parents=True)
    result = {"task": task, "overrides": [f"attention={attention}", f"seed={seed}"], "partition": {"name": "slic"},
              "sweep_name": "t4", "test": {"psnr": psnr, "psnr_std": 1.0, "ssim": 0.9, "ssim_std": 0.01},
              "input": {"psnr": 38.8, "psnr_std": 2.3, "ssim": 0.88, "ssim_std": 0.04},
              "columns": {"task": task, "attention": attention, "loss": "fr", "seed": seed}}
    (run / "results.json").write_text(json.dumps(result))
    if per_image is not None:
        lines = ["name,psnr,ssim,input_psnr,input_ssim,psnr_gain,ssim_gain"]
        lines += [f"img{i},{p:.6f},{p / 50:.6f},{p - 5:.6f},0.5,5,0" for i, p in enumerate(per_image)]
        (run / "test_results.csv").write_text("\n".join(lines) + "\n")


def test_report_has_the_input_row_seeds_and_gains(tmp_path):
    runs = [("msa", 0, 40.0), ("msa", 1, 41.0), ("rmsa", 0, 42.0), ("rmsa", 1, 42.0)]
    for i, (attention, seed, psnr) in enumerate(runs):
        _fake_run(tmp_path, str(i), seed, psnr, attention)
    header, rows = table_rows(load_runs(tmp_path))
    assert header[:4] == ["run", "attention", "partition_used", "seeds"]
    assert rows[0][0] == "input" and rows[0][4].startswith("38.8000 ± 2.3000")
    msa = next(r for r in rows if r[1] == "msa")
    assert msa[3] == "2" and msa[4] == "40.5000 ± 1.0000 (seeds ± 0.5000)" and msa[5] == "+1.7000"
    markdown = report(tmp_path)
    assert markdown.splitlines()[2].startswith("| input |") and len(markdown.splitlines()) == 2 + 3
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def _study(folder):
    """msa (the reference, 2 seeds), rmsa +0.5 dB on every image (2 seeds), wmsa: noise around msa (1 seed)."""
    base = 37 + 4.7 * np.random.default_rng(0).standard_normal(30)
    noise = 0.01 * np.random.default_rng(1).standard_normal(15)
    _fake_run(folder, "a0", 0, base.mean(), "msa", per_image=base)
    _fake_run(folder, "a1", 1, base.mean(), "msa", per_image=base)
    _fake_run(folder, "b0", 0, base.mean() + 0.5, "rmsa", per_image=base + 0.5)
    _fake_run(folder, "b1", 1, base.mean() + 0.5, "rmsa", per_image=base + 0.5)
    _fake_run(folder, "c0", 0, base.mean(), "wmsa", per_image=base + np.concatenate([noise, -noise]))
    return base


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_csv_holds_one_number_per_cell(tmp_path):
    _study(tmp_path)
    report(tmp_path, resamples=500)
    rows = _csv_rows(tmp_path / "report.csv")
    assert [r["run"] for r in rows] == ["input", "a0 (+1 seeds)", "b0 (+1 seeds)", "c0"]
    for row in rows:
        for key in ("psnr_mean", "psnr_std_images", "psnr_gain", "ssim_mean"):
            float(row[key])  # a number, not "37.1 ± 4.7"
    rmsa = rows[2]
    assert (rmsa["attention"], rmsa["seeds"], rmsa["images"]) == ("rmsa", "2", "30")
    assert float(rmsa["psnr_gain_ci_low"]) == pytest.approx(5.0, abs=1e-4)  # per image: test - input = 5
    assert float(rmsa["psnr_std_seeds"]) == 0.0 and rows[0]["psnr_std_seeds"] == ""
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(tmp_path / "report.csv")
    assert frame["psnr_mean"].dtype.kind == "f" and frame["psnr_gain_ci_high"].dtype.kind == "f"


def test_a_partition_override_and_the_partitioner_that_ran_are_two_columns(tmp_path):
    """``partition=`` as a varying override beside the partitioner that ran (a fallback may differ): each CSV
    column named once, so pandas reads them without renaming."""
    base = np.linspace(30, 40, 6)
    for name, partition, ran in (("s", "slic", "slic"), ("l", "litemedsam", "slic"), ("g", "grid", "grid")):
        _fake_run(tmp_path, name, 0, base.mean(), per_image=base + (name == "g"))
        result = json.loads((tmp_path / name / "results.json").read_text())
        result["overrides"].append(f"partition={partition}")
        result["partition"] = {"name": ran}
        (tmp_path / name / "results.json").write_text(json.dumps(result))
    report(tmp_path, reference="partition=slic", resamples=200)
    for table in ("report.csv", "paired.csv"):
        header = (tmp_path / table).read_text().splitlines()[0].split(",")
        assert len(header) == len(set(header)) and {"partition", "partition_used"} <= set(header), header
    fallback = next(r for r in _csv_rows(tmp_path / "report.csv") if r["run"] == "l")
    assert (fallback["partition"], fallback["partition_used"]) == ("litemedsam", "slic")


def test_paired_table_against_the_first_row_by_default(tmp_path):
    _study(tmp_path)
    report(tmp_path, resamples=1000)
    rows = {(r["attention"], r["metric"]): r for r in _csv_rows(tmp_path / "paired.csv")}
    assert set(rows) == {("rmsa", "psnr"), ("rmsa", "ssim"), ("wmsa", "psnr"), ("wmsa", "ssim")}
    gain, noise = rows[("rmsa", "psnr")], rows[("wmsa", "psnr")]
    assert gain["reference"] == noise["reference"] == "a0 (+1 seeds)"
    assert float(gain["mean"]) == pytest.approx(0.5, abs=1e-5) and gain["verdict"] == "resolved: higher"
    assert float(gain["ci_low"]) == pytest.approx(0.5, abs=1e-5) and float(gain["wilcoxon_p"]) < 1e-4
    assert (gain["images"], gain["seeds"], gain["reference_seeds"], gain["seed_pairing"]) == ("30", "2", "2", "paired")
    assert noise["verdict"] == "not resolved" and float(noise["ci_low"]) < 0 < float(noise["ci_high"])
    markdown = (tmp_path / "paired.md").read_text()
    assert "excludes 0" in markdown and "| b0 (+1 seeds) | a0 (+1 seeds) | PSNR | +0.5000 |" in markdown
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(tmp_path / "paired.csv")
    assert all(frame[c].dtype.kind in "fi" for c in ("mean", "std", "ci_low", "ci_high", "wilcoxon_p", "images"))


def test_reference_is_chosen_by_override_run_or_input(tmp_path):
    from ratlit.cli.report import paired_table

    _study(tmp_path)
    runs = load_runs(tmp_path)
    _, rows, _ = paired_table(runs, "attention=rmsa", resamples=300)
    msa = next(r for r in rows if r["attention"] == "msa" and r["metric"] == "psnr")
    assert msa["reference"] == "b0 (+1 seeds)" and msa["mean"] == pytest.approx(-0.5, abs=1e-5)
    assert msa["verdict"] == "resolved: lower"
    assert {r["reference"] for r in paired_table(runs, "c0", resamples=300)[1]} == {"c0"}
    against_input = paired_table(runs, "input", resamples=300)[1]
    assert len(against_input) == 3 * 2 and {r["reference"] for r in against_input} == {"input"}
    assert next(r for r in against_input if r["attention"] == "msa")["mean"] == pytest.approx(5.0, abs=1e-5)
    with pytest.raises(ValueError, match="matches 3 rows"):
        paired_table(runs, "task=ct")
    with pytest.raises(ValueError, match="matches no run"):
        paired_table(runs, "attention=none")


def test_paired_warns_when_image_sets_differ(tmp_path):
    from ratlit.cli.report import paired_table

    _fake_run(tmp_path, "a", 0, 40.0, "msa", per_image=[40.0, 41.0, 42.0, 43.0])
    _fake_run(tmp_path, "b", 0, 40.0, "rmsa", per_image=[40.5, 41.5, 42.5])
    _, rows, notes = paired_table(load_runs(tmp_path), resamples=200)
    assert rows[0]["images"] == 3 and notes == ["b: 0 image(s) only in it, 1 only in a; compared on the 3 common "
                                                "image(s) (different splits or test sets?)"]
    report(tmp_path, resamples=200)
    assert "warning: b: 0 image(s) only in it" in (tmp_path / "paired.md").read_text()


def test_chart_marks_a_run_without_test_scores_instead_of_a_point_at_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    from ratlit.cli.report import bar_chart

    _fake_run(tmp_path, "0", 0, 40.0, "msa", per_image=[40.0, 41.0])
    _fake_run(tmp_path, "1", 0, 41.0, "rmsa")  # no test_results.csv: a run made with test_after_fit=false
    notes, drawn = [], []
    annotate, errorbar = matplotlib.axes.Axes.annotate, matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda ax, text, *a, **k: notes.append(text) or annotate(ax, text, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda ax, x, y, **k: drawn.append(y) or errorbar(ax, x, y, **k))
    bar_chart(load_runs(tmp_path), tmp_path / "chart.png")
    assert notes == ["n/a", "n/a"]  # PSNR and SSIM panels
    assert drawn == []  # nothing drawn for it


def test_chart_is_scaled_by_the_differences_around_zero(tmp_path, monkeypatch):
    """A -0.003 dB mean among per-image differences of ~0.01 dB: a point with its interval inside an axis that
    holds 0 and the images' differences, no bar."""
    import matplotlib.axes
    import matplotlib.pyplot as plt

    from ratlit.cli.report import bar_chart

    base = 37 + 4.7 * np.random.default_rng(0).standard_normal(40)
    diffs = -0.003 + 0.01 * np.random.default_rng(1).standard_normal(40)
    _fake_run(tmp_path, "a", 0, base.mean(), "msa", per_image=base)
    _fake_run(tmp_path, "b", 0, base.mean(), "rmsa", per_image=base + diffs)
    limits, bars = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda *a, **k: bars.append(a))
    savefig = plt.Figure.savefig
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: limits.extend(ax.get_ylim() for ax in fig.axes)
                        or savefig(fig, *a, **k))
    bar_chart(load_runs(tmp_path), tmp_path / "chart.png")
    low, high = limits[0]  # the PSNR panel
    assert bars == [] and low < min(diffs.min(), 0) and high > max(diffs.max(), 0)
    assert high - low < 0.2  # the differences' scale (0.01 dB), not the images' (4.7 dB)


def test_report_logged_to_the_sweeps_wandb_group(tmp_path, monkeypatch):
    from ratlit.cli.report import log_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _fake_run(tmp_path, "0", 0, 40.0, "msa", per_image=[40.0, 41.0, 42.0])
    _fake_run(tmp_path, "1", 0, 41.0, "rmsa", per_image=[41.0, 42.0, 43.0])
    report(tmp_path, resamples=200)
    assert log_to_wandb(tmp_path, tmp_path) == "offline"
    records = wandb_offline.read_finished_run(tmp_path)
    run = wandb_offline.of_type(records, "run")[0]
    assert run.run_group == "t4" and run.job_type == "report"
    summary = wandb_offline.summary(records)
    assert summary["report/table/_type"] == "table-file" and summary["report/table/nrows"] == 3
    assert summary["report/paired/_type"] == "table-file" and summary["report/paired/nrows"] == 2  # PSNR, SSIM
    assert summary["report/chart/_type"] == "image-file"
    run_dir = wandb_offline.run_file(tmp_path).parent
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in run_dir.rglob("*.table.json")}
    paired = tables["paired"]
    row = dict(zip(paired["columns"], paired["data"][0]))
    assert row["mean"] == pytest.approx(1.0) and row["verdict"] == "resolved: higher" and row["images"] == 3
    assert isinstance(dict(zip(tables["table"]["columns"], tables["table"]["data"][1]))["psnr_mean"], float)


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
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_loss_column_names_the_loss_as_typed_without_hydra():
    """Outside Hydra (a resume, a direct call) the loss is named by its conf/loss file, as typed (fr, l1)."""
    from omegaconf import OmegaConf

    from ratlit.training.results import loss_name

    named = {t: loss_name(OmegaConf.create({"model": {"loss": {"_target_": f"ratlit.losses.{t}"}}}))
             for t in ("FocalRegionLoss", "L1Loss", "NoSuchLoss")}
    assert named == {"FocalRegionLoss": "fr", "L1Loss": "l1", "NoSuchLoss": "NoSuchLoss"}
