#!/usr/bin/env bash
# Table 1, RAT row: PET synthesis (1/12-dose -> full-dose slices, 90 / 25 patients), SAM ViT-B regions,
# focal region loss, 200K iterations, batch 8, 192 x 192 patches, Adam 2e-4 -> 1e-6 cosine.
# Splits: give the paper's 90/25 patient split as a file, e.g. {"train": [...90 ids], "val": [], "test": [...25 ids]}.
set -euo pipefail
: "${PET_ROOT:?set PET_ROOT to a folder with lq/ and hq/ volumes}"
: "${RATLIT_SAM_CHECKPOINT:?set RATLIT_SAM_CHECKPOINT to a SAM ViT-B checkpoint}"
python -m ratlit.train ${LAUNCHER:-} experiment=paper_pet data.root="$PET_ROOT" ${PET_SPLITS:+data.splits=$PET_SPLITS} \
  sweep_name=table1_pet "$@"
