"""Stopping commands at any moment with real signals: every worker process ends, no temporary folder is left,
the exit status is non-zero and one line says what happened."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.checkpoints import make_checkpoint
from ratlit.data.io import write_image
from ratlit.utils.stopping import Stopped, stop_on_signals, worker_pool

pytestmark = pytest.mark.slow  # real processes


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [c for c in children if c not in found]
            found.update(children)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left to collect


def start(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RATLIT_CACHE": str(cwd / "cache"), "RATLIT_OUTPUTS": str(cwd / "outputs"),
           "HOME": str(cwd), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, limit: float = 240.0) -> None:
    deadline = time.time() + limit
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def stop_and_check(proc: subprocess.Popen, signum: int, group: bool = False) -> str:
    """Send ``signum`` (to the whole process group, as a terminal's Ctrl-C does, when ``group``); check the
    exit status, the one line, and that no process of the command's tree outlives it."""
    tree = descendants(proc.pid)
    (os.killpg if group else os.kill)(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (out[-2000:], err[-3000:])
    deadline = time.time() + 10
    while any(alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in tree if alive(p)], "worker processes outlived the command"
    lines = [line for line in err.splitlines() if f"stopped by {signal.Signals(signum).name}" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return err


def temporary_folders(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".*") if p.is_dir()] if cache.exists() else []


def test_sigterm_while_the_embedded_pet_set_builds_in_its_worker_pool(tmp_path):
    proc = start("ratlit.train", "experiment=smoke", "task=pet", cwd=tmp_path)
    wait_for(lambda: len(descendants(proc.pid)) >= 1 and temporary_folders(tmp_path / "cache"), proc)
    time.sleep(1.0)  # the pool's workers at work
    stop_and_check(proc, signal.SIGTERM)
    assert temporary_folders(tmp_path / "cache") == []
    assert not list((tmp_path / "cache").rglob("COMPLETE"))


def test_ctrl_c_while_precompute_builds_the_embedded_ct_set(tmp_path):
    proc = start("ratlit.precompute", "task=ct", "partition=slic", cwd=tmp_path)
    wait_for(lambda: len(descendants(proc.pid)) >= 1 and temporary_folders(tmp_path / "cache"), proc)
    time.sleep(1.0)
    stop_and_check(proc, signal.SIGINT, group=True)
    assert temporary_folders(tmp_path / "cache") == []


def test_sigterm_during_predict_leaves_no_partial_output(tmp_path):
    (tmp_path / "run").mkdir()
    ckpt = make_checkpoint(tmp_path / "run" / "best.ckpt", "pathology")
    inputs = tmp_path / "in"
    rng = np.random.default_rng(0)
    for index in range(60):
        write_image(inputs / f"tile{index:03d}.png", rng.random((3, 96, 96)).astype(np.float32))
    out = tmp_path / "restored"
    proc = start("ratlit.predict", f"ckpt={ckpt}", f"input={inputs}", f"output={out}", "accelerator=cpu",
                 cwd=tmp_path)
    wait_for(lambda: list(tmp_path.glob(".restored.partial-*/*.png")), proc)
    stop_and_check(proc, signal.SIGTERM)
    assert not out.exists() and not list(tmp_path.glob(".restored.partial-*"))


def test_worker_pool_ends_its_workers_on_a_stop_in_process():
    # In this process: a real SIGTERM to ourselves while the pool works.
    before = descendants(os.getpid())  # children of this test process that are not the pool's (other tests')
    with pytest.raises(Stopped) as stopped, stop_on_signals():
        with worker_pool(2) as pool:
            workers = descendants(os.getpid()) - before
            assert len(workers) >= 2
            result = pool.map_async(time.sleep, [30, 30])
            os.kill(os.getpid(), signal.SIGTERM)
            result.wait(5)
    assert stopped.value.exit_status == 143
    assert not [p for p in workers if alive(p)]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
