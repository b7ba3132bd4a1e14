"""A user's mistakes are one line and exit 2, checked before the work starts, on real read-only mounts and a real
small filesystem; a bug in our own code keeps its traceback."""

import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from helpers.checkpoints import make_checkpoint
from helpers.commands import run
from helpers.scans import pet_volume, tiny_ct
from ratlit.data import CTDataModule
from ratlit.data.ct import write_ct_series
from ratlit.data.io import write_image
from ratlit.inference.restore import restore_paths
from ratlit.utils.errors import InputError


def mount_tmpfs(folder, options):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return folder


@pytest.fixture
def read_only(tmp_path):
    folder = mount_tmpfs(tmp_path / "read-only", "ro,size=1m")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a failed test may hold a file there


@pytest.fixture
def small_disk(tmp_path):
    folder = mount_tmpfs(tmp_path / "small", "size=256k")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a failed test may hold a file there


def one_line(result, message):
    output = result.stdout + result.stderr
    assert result.returncode == 2 and message in output and "Traceback" not in output, output[-3000:]
    assert sum(message in line for line in output.splitlines()) == 1


@pytest.mark.slow
def test_config_mistakes_are_one_line_and_an_unknown_option_lists_the_valid_ones(tmp_path):
    one_line(run("ratlit.train", "attention=rmas", cwd=tmp_path, check=False),
             "attention=rmas: no such option; attention is one of msa, none, rmsa, wmsa")
    one_line(run("ratlit.train", "trainer.max_stepz=3", cwd=tmp_path, check=False), "Could not override")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_read_only_outputs_and_cache_are_one_line(tmp_path, read_only):
    one_line(run("ratlit.train", "experiment=smoke", cwd=tmp_path, check=False,
                 env_extra={"RATLIT_OUTPUTS": str(read_only)}),
             f"cannot write the output folder {read_only}/runs")
    result = run("ratlit.train", "experiment=smoke", cwd=tmp_path, check=False,
                 env_extra={"RATLIT_CACHE": str(read_only / "cache")})
    one_line(result, f"cannot write the cache folder for the embedded ct set (RATLIT_CACHE / paths.cache_dir) "
                     f"{read_only / 'cache' / 'embedded'}: Read-only file system")


@pytest.mark.slow
def test_evaluate_refuses_an_unwritable_eval_folder_before_the_test_pass(tmp_path, read_only):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", "ct")
    result = run("ratlit.evaluate", f"ckpt={ckpt}", f"out={read_only / 'eval'}", cwd=tmp_path, check=False)
    one_line(result, f"cannot write the eval folder (out=) {read_only / 'eval'}: Read-only file system")
    assert not (tmp_path / "cache").exists()  # no data set was built, nothing tested


def test_predict_refuses_a_read_only_output_before_loading_anything(tmp_path, read_only):
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology")
    write_image(tmp_path / "tile.png", np.full((3, 32, 32), 0.5, np.float32))
    with pytest.raises(InputError, match="cannot write the output folder .*: Read-only file system"):
        restore_paths(ckpt, tmp_path / "tile.png", read_only / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_predict_checks_free_space_where_the_outputs_size_is_known(tmp_path, small_disk):
    ckpt = make_checkpoint(tmp_path / "pet.ckpt", "pet")
    nib.save(nib.Nifti1Image(pet_volume((64, 64, 20)), np.eye(4)), tmp_path / "scan.nii")  # 320 KB of float32
    with pytest.raises(InputError, match=r"need at least 0\.3 MB and 0\.3 MB are free"):
        restore_paths(ckpt, tmp_path / "scan.nii", small_disk / "out", cache_dir=tmp_path / "cache")
    assert list(small_disk.iterdir()) == []


def test_predict_on_a_disk_that_fills_says_nothing_was_kept(tmp_path, small_disk):
    ckpt = make_checkpoint(tmp_path / "path.ckpt", "pathology")
    rng = np.random.default_rng(0)
    for index in range(8):  # noise does not compress: 8 x 48 KB of PNG, more than the disk holds
        write_image(tmp_path / "in" / f"tile{index}.png", rng.random((3, 128, 128)).astype(np.float32))
    (small_disk / "out").mkdir()
    (small_disk / "out" / "earlier.txt").write_text("kept")
    with pytest.raises(InputError) as refused:
        restore_paths(ckpt, tmp_path / "in", small_disk / "out", cache_dir=tmp_path / "cache")
    message = str(refused.value)
    assert "the disk filled while restoring into" in message and "restored so far was kept" in message
    assert f"the files already in {small_disk / 'out'} are unchanged" in message and "\n" not in message
    assert sorted(p.name for p in small_disk.rglob("*")) == ["earlier.txt", "out"]


def test_training_data_whose_series_mixes_slice_sizes_is_refused(tmp_path):
    root = tiny_ct(tmp_path / "ct", 0, 32, 2, 8, lambda p: 20)
    write_ct_series(root / "P1" / "full_1mm", [np.zeros((32, 32)), np.zeros((40, 40))], "P1", "FD", 0.7, [0.0, 1.0],
                    "1.2.3.4")
    with pytest.raises(ValueError, match=r"mixes slice shapes \[\(32, 32\), \(40, 40\)\]"):
        CTDataModule(root=str(root), cache_dir=str(tmp_path / "cache")).samples()
@pytest.mark.slow
def test_a_bug_in_our_code_keeps_its_traceback(tmp_path):
    # A TypeError inside a command's own code is not a user's mistake: no one-line exit 2.
    script = textwrap.dedent("""
        from ratlit.cli.command import exit_on_user_error, hydra_command

        @exit_on_user_error
        def summary(cfg):
            return len(cfg.model) + None   # a bug

        hydra_command("summary", summary)()
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "TypeError: unsupported operand type(s) for +" in result.stderr
