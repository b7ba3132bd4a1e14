"""A config read from a file builds only trusted callables: ratlit's own classes, the exact torch / lightning names
of the shipped configs, and what the user lists. Anything else is one line (exit 2 in the commands) before anything
is built or written.

The hostile nodes below are live: the control test shows that Hydra, unchecked, writes their marker file (or runs
their command) from every place a node can sit; the checked paths must then leave the marker folder empty.
"""

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf

from helpers.checkpoints import make_checkpoint
from helpers.commands import run
from helpers.configs import GROUPS
from ratlit.training.run_loading import MOVED_TARGETS, build_module, load_checkpoint
from ratlit.utils.config import CONF_DIR
from ratlit.utils.errors import InputError
from ratlit.utils.trusted_targets import (
    EARLIER_TARGETS,
    ENV_VAR,
    PACKAGE_FUNCTIONS,
    SHIPPED_TARGETS,
    check_targets,
    trusted_entries,
)

# --- hostile targets: file writers, module importers, process runners, attribute paths --------------------------


def hostile(target: str, marker: Path) -> dict:
    """A node naming ``target`` whose call would write ``marker`` (or, for pure attribute paths, do nothing)."""
    evil_py = marker.parent.parent / "evil_script.py"  # writes the marker when run or imported
    args = {
        "builtins.open": [str(marker), "w"],
        "pathlib.Path.write_text": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "x"],
        "numpy.save": [str(marker), [1.0]],
        "numpy.lib.format.open_memmap": [str(marker)],
        "torch.save": [[1.0], str(marker)],
        "shutil.copy": [str(evil_py), str(marker)],
        "importlib.import_module": ["evil_script"],
        "builtins.__import__": ["evil_script"],
        "runpy.run_path": [str(evil_py)],
        "os.system": [f"touch {marker}"],
        "subprocess.run": [["touch", str(marker)]],
        "pty.spawn": [["touch", str(marker)]],
        "os.path.join": ["a", "b"],
        "torch.hub.load": ["owner/repo", "model"],
        "ratlit.training.loggers.os.system": [f"touch {marker}"],  # `os` as imported by one of ratlit's modules
        # ratlit's own, but a function that writes where its arguments say
        "ratlit.utils.files.write_text_atomic": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "x"],
    }[target]
    kwargs = {"mode": "w+", "dtype": "float32", "shape": [1]} if target == "numpy.lib.format.open_memmap" else {}
    return {"_target_": target, "_args_": args, **kwargs}


HOSTILE = ["builtins.open", "pathlib.Path.write_text", "numpy.save", "numpy.lib.format.open_memmap", "torch.save",
           "shutil.copy", "importlib.import_module", "builtins.__import__", "runpy.run_path", "os.system",
           "subprocess.run", "pty.spawn", "os.path.join", "torch.hub.load", "ratlit.training.loggers.os.system",
           "ratlit.utils.files.write_text_atomic"]
# Those that write the marker when Hydra calls them (the control below runs them, unchecked). Hydra's own blocklist
# stops the importers and process runners (by its own words no security boundary); these writers pass it.
WRITERS = ["builtins.open", "pathlib.Path.write_text", "numpy.save", "numpy.lib.format.open_memmap", "torch.save",
           "shutil.copy", "ratlit.utils.files.write_text_atomic"]


