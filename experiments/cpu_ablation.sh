#!/usr/bin/env bash
# Table 4's design at CPU size on an embedded data set: attention x loss, small RAT, 600 steps each.
#   bash experiments/cpu_ablation.sh [ct|pet|pathology]      (default: pathology)
set -euo pipefail
task="${1:-pathology}"
sweep="cpu_ablation_$task"
python -m ratlit.train -m experiment=cpu_ablation task="$task" attention=msa,wmsa,rmsa loss=l1,fr sweep_name="$sweep"
latest="$(ls -d "${RATLIT_OUTPUTS:-outputs}"/sweeps/$sweep/* | tail -1)"
python -m ratlit.report "$latest" --out "experiments/results/$sweep"
