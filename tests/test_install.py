"""The package as a user installs it: a plain (non-editable) wheel runs the commands from any folder, with the
configs inside the package and the user's own config folder on Hydra's search path; one entry for all commands."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(cwd: Path) -> dict[str, str]:
    env = {**os.environ, "RATLIT_CACHE": str(cwd / "cache"), "RATLIT_OUTPUTS": str(cwd / "outputs"),
           "HOME": str(cwd)}
    env.pop("PYTHONPATH", None)
    return env


def _run(python: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_plain_install_runs_from_any_folder_with_user_configs(tmp_path):
    # A venv that sees this machine's packages (torch, Lightning, ...) but gets ratlit from a wheel of its own.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    wheels = tmp_path / "wheels"
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                 str(ROOT), cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("ratlit-*.whl")
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", str(wheel),
                     cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(python, "-c", "import ratlit.utils.config as c; print(c.CONF_DIR)", cwd=elsewhere)
    conf = Path(where.stdout.strip())
    assert str(tmp_path / "venv") in str(conf) and (conf / "train.yaml").is_file(), where

    user_conf = tmp_path / "my_conf" / "experiment"
    user_conf.mkdir(parents=True)
    (user_conf / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /task: pet\n"
                                         "sweep_name: from_my_folder\n")
    for search in (["--config-dir", str(tmp_path / "my_conf")],
                   [f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"]):
        shown = _run(python, "-m", "ratlit.train", *search, "experiment=mine", "--cfg", "job", cwd=elsewhere)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert "sweep_name: from_my_folder" in shown.stdout and "task_name: pet" in shown.stdout

    counted = _run(python, "-m", "ratlit", "summary", "model=edsr", cwd=elsewhere)
    assert counted.returncode == 0, counted.stderr[-3000:]
    assert "edsr: ratlit.models.edsr.EDSR" in counted.stdout and "parameters" in counted.stdout


def test_the_dispatcher_lists_and_refuses_unknown_commands():
    from ratlit.__main__ import COMMANDS

    listed = subprocess.run([sys.executable, "-m", "ratlit"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 2 and all(name in listed.stderr for name in COMMANDS)
    unknown = subprocess.run([sys.executable, "-m", "ratlit", "trian"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "usage: python -m ratlit <command>" in unknown.stderr
