#!/usr/bin/env bash
# Zero-initialised last layer or not, at equal steps: smoke-size RAT on the embedded CT set,
# 500 and 2000 steps, seeds 0-2, whole test split. Writes experiments/results/zero_init_ct/.
#   nice -n 10 bash experiments/zero_init.sh [steps ...]     (default: 500 2000)
set -euo pipefail
steps_list=("${@:-500 2000}")
out="${RATLIT_OUTPUTS:-outputs}/zero_init_ct"
# Paired order (both settings per seed), so an interrupted grid still compares like with like.
for steps in ${steps_list[@]}; do
  for seed in 0 1 2; do
    for zero in true false; do
      run="$out/steps${steps}_zero${zero}_seed${seed}"
      [ -f "$run/results.json" ] && continue
      python -m ratlit.train experiment=smoke task=ct seed="$seed" model.net.zero_init_last="$zero" \
        trainer.max_steps="$steps" trainer.val_check_interval=250 trainer.limit_test_batches=null \
        hydra.run.dir="$run"
    done
  done
done
python experiments/zero_init_table.py "$out" > experiments/results/zero_init_ct/table.md  # README.md holds the reading of it