def _flow(value) -> str:
    """``value`` in OmegaConf's interpolation grammar (for ``${oc.create:...}``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


def place(cfg: dict, where: str, node: dict) -> str:
    """Put ``node`` into the run config ``cfg`` (plain containers) at ``where``; returns the key it will be named by."""
    if where == "model.net":
        cfg["model"]["net"] = node
        return "model.net._target_"
    if where == "model.loss":
        cfg["model"]["loss"] = node
        return "model.loss._target_"
    if where == "nested under data":
        cfg["data"]["partitioner"] = {"inner": {"deeper": node}}
        return "data.partitioner.inner.deeper._target_"
    if where == "in a list":
        cfg["model"]["net"]["blocks"] = [1, node]
        return "model.net.blocks[1]._target_"
    if where == "_partial_":
        cfg["model"]["optimizer"] = {**node, "_partial_": True}
        return "model.optimizer._target_"
    if where == "_args_":
        cfg["model"]["net"] = {"_target_": "ratlit.models.RAT", "_args_": [node]}
        return "model.net._args_[0]._target_"
    if where == "made by an interpolation":
        cfg["model"]["loss"] = "${oc.create:" + _flow(node) + "}"
        return "model.loss._target_"
    if where == "logger (built by name)":
        cfg["logger"] = {"wandb": node}
        return "logger.wandb._target_"
    raise AssertionError(where)


PLACES = ["model.net", "model.loss", "nested under data", "in a list", "_partial_", "_args_",
          "made by an interpolation", "logger (built by name)"]


@pytest.fixture
def pwned(tmp_path, monkeypatch):
    """An empty folder for markers, and a script that writes one when run or imported (as ``evil_script``)."""
    folder = tmp_path / "pwned"
    folder.mkdir()
    (tmp_path / "evil_script.py").write_text(f"open({str(folder / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return folder


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """Per task: the run config (YAML) and weights that a checkpoint of a tiny RAT carries."""
    out = {}
    for task in ("ct", "pathology"):
        ckpt = torch.load(make_checkpoint(tmp_path_factory.mktemp(task) / "t.ckpt", task), weights_only=True)
        out[task] = (ckpt["ratlit_config"], ckpt["state_dict"])
    return out


@pytest.fixture
def run_config(templates):
    """A fresh copy of a real run config (plain containers) for a task."""
    return lambda task="ct": OmegaConf.to_container(OmegaConf.create(templates[task][0]))


@pytest.fixture
def craft_checkpoint(templates):
    """Write a checkpoint with real weights for ``task`` and the config ``cfg`` to ``path``."""
    def write(path: Path, cfg: dict, task: str = "ct") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": templates[task][1], "ratlit_config": OmegaConf.to_yaml(OmegaConf.create(cfg))}, path)
        return path

    return write


@pytest.mark.parametrize("target", WRITERS)
def test_control_unchecked_hydra_runs_each_writer(target, pwned):
    """Without the check these nodes do what they say: the tests below would catch a check that let one through."""
    marker = pwned / "marker"
    try:
        hydra_instantiate(OmegaConf.create(hostile(target, marker)))
    except Exception:  # the call happened; what it returned does not matter
        pass
    assert list(pwned.iterdir()), target


@pytest.mark.parametrize("where", PLACES)
def test_control_every_place_is_built_by_hydra(where, pwned, tmp_path, run_config):
    cfg = run_config()
    place(cfg, where, hostile("builtins.open", pwned / "marker"))
    node = OmegaConf.create(cfg)
    part = {"nested under data": node.data, "logger (built by name)": node.logger}.get(where, node.model)
    try:
        built = hydra_instantiate(part)
        if where == "_partial_":  # built as a partial: the module calls it with its parameters
            built.optimizer_factory()
    except Exception:
        pass
    assert (pwned / "marker").exists(), where


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("target", HOSTILE)
def test_a_checkpoint_naming_an_untrusted_callable_is_refused_before_anything_runs(target, where, pwned, tmp_path,
                                                                                  run_config, craft_checkpoint):
    cfg = run_config()
    key = place(cfg, where, hostile(target, pwned / "marker"))
    ckpt = craft_checkpoint(tmp_path / "crafted.ckpt", cfg)
    with pytest.raises(InputError) as refused:
        load_checkpoint(ckpt)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{ckpt}: ")
    assert f"{key}={target!r}" in message, message
    assert not list(pwned.iterdir())


def test_the_refusal_says_where_the_name_would_have_come_from(tmp_path):
    def refused(target: str) -> str:
        with pytest.raises(InputError) as err:
            check_targets({"model": {"net": {"_target_": target}}}, "x.ckpt")
        return str(err.value)

    assert "it would come from os, of the Python standard library" in refused("os.system")
    assert f"it would come from numpy, installed at {Path(np.__file__)}" in refused("numpy.save")
    assert "it would come from mypkg_absent, which is not installed" in refused("mypkg_absent.Net")
    assert "does not exist: ratlit.models has no 'RATT'" in refused("ratlit.models.RATT")  # a typo
    assert "leads out of ratlit: it is lightning.pytorch.loggers.csv_logs.CSVLogger" in refused(
        "ratlit.training.loggers.CSVLogger")  # imported by ratlit, not ratlit's
    # exact names, not prefixes
    assert "is not trusted" in refused("torch.optim.Adam.step") and "is not trusted" in refused("torch.save")
    assert "x.ckpt: model.net._target_=3 is not the dotted name of a class" in refused(3)


# --- every shipped config passes (the allowlist is complete and exact) -------------------------------------------



def _targets(node) -> set[str]:
    if isinstance(node, dict):
        return {v for k, v in node.items() if k == "_target_"} | {t for v in node.values() for t in _targets(v)}
    if isinstance(node, list):
        return {t for v in node for t in _targets(v)}
    return set()


def test_every_shipped_config_passes_and_the_list_names_exactly_what_they_use(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    choices = [[f"{g}={o}"] for g, options in GROUPS.items() for o in options]
    choices += [["experiment=smoke", f"task={t}", f"model={m}"] for t in GROUPS["task"] for m in ("rat", "swinir")]
    seen: set[str] = set()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for overrides in choices:
            cfg = compose("train", overrides=["run_dir=/tmp/ratlit-compose", *overrides])
            check_targets(cfg, f"train {overrides}", trusted_entries())
            seen |= _targets(OmegaConf.to_container(cfg, resolve=True))
        for command in ("evaluate", "predict", "precompute", "visualize", "summary"):
            check_targets(compose(command), command, ())
    outside = {t for t in seen if not t.startswith("ratlit.")}
    assert outside == SHIPPED_TARGETS  # no name missing, none trusted that no config uses
    assert PACKAGE_FUNCTIONS <= seen
    assert not EARLIER_TARGETS & SHIPPED_TARGETS


def test_the_configs_that_the_commands_compose_pass(tmp_path):
    from ratlit.training.official_checkpoint import compose_run_config

    for task in GROUPS["task"]:
        check_targets(compose_run_config(task, ["partition=sam"], tmp_path), "convert", ())


# --- the user's own modules ---------------------------------------------------------------------------------------

MYNETS = '''
import os

import torch
from torch import nn


class Shift(nn.Module):
    """lq + bias: a user's own network."""

    def __init__(self, in_channels: int = 1, bias: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, lq, regions=None):
        return lq + self.bias


