"""Run folders keep their history: files follow the umask, paths are stored absolute, command-line paths
may start with ~, a resumed CSV log appends, a copied run folder resumes in itself, a short run is still
validated, and evaluate never scores a group the run trained on unless told to."""

import csv
import os
import stat
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from helpers.commands import run
from helpers.scans import tiny_ct
from ratlit.cli.command import prepare_argv
from ratlit.data.splits import check_not_seen, saved_splits
from ratlit.inference.evaluation import split_checked_datamodule
from ratlit.training.callbacks import ValidateAtEnd
from ratlit.training.loggers import AppendingCSVLogger
from ratlit.training.run_folder import RelocateCheckpointState, absolute_data_paths, relocate
from ratlit.utils.files import make_temp_dir, write_text_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_files_and_temp_folders_follow_the_umask(tmp_path, umask_022):
    write_text_atomic(tmp_path / "results.json", "{}")
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(make_temp_dir(tmp_path, ".build.").stat().st_mode) == 0o755
    os.umask(0o077)
    write_text_atomic(tmp_path / "private.json", "{}")
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_tilde_paths_and_open_data_keys_pass_hydras_lexer():
    parser = OverridesParser.create()
    with pytest.raises(Exception, match="token recognition error"):
        parser.parse_override("data.root=~/scans")
    argv = prepare_argv(["prog", "data.root=~/my scans", "ckpt=a.ckpt", "attention=msa,rmsa", "-m"],
                        open_nodes=("data",))
    assert argv[0] == "prog" and argv[-1] == "-m" and argv[2] == "ckpt=a.ckpt"
    root = parser.parse_override(argv[1])
    assert argv[1].startswith("++data.root=") and root.value() == os.path.expanduser("~/my scans")
    assert prepare_argv(["prog", "data.root=~/x"]) == ["prog", f"data.root='{os.path.expanduser('~/x')}'"]


def test_each_value_of_a_sweep_over_tilde_paths_is_expanded():
    parser = OverridesParser.create()
    home = os.path.expanduser("~")
    argv = prepare_argv(["prog", "-m", "data.root=~/a,~/my scans,/abs/d", "input=~/x,/tmp/données", "ckpt=~/a\\,b",
                         "data.root='~/q,r'", "tags=[a,b]"])

    def swept(override: str) -> list[str]:
        parsed = parser.parse_override(override)
        assert parsed.is_sweep_override(), override
        return [getattr(value, "text", value) for value in parsed.value().list]  # quoted ones: their text

    assert swept(argv[2]) == [f"{home}/a", f"{home}/my scans", "/abs/d"]
    assert swept(argv[3]) == [f"{home}/x", "/tmp/données"]
    assert not parser.parse_override(argv[4]).is_sweep_override()  # an escaped comma: one path
    assert argv[5:] == ["data.root='~/q,r'", "tags=[a,b]"]  # quoted values and lists: as written


@pytest.mark.slow
def test_a_multirun_over_tilde_data_roots_runs_one_job_per_root(tmp_path):
    for seed, name in enumerate(("a", "b")):  # HOME is tmp_path in these runs
        tiny_ct(tmp_path / name, seed, 32, 1, 8, lambda p: 20)
    result = run("ratlit.precompute", "-m", "task=ct", "partition=slic", "data.root=~/a,~/b", cwd=tmp_path)
    log = result.stdout + result.stderr
    assert "Launching 2 jobs locally" in log, log[-3000:]
    assert f"#0 : task=ct partition=slic data.root='{tmp_path / 'a'}'" in log
    assert f"#1 : task=ct partition=slic data.root='{tmp_path / 'b'}'" in log
    assert result.stdout.count("computed 4, reused 0") == 2  # 4 patients x 1 slice in each root


def test_relative_data_paths_are_stored_absolute(tmp_path):
    data = OmegaConf.create({"root": "scans", "splits": "~/s.json", "cache_dir": "/abs/cache", "patch_size": 8})
    absolute_data_paths(data, tmp_path)
    assert data.root == str(tmp_path / "scans") and data.cache_dir == "/abs/cache"
    assert data.splits == os.path.expanduser("~/s.json") and data.patch_size == 8
    data = OmegaConf.create({"root": None, "splits": {"train": ["P1"]}})
    absolute_data_paths(data, tmp_path)
    assert data.root is None and data.splits.train == ["P1"]


