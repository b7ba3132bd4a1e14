#!/usr/bin/env bash
# Table 4: attention (MSA / W-MSA / R-MSA) x loss (L1 / L_FR) on the three tasks, paper settings.
# 6 runs per task (the table's 4 cells are a subset: R-MSA x {L1, L_FR}, {MSA, W-MSA, R-MSA} x L_FR).
# One job per GPU: locally one after another, or a SLURM array with LAUNCHER=hydra/launcher=slurm.
set -euo pipefail
declare -A ROOTS=([ct]="${AAPM_ROOT:-}" [pet]="${PET_ROOT:-}" [pathology]="${TMA_ROOT:-}")
for task in ${TASKS:-ct pet pathology}; do
  root="${ROOTS[$task]}"
  [[ -n "$root" ]] || { echo "skip $task: set its data root (AAPM_ROOT / PET_ROOT / TMA_ROOT)" >&2; continue; }
  python -m ratlit.train -m ${LAUNCHER:-} experiment=paper_$task data.root="$root" \
    attention=msa,wmsa,rmsa loss=l1,fr sweep_name=table4_$task "$@"
  python -m ratlit.report "$(ls -d "${RATLIT_OUTPUTS:-outputs}"/sweeps/table4_$task/* | tail -1)"
done