def helper(path):
    return path
'''


@pytest.fixture
def mynets(tmp_path, monkeypatch):
    """A user's package ``mynets`` on the path (and a look-alike ``mynetsevil`` beside it)."""
    folder = tmp_path / "userpkgs"
    (folder / "mynets").mkdir(parents=True)
    (folder / "mynets" / "__init__.py").write_text(textwrap.dedent(MYNETS))
    (folder / "mynetsevil.py").write_text("from mynets import Shift\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return folder


def test_a_users_module_passes_once_listed_and_only_what_it_lists(mynets, monkeypatch):
    cfg = OmegaConf.create({"model": {"net": {"_target_": "mynets.Shift"}}})
    with pytest.raises(InputError, match=r"'mynets.Shift' is not trusted: it would come from mynets, installed at "):
        check_targets(cfg, "run")
    check_targets(cfg, "run", trusted_entries(["mynets"]))  # the package
    check_targets(cfg, "run", trusted_entries(["mynets.Shift"]))  # the class exactly
    check_targets(cfg, "run", trusted_entries("mynets"))  # one name alone
    monkeypatch.setenv(ENV_VAR, "otherpkg:mynets")
    check_targets(cfg, "run", trusted_entries())
    monkeypatch.setenv(ENV_VAR, "otherpkg,mynets.Shift")
    check_targets(cfg, "run", trusted_entries())
    monkeypatch.delenv(ENV_VAR)
    trusted = trusted_entries(["mynets"])
    for name, why in (("mynetsevil.Shift", "it would come from mynetsevil"),  # a prefix of the name is not a module
                      ("mynets.os.system", "leads out of mynets: mynets.os is the module os"),
                      ("mynets.torch.save", "leads out of mynets"),
                      ("mynets.Shifty", "does not exist: mynets has no 'Shifty'")):
        with pytest.raises(InputError, match=why):
            check_targets({"a": {"_target_": name}}, "run", trusted)
    check_targets({"a": {"_target_": "mynets.helper"}}, "run", trusted)  # a listed package's functions too
    for bad in ("", "my pkg", "mynets.", "*"):
        with pytest.raises(InputError, match="is not a module or class name"):
            trusted_entries([bad])


def test_a_file_cannot_vouch_for_itself(tmp_path, pwned, run_config, craft_checkpoint):
    cfg = run_config()
    cfg["model"]["net"] = hostile("os.system", pwned / "marker")
    cfg["trusted_targets"] = ["os"]
    ckpt = craft_checkpoint(tmp_path / "vouching.ckpt", cfg)
    with pytest.raises(InputError, match="its own trusted_targets lists os but a file cannot vouch for itself"):
        load_checkpoint(ckpt)
    assert not list(pwned.iterdir())


def test_a_users_checkpoint_loads_with_the_users_trust(tmp_path, mynets, monkeypatch, run_config):
    cfg = run_config()
    cfg["model"]["net"] = {"_target_": "mynets.Shift", "in_channels": 1, "bias": 0.5}
    cfg["trusted_targets"] = ["mynets"]  # recorded by the run; not what makes it load
    module = hydra_instantiate(OmegaConf.create(cfg).model)
    path = tmp_path / "mine.ckpt"
    torch.save({"state_dict": module.state_dict(), "ratlit_config": OmegaConf.to_yaml(OmegaConf.create(cfg))}, path)
    with pytest.raises(InputError, match="a file cannot vouch for itself"):
        load_checkpoint(path)
    loaded, state = load_checkpoint(path, trusted_entries(["mynets"]))
    assert build_module(loaded, state).net.bias.item() == 0.5
    monkeypatch.setenv(ENV_VAR, "mynets")
    load_checkpoint(path)


# --- old checkpoints: upgrade first, then the check ---------------------------------------------------------------


def old_config(cfg: dict) -> dict:
    """``cfg`` as an earlier ratlit saved it: moved class names, torch's cosine, Lightning's own callbacks."""
    assert MOVED_TARGETS["ratlit.module.RestorationModule"] == "ratlit.training.module.RestorationModule"
    cfg["model"]["_target_"] = "ratlit.module.RestorationModule"
    cfg["model"]["scheduler"] = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True,
                                 "T_max": 10}
    cfg["callbacks"]["model_checkpoint"]["_target_"] = "lightning.pytorch.callbacks.ModelCheckpoint"
    cfg["callbacks"]["cpu_estimate"]["_target_"] = "ratlit.training.guardrails.CpuTimeEstimate"
    cfg["callbacks"]["progress_bar"] = {"_target_": "lightning.pytorch.callbacks.RichProgressBar"}
    cfg["logger"] = {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": "."}}
    return cfg


def test_an_old_checkpoint_still_loads_and_builds(tmp_path, run_config, craft_checkpoint):
    cfg = old_config(run_config())
    with pytest.raises(InputError, match="ratlit.module.RestorationModule"):  # as saved: no longer a ratlit name
        check_targets(cfg, "as saved")
    ckpt = craft_checkpoint(tmp_path / "old.ckpt", cfg)
    loaded, state = load_checkpoint(ckpt)
    assert loaded.model._target_ == "ratlit.training.module.RestorationModule"
    assert build_module(loaded, state).training is False


# --- through the commands, as a user runs them --------------------------------------------------------------------


def _one_line_refusal(result, *parts: str) -> str:
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if all(p in line for p in parts)]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in output, output[-3000:]
    return lines[0]


@pytest.mark.slow
def test_evaluate_and_predict_refuse_a_crafted_checkpoint_and_write_nothing(tmp_path, pwned, run_config,
                                                                            craft_checkpoint):
    cfg = run_config("pathology")
    place(cfg, "model.net", hostile("builtins.open", pwned / "net"))
    place(cfg, "nested under data", hostile("numpy.save", pwned / "data"))
    run_dir = tmp_path / "run"
    ckpt = craft_checkpoint(run_dir / "checkpoints" / "best-step0000001.ckpt", cfg, "pathology")
    result = run("ratlit.evaluate", f"ckpt={ckpt}", cwd=tmp_path, check=False)
    _one_line_refusal(result, str(ckpt), "model.net._target_='builtins.open'", "(and 1 more)")
    assert not (run_dir / "eval").exists()
    from ratlit.data.io import write_image

    write_image(tmp_path / "tile.png", np.full((3, 32, 32), 0.5, np.float32))
    result = run("ratlit.predict", "ckpt=run", "input=tile.png", "output=restored", cwd=tmp_path, check=False)
    _one_line_refusal(result, str(ckpt), "model.net._target_='builtins.open'", "Python standard library")
    assert not (tmp_path / "restored").exists() and not list(pwned.iterdir())


@pytest.mark.slow
def test_resume_refuses_a_crafted_run_folder_and_writes_nothing(tmp_path, pwned, run_config, craft_checkpoint):
    run_dir = tmp_path / "stranger_run"
    good = run_config()
    good["run_dir"] = str(run_dir)
    last = craft_checkpoint(run_dir / "checkpoints" / "last.ckpt", good)
    bad = run_config()
    bad["run_dir"], bad["trusted_targets"] = str(run_dir), ["subprocess"]
    place(bad, "_partial_", hostile("subprocess.run", pwned / "optimizer"))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(bad)))
    before = sorted(p.name for p in run_dir.iterdir())
    result = run("ratlit.train", f"resume={run_dir}", cwd=tmp_path, check=False)
    _one_line_refusal(result, f"{run_dir / 'config.yaml'}: model.optimizer._target_='subprocess.run'",
                      "a file cannot vouch for itself")
    # the checkpoint's config is checked too
    craft_checkpoint(last, bad)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(good)))
    result = run("ratlit.train", f"resume={run_dir}", cwd=tmp_path, check=False)
    _one_line_refusal(result, f"{last}: model.optimizer._target_='subprocess.run'")
    assert not list(pwned.iterdir())
    assert sorted(p.name for p in run_dir.iterdir() if p.name not in (".hydra", "train.log")) == before


@pytest.mark.slow
def test_a_typo_in_a_runs_own_target_stops_training_at_once(tmp_path):
    result = run("ratlit.train", "experiment=smoke", "model.net._target_=ratlit.models.RATT", cwd=tmp_path, check=False)
    _one_line_refusal(result, "the run config: model.net._target_='ratlit.models.RATT' does not exist: "
                              "ratlit.models has no 'RATT'")
    result = run("ratlit.train", "experiment=smoke", "model.net._target_=mynets.Shift", cwd=tmp_path, check=False)
    _one_line_refusal(result, "model.net._target_='mynets.Shift' is not trusted: it would come from mynets, "
                              "which is not installed")
    assert not list((tmp_path / "outputs" / "runs" / "ct").glob("*/config.yaml"))


@pytest.mark.slow
def test_predict_with_a_users_network_runs_once_the_user_trusts_it(tmp_path, mynets, run_config):
    cfg = run_config("pathology")
    cfg["model"]["net"] = {"_target_": "mynets.Shift", "in_channels": 3, "bias": 0.25}
    module = hydra_instantiate(OmegaConf.create(cfg).model)
    ckpt = tmp_path / "mine.ckpt"
    torch.save({"state_dict": module.state_dict(), "ratlit_config": OmegaConf.to_yaml(OmegaConf.create(cfg))}, ckpt)
    from ratlit.data.io import read_image, write_image

    write_image(tmp_path / "tile.png", np.full((3, 32, 32), 0.5, np.float32))
    env = {"PYTHONPATH": os.pathsep.join([str(mynets), os.environ.get("PYTHONPATH", "")])}
    args = ["ckpt=mine.ckpt", "input=tile.png"]
    refused = run("ratlit.predict", *args, "output=out0", cwd=tmp_path, check=False, env_extra=env)
    _one_line_refusal(refused, "model.net._target_='mynets.Shift' is not trusted", f"{ENV_VAR}=mynets.Shift")
    run("ratlit.predict", *args, "output=out1", cwd=tmp_path, env_extra={**env, ENV_VAR: "mynets"})
    run("ratlit.predict", *args, "output=out2", "trusted_targets=[mynets.Shift]", cwd=tmp_path, env_extra=env)
    for out in ("out1", "out2"):
        np.testing.assert_allclose(read_image(tmp_path / out / "tile.png"), 0.75, atol=1 / 255)
    assert not (tmp_path / "out0").exists()
