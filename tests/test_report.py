"""The report of runs (ratlit.analysis): rows, seeds and gains, one number per CSV cell, the paired table against a
reference, the chart, and its W&B upload."""

import csv
import json

import numpy as np
import pytest

from helpers import wandb_offline
from ratlit.analysis.report import report
from ratlit.analysis.report_tables import table_rows
from ratlit.analysis.runs import load_runs


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
    assert header[:4] == ["run", "attention", "partition_used", "runs"]
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
    assert (rmsa["attention"], rmsa["runs"], rmsa["images"]) == ("rmsa", "2", "30")
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
    assert float(gain["mean"]) == pytest.approx(0.5, abs=1e-5) and gain["verdict"] == "higher"
    assert float(gain["ci_low"]) == pytest.approx(0.5, abs=1e-5) and float(gain["wilcoxon_p"]) < 1e-4
    assert (gain["images"], gain["seeds"], gain["reference_seeds"], gain["seed_pairing"]) == ("30", "2", "2", "paired")
    assert float(noise["ci_low"]) < 0 < float(noise["ci_high"]) and noise["verdict"] in ("not resolved", "equivalent")
    assert noise["verdict"] == ("equivalent" if -0.01 <= float(noise["ci_low"]) and float(noise["ci_high"]) <= 0.01
                                else "not resolved")
    markdown = (tmp_path / "paired.md").read_text()
    assert "wholly above +min" in markdown and "| b0 (+1 seeds) | a0 (+1 seeds) | PSNR | +0.5000 |" in markdown
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(tmp_path / "paired.csv")
    assert all(frame[c].dtype.kind in "fi" for c in ("mean", "std", "ci_low", "ci_high", "wilcoxon_p", "images"))


def test_reference_is_chosen_by_override_run_or_input(tmp_path):
    from ratlit.analysis.report_tables import paired_table

    _study(tmp_path)
    runs = load_runs(tmp_path)
    _, rows, _ = paired_table(runs, "attention=rmsa", resamples=300)
    msa = next(r for r in rows if r["attention"] == "msa" and r["metric"] == "psnr")
    assert msa["reference"] == "b0 (+1 seeds)" and msa["mean"] == pytest.approx(-0.5, abs=1e-5)
    assert msa["verdict"] == "lower"
    assert {r["reference"] for r in paired_table(runs, "c0", resamples=300)[1]} == {"c0"}
    against_input = paired_table(runs, "input", resamples=300)[1]
    assert len(against_input) == 3 * 2 and {r["reference"] for r in against_input} == {"input"}
    assert next(r for r in against_input if r["attention"] == "msa")["mean"] == pytest.approx(5.0, abs=1e-5)
    with pytest.raises(ValueError, match="matches 3 rows"):
        paired_table(runs, "task=ct")
    with pytest.raises(ValueError, match="matches no run"):
        paired_table(runs, "attention=none")


def test_paired_warns_when_image_sets_differ(tmp_path):
    from ratlit.analysis.report_tables import paired_table

    _fake_run(tmp_path, "a", 0, 40.0, "msa", per_image=[40.0, 41.0, 42.0, 43.0])
    _fake_run(tmp_path, "b", 0, 40.0, "rmsa", per_image=[40.5, 41.5, 42.5])
    _, rows, notes = paired_table(load_runs(tmp_path), resamples=200)
    assert rows[0]["images"] == 3 and notes == ["b: 0 image(s) only in it, 1 only in a; compared on the 3 common "
                                                "image(s) (different splits or test sets?)"]
    report(tmp_path, resamples=200)
    assert "warning: b: 0 image(s) only in it" in (tmp_path / "paired.md").read_text()


def test_chart_marks_a_run_without_test_scores_instead_of_a_point_at_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    from ratlit.analysis.chart import bar_chart

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

    from ratlit.analysis.chart import bar_chart

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
    from ratlit.analysis.report import log_to_wandb

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
    row = dict(zip(paired["columns"], paired["data"][0], strict=True))
    assert row["mean"] == pytest.approx(1.0) and row["verdict"] == "higher" and row["images"] == 3
    second = dict(zip(tables["table"]["columns"], tables["table"]["data"][1], strict=True))
    assert isinstance(second["psnr_mean"], float)