def test_a_copied_run_config_points_into_the_copy():
    saved = OmegaConf.create({"run_dir": "/runs/a", "logger": {"csv": {"save_dir": "/runs/a"}},
                              "callbacks": {"ckpt": {"dirpath": "/runs/a/checkpoints"}},
                              "data": {"root": "/runs/ab", "list": ["/runs/a/x", 3]}})
    moved = relocate(saved, "/runs/a", "/copies/b")
    assert moved.run_dir == "/copies/b" and moved.logger.csv.save_dir == "/copies/b"
    assert moved.callbacks.ckpt.dirpath == "/copies/b/checkpoints"
    assert moved.data.root == "/runs/ab" and list(moved.data.list) == ["/copies/b/x", 3]  # only paths inside
    state = {"callbacks": {"ModelCheckpoint{...}": {"dirpath": "/runs/a/checkpoints",
                                                    "best_k_models": {"/runs/a/checkpoints/best.ckpt": 1.0}}}}
    RelocateCheckpointState("/runs/a", "/copies/b").on_load_checkpoint(None, None, state)
    ckpt_state = state["callbacks"]["ModelCheckpoint{...}"]
    assert ckpt_state == {"dirpath": "/copies/b/checkpoints", "best_k_models": {"/copies/b/checkpoints/best.ckpt": 1.0}}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resumed_csv_log_appends(tmp_path):
    first = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(3):
        first.log_metrics({"train/loss": 1.0 - step / 10}, step=step)
    first.save()
    second = AppendingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    second.log_metrics({"train/loss": 0.5}, step=3)
    second.save()
    second.log_metrics({"val/psnr": 30.0}, step=4)  # a new column: the file is rewritten, rows kept
    second.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["train/loss"] == "1.0" and rows[4]["val/psnr"] == "30.0" and rows[0]["val/psnr"] == ""


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/psnr", -self.layer(batch[0]).pow(2).mean())

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validated_at.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("max_steps, interval, expected", [(3, 100, [3]), (5, 2, [2, 4, 5]), (4, 2, [2, 4])])
def test_the_last_step_is_validated_once(tmp_path, max_steps, interval, expected):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/psnr", mode="max", save_top_k=1)
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=interval, check_val_every_n_epoch=None,
                        callbacks=[checkpoint, ValidateAtEnd()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    module = _Tiny()
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    assert module.validated_at == expected and trainer.global_step == max_steps
    assert checkpoint.best_model_path and Path(checkpoint.best_model_path).is_file()


# --- evaluate against the run's recorded split -------------------------------------------------------


def _pet_patient(root: Path, patient: str) -> None:
    """One patient as scanners write it: LAS NIfTI volumes of activity."""
    import nibabel as nib

    hq = np.random.default_rng(int(patient[1:])).uniform(1000, 5000, (12, 12, 3)).astype(np.float32)
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    for side, volume in (("lq", hq + 100), ("hq", hq)):
        (root / side).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, las), root / side / f"{patient}.nii.gz")


def _run_cfg(root: Path, tmp_path: Path, splits) -> OmegaConf:
    return OmegaConf.create({"data": {
        "_target_": "ratlit.data.PETDataModule", "root": str(root), "cache_dir": str(tmp_path / "cache"),
        "partitioner": {"_target_": "ratlit.partition.GridPartitioner", "cell_size": 4}, "patch_size": 8,
        "splits": splits, "val_fraction": 0.25, "test_fraction": 0.25,
    }})


def _eval_cfg(**kw):
    return OmegaConf.create({"split": "test", "data": {}, "allow_train_overlap": False, "include_new_groups": False,
                             **kw})


RUN_SPLIT = {"train": ["P1", "P2"], "val": ["P3"], "test": ["P4"]}


def test_evaluate_uses_the_run_split_and_names_new_patients(tmp_path, caplog):
    root = tmp_path / "pet"
    for p in ("P1", "P2", "P3", "P4"):
        _pet_patient(root, p)
    run_cfg = _run_cfg(root, tmp_path, RUN_SPLIT)
    assert saved_splits(run_cfg) == RUN_SPLIT
    dm = split_checked_datamodule(run_cfg.copy(), _eval_cfg(), "run")
    assert {s.group for s in dm.split_samples("test")} == {"P4"}
    _pet_patient(root, "P5")  # a patient added after training
    dm = split_checked_datamodule(run_cfg.copy(), _eval_cfg(), "run")
    assert {s.group for s in dm.split_samples("test")} == {"P4"}
    assert "left out: ['P5']" in caplog.text
    dm = split_checked_datamodule(run_cfg.copy(), _eval_cfg(include_new_groups=True), "run")
    assert {s.group for s in dm.split_samples("test")} == {"P4", "P5"}


def test_evaluate_on_other_data_refuses_training_patients(tmp_path):
    other = tmp_path / "other"
    for p in ("P1", "P2", "P3", "P4"):
        _pet_patient(other, p)
    leaky = tmp_path / "leaky.json"
    leaky.write_text('{"train": ["P4"], "test": ["P1", "P3"]}')
    run_cfg = _run_cfg(tmp_path / "gone", tmp_path, RUN_SPLIT)
    given = {"root": str(other), "splits": str(leaky)}
    with pytest.raises(ValueError, match=r"1 in its train split: \['P1'\]; 1 in its val split: \['P3'\]"):
        split_checked_datamodule(run_cfg.copy(), _eval_cfg(data=given), "run")
    dm = split_checked_datamodule(run_cfg.copy(), _eval_cfg(data=given, allow_train_overlap=True), "run")
    assert {s.group for s in dm.split_samples("test")} == {"P1", "P3"}
    clean = tmp_path / "clean.json"
    clean.write_text('{"train": ["P1", "P2", "P3"], "test": ["P4"]}')
    dm = split_checked_datamodule(run_cfg.copy(), _eval_cfg(data={"root": str(other), "splits": str(clean)}), "run")
    assert {s.group for s in dm.split_samples("test")} == {"P4"}
    with pytest.raises(ValueError, match="train split"):  # val: only training patients count
        check_not_seen(RUN_SPLIT, "val", ["P2"], "run")
    check_not_seen(RUN_SPLIT, "val", ["P3"], "run")


