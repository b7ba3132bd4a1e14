import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocess runs of the command lines


def _run(module, *overrides, tmp_path, check=True):
    env = {**os.environ, "RATLIT_CACHE": str(tmp_path / "cache"), "RATLIT_OUTPUTS": str(tmp_path / "outputs")}
    env.pop("RATLIT_SAM_CHECKPOINT", None)
    result = subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_precompute_fills_then_reuses_the_cache(tmp_path):
    first = _run("ratlit.precompute", "task=pathology", "partition=grid", tmp_path=tmp_path)
    assert "computed 3, reused 0, repaired 0" in first.stdout
    second = _run("ratlit.precompute", "task=pathology", "partition=grid", tmp_path=tmp_path)
    assert "computed 0, reused 3, repaired 0; nothing to compute" in second.stdout
    entries = list((tmp_path / "cache" / "partitions" / "pathology").glob("grid-*/*.npz"))
    entries[0].write_bytes(b"broken")
    third = _run("ratlit.precompute", "task=pathology", "partition=grid", tmp_path=tmp_path)
    assert "computed 0, reused 2, repaired 1" in third.stdout


def test_precompute_without_sam_checkpoint_is_a_clear_error(tmp_path):
    result = _run("ratlit.precompute", "task=pathology", "partition=sam", tmp_path=tmp_path, check=False)
    assert result.returncode == 2
    assert "No SAM checkpoint given" in result.stderr + result.stdout
    assert "partition=slic" in result.stderr + result.stdout


def test_default_partition_falls_back_to_slic_and_says_so(tmp_path):
    result = _run("ratlit.precompute", "task=pathology", tmp_path=tmp_path)
    assert "USING SLIC INSTEAD" in result.stderr
    assert "'name': 'slic'" in result.stdout and "'requested': 'sam'" in result.stdout


@pytest.mark.parametrize("extra", [[], ["image=ihc.png"]])
def test_visualize_writes_a_png(tmp_path, extra):
    if extra:
        from skimage import data, io

        io.imsave(tmp_path / "ihc.png", data.immunohistochemistry()[:128, :128])
    _run("ratlit.visualize", "task=pathology", "partition=slic", "split=val", "out=regions.png", *extra,
         tmp_path=tmp_path)
    png = (tmp_path / "regions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_visualize_unreadable_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = _run("ratlit.visualize", "task=pathology", "partition=grid", "image=bad.png", tmp_path=tmp_path,
                  check=False)
    assert result.returncode == 2 and "cannot read image file" in result.stderr + result.stdout
