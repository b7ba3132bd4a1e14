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


def _venv_seeing_our_packages(where: Path) -> str:
    """A bare venv whose interpreter also sees the site-packages of the one running the tests (torch, Lightning,
    ...: a .pth file names them, after the venv's own) but not this checkout's sources. ``system_site_packages``
    would show the base interpreter's instead, which need not hold them. No pip or setuptools of its own."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = str(where / "bin" / "python")
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    seen = [p for p in sys.path if {"site-packages", "dist-packages"} & set(Path(p).parts) and Path(p).is_dir()]
    (Path(own) / "running_interpreter.pth").write_text("".join(f"{p}\n" for p in seen))
    return python


def _configs_in(python: str, cwd: Path) -> Path:
    where = _run(python, "-c", "import ratlit.utils.config as c; print(c.CONF_DIR)", cwd=cwd)
    assert where.returncode == 0, where.stderr[-3000:]
    return Path(where.stdout.strip())


def _check_user_configs(python: str, tmp_path: Path, cwd: Path) -> None:
    user_conf = tmp_path / "my_conf" / "experiment"
    user_conf.mkdir(parents=True, exist_ok=True)
    (user_conf / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /task: pet\n"
                                         "sweep_name: from_my_folder\n")
    for search in (["--config-dir", str(tmp_path / "my_conf")],
                   [f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"]):
        shown = _run(python, "-m", "ratlit.train", *search, "experiment=mine", "--cfg", "job", cwd=cwd)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert "sweep_name: from_my_folder" in shown.stdout and "task_name: pet" in shown.stdout


@pytest.mark.slow
def test_a_plain_install_runs_from_any_folder_with_user_configs(tmp_path):
    # A venv that sees this machine's packages (torch, Lightning, ...) but gets ratlit from a wheel of its own.
    python = _venv_seeing_our_packages(tmp_path / "venv")
    wheels = tmp_path / "wheels"
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                 str(ROOT), cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("ratlit-*.whl")
    # --force-reinstall: the running venv's (editable) ratlit is visible to the new venv's pip too.
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--force-reinstall",
                     "-q", str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    conf = _configs_in(python, elsewhere)
    assert conf.is_relative_to(tmp_path / "venv") and (conf / "train.yaml").is_file(), conf
    assert (conf / "model_size" / "rat_tiny.yaml").is_file() and (conf / "hydra" / "launcher" / "slurm.yaml").is_file()
    _check_user_configs(python, tmp_path, elsewhere)

    counted = _run(python, "-m", "ratlit", "summary", "model=edsr", cwd=elsewhere)
    assert counted.returncode == 0, counted.stderr[-3000:]
    assert "edsr: ratlit.models.edsr.EDSR" in counted.stdout and "parameters" in counted.stdout


@pytest.mark.slow
def test_an_editable_install_reads_the_checkouts_configs_from_any_folder(tmp_path):
    import ratlit

    if not Path(ratlit.__file__).is_relative_to(ROOT / "src"):
        pytest.skip("ratlit is not installed editable from this checkout")
    assert _configs_in(sys.executable, tmp_path) == ROOT / "conf"
    _check_user_configs(sys.executable, tmp_path, tmp_path)


def test_the_dispatcher_lists_and_refuses_unknown_commands():
    from ratlit.__main__ import COMMANDS

    listed = subprocess.run([sys.executable, "-m", "ratlit"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 2 and all(name in listed.stderr for name in COMMANDS)
    unknown = subprocess.run([sys.executable, "-m", "ratlit", "trian"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "usage: python -m ratlit <command>" in unknown.stderr
