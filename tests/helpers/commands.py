"""The commands run as a user runs them: ``python -m <module>`` in a fresh process, in a folder of its own."""

import os
import subprocess
import sys

# A run of a few seconds on the tiny CT set (the ct_root fixture).
SMOKE = ["experiment=smoke", "data.patch_size=32", "trainer.max_steps=6", "trainer.val_check_interval=3",
         "data.val_fraction=0.25", "data.test_fraction=0.25"]


def run(module, *args, cwd, check=True, env_extra=None, timeout=400):
    env = {**os.environ, "RATLIT_CACHE": str(cwd / "cache"), "RATLIT_OUTPUTS": str(cwd / "outputs"),
           "HOME": str(cwd), "WANDB_SILENT": "true", **(env_extra or {})}
    for key in ("WANDB_API_KEY", "WANDB_MODE", "RATLIT_SAM_CHECKPOINT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result
