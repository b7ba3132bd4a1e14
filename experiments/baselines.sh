#!/usr/bin/env bash
# Tables 1-3 as one sweep per task: RAT and that task's baselines under the same data, budget, loss,
# metrics and logging, then `report` turns the sweep into the table layout (one row per method).
#   bash experiments/baselines.sh ct|pet|pathology [extra overrides, e.g. data.root=... trainer.max_steps=...]
# Paper settings come from experiment=paper_<task> (200K steps, batch 8, SAM ViT-B regions for RAT).
# The loss is shared (L1 by default) so that the comparison is about the networks; add loss=edcnn for
# EDCNN's own compound loss in a separate run.
set -euo pipefail
task="${1:?usage: experiments/baselines.sh ct|pet|pathology [overrides...]}"
shift
case "$task" in
  ct) models=rat,cnn,redcnn,edcnn,nafnet ;;
  pet) models=rat,dcnn,unet,nafnet ;;
  pathology) models=rat,srcnn,edsr,rcan,swinir,nafnet ;;
  *) echo "unknown task $task" >&2; exit 2 ;;
esac
sweep="baselines_$task"
python -m ratlit.train -m ${LAUNCHER:-} experiment=paper_$task model=$models loss=${LOSS:-l1} sweep_name="$sweep" "$@"
python -m ratlit.report "$(ls -d "${RATLIT_OUTPUTS:-outputs}"/sweeps/$sweep/* | tail -1)"