def _old_rule(groups: list, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """The split before the hash rule: a seeded permutation of all the groups (one added group reshuffled it)."""
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(groups))]
    n_test, n_val = (max(1, int(len(groups) * f + 0.5)) for f in (test_fraction, val_fraction))
    chosen = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {name: sorted(groups[i] for i in chosen[name]) for name in ("train", "val", "test")}


def test_runs_made_with_the_old_split_rule_keep_their_split(tmp_path):
    from ratlit.data.splits import groups_by_split
    from ratlit.utils.config import instantiate

    root = tmp_path / "pet"
    patients = ["P1", "P2", "P3", "P4", "P5"]
    for p in patients:
        _pet_patient(root, p)
    old = _old_rule(patients, 0.25, 0.25, seed=0)
    fresh = _run_cfg(root, tmp_path, None)
    assert groups_by_split(instantiate(fresh.data)) != old  # a new run on this data uses the hash rule
    run_cfg = _run_cfg(root, tmp_path, old)  # the old run's config.yaml / checkpoint records its split
    assert groups_by_split(instantiate(run_cfg.data)) == old  # resume: the DataModule built from the saved config
    dm = split_checked_datamodule(run_cfg.copy(), _eval_cfg(), "run")
    assert {s.group for s in dm.split_samples("test")} == set(old["test"])


def test_a_wandb_run_gets_an_id_kept_for_resume():
    from ratlit.training.loggers import wandb_id

    cfg = OmegaConf.create({"logger": {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "id": None}}})
    wandb_id(cfg)
    first = cfg.logger.wandb.id
    assert len(first) == 8 and first.isalnum() and cfg.logger.wandb.resume == "allow"
    wandb_id(cfg)  # a resumed run keeps its id
    assert cfg.logger.wandb.id == first


def test_wandb_gets_the_run_config_as_values_not_built_objects(tmp_path, monkeypatch):
    from ratlit.training.loggers import build_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    node = {"_target_": "lightning.pytorch.loggers.WandbLogger", "offline": True, "save_dir": str(tmp_path)}
    cfg = OmegaConf.create({"logger": {"wandb": node}, "run_dir": str(tmp_path)})
    run_config = {"cfg": {"model": {"_target_": "ratlit.models.RAT", "width": 8}, "seed": 1}}
    wandb_logger, _ = build_loggers(cfg, ["t"], run_config)
    assert wandb_logger._wandb_init["config"] == run_config  # what wandb.init(config=...) receives


def test_run_configs_saved_before_the_package_was_regrouped_still_load(tmp_path):
    """A checkpoint's config names the classes where they were (ratlit.module, ratlit.callbacks, ratlit.runs,
    ratlit.training.checkpointing, ratlit.training.guardrails)."""
    import torch
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from ratlit.training.run_loading import MOVED_TARGETS, load_checkpoint

    old = {"task_name": "ct", "data": {"_target_": "ratlit.data.CTDataModule"},  # what every run config holds
           "model": {"_target_": "ratlit.module.RestorationModule", "net": {"_target_": "ratlit.models.RAT"}},
           "callbacks": {"end": {"_target_": "ratlit.runs.ValidateAtEnd"},
                         "w": {"_target_": "ratlit.callbacks.WandbSummaries"},
                         "ckpt": {"_target_": "ratlit.training.checkpointing.RunCheckpoint"},
                         "cpu": {"_target_": "ratlit.training.guardrails.CpuTimeEstimate"}},
           "logger": {"csv": {"_target_": "ratlit.runs.AppendingCSVLogger"}}}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "ratlit_config": OmegaConf.to_yaml(OmegaConf.create(old))}, path)
    cfg, _ = load_checkpoint(path)
    assert cfg.model._target_ == "ratlit.training.module.RestorationModule"
    assert cfg.callbacks.end._target_ == "ratlit.training.callbacks.ValidateAtEnd"
    assert cfg.logger.csv._target_ == "ratlit.training.loggers.AppendingCSVLogger"
    assert cfg.callbacks.ckpt._target_ == "ratlit.training.checkpoint_saving.RunCheckpoint"
    assert cfg.callbacks.cpu._target_ == "ratlit.training.cpu_estimate.CpuTimeEstimate"
    for new in MOVED_TARGETS.values():
        get_class(new)  # every new name imports
